"""BPR matrix factorisation: user and item embeddings scored by a dot product.

Paper: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI
2009 (§4 the BPR-Opt criterion, §5 matrix factorisation). As instantiated by PCRec (Sun et
al., SIGIR 2022; specs/intent_pcrec.md §2.5, ``BPR/BPR.py``): user table ``W`` and item
table ``H`` of width D, both N(0, 0.01); ``x_ui = <W_u, H_i>``; loss
``-Σ log σ(x_ui − x_uj)`` over a batch of (u, i, j) with one sampled negative j, plus an
optional L2 term ``λ·(‖W_u‖² + ‖H_i‖² + ‖H_j‖²)`` on the gathered rows. The reference's
optional per-side MLP (``layer_num``, 0 by default) is not built.

Not a sequential encoder (it reads user ids, not item windows), so it is not in
:data:`jaxrec.encoders.ENCODERS`; :mod:`jaxrec.methods.pcrec` uses it directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn


class BPRMF(nn.Module):
    """Attributes: num_users U, num_items N, embed_dim D.

    Parameters: ``user_embed/embedding [U, D]`` and ``item_embed/embedding [N, D]``
    (dense item ids, no pad row).
    """

    num_users: int
    num_items: int
    embed_dim: int = 64

    def setup(self):
        init = nn.initializers.normal(stddev=0.01)
        self.user_embed = nn.Embed(self.num_users, self.embed_dim, embedding_init=init)
        self.item_embed = nn.Embed(self.num_items, self.embed_dim, embedding_init=init)

    def __call__(self, users: jax.Array, pos: jax.Array, neg: jax.Array, l2: float = 0.0):
        """Summed BPR loss of a batch (the reference sums, it does not average).

        Args:
          users, pos, neg: ``[B]`` int user ids, positive and negative dense item ids.
          l2: weight of the squared norms of the gathered rows.
        Returns:
          (loss scalar, x_uij ``[B]``).
        """
        u = self.user_embed(users)
        i = self.item_embed(pos)
        j = self.item_embed(neg)
        x = (u * i).sum(-1) - (u * j).sum(-1)
        loss = -jax.nn.log_sigmoid(x).sum()
        if l2:
            loss = loss + l2 * ((u ** 2).sum() + (i ** 2).sum() + (j ** 2).sum())
        return loss, x

    def scores(self, users: jax.Array) -> jax.Array:
        """``users [B]`` -> ``[B, N]`` scores over all items."""
        return self.user_embed(users) @ self.item_embed.embedding.T


def sample_negatives(rng: jax.Array, history: jax.Array, num_items: int,
                     tries: int = 8) -> jax.Array:
    """One uniform negative per row, avoiding the user's training items.

    The reference redraws until the item is not in the user's training sequence; here
    ``tries`` candidates are drawn at once and the first unseen one is kept (the last
    candidate if all were seen — probability ``(|seen|/N)^tries``).

    Args:
      rng: PRNG key.
      history: ``[B, H]`` the rows' training items as shifted ids (item + 1, 0 = pad).
      num_items: N.
      tries: candidates per row.
    Returns:
      ``[B]`` int32 dense item ids.
    """
    cand = jax.random.randint(rng, (history.shape[0], tries), 0, num_items)
    seen = (cand[:, :, None] + 1 == history[:, None, :]).any(-1)          # [B, tries]
    first = jnp.argmin(seen, axis=1)                   # first unseen (0 if all seen)
    first = jnp.where(seen.all(1), tries - 1, first)
    return jnp.take_along_axis(cand, first[:, None], axis=1)[:, 0].astype(jnp.int32)
