"""YouTube-DNN user encoder: pooled item embeddings through an MLP.

Paper: Covington, Adams & Sargin, "Deep Neural Networks for YouTube Recommendations",
RecSys 2016 (§3: the watch history is embedded, averaged and fed to ReLU layers). As
instantiated by PCRec (Sun et al., SIGIR 2022; specs/intent_pcrec.md §2.5), whose
``YoutubeDNN/YoutubeDNN.py`` applies the MLP to every item vector and then averages:

- x = dropout(E[items]) (item table N(0, 0.01) here as for the other encoders; the
  reference keeps PyTorch's N(0, 1) Embedding default with a zero pad row) [code];
- h = ``mlp_layers`` x (Dense(D) -> ReLU) on each position, named ``fc_<i>`` (the
  reference's ``fcs`` — PCRec's layer-wise transplanting matches ``fc``);
- state = mean of h over the sequence. The reference averages over all L positions,
  pads included (``mean_over_pads=True``); the default averages the real items only,
  so a user's state does not depend on how much padding the window has.

The state (``[B, D]``) goes to a full-softmax output layer (the method's head), trained
with cross-entropy on the window's next item.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxrec.encoders.common import ItemEncoderBase, check_items, valid_mask


class YouTubeDNN(ItemEncoderBase):
    """``YouTubeDNN(num_items, cfg)``: items ``[B, L]`` -> state ``[B, D]``.

    Uses ``cfg.embed_dim``, ``cfg.mlp_layers``, ``cfg.mean_over_pads``, ``cfg.dropout``
    (on the item vectors; default 0) and ``cfg.padding``. Not causal over positions
    (the mean mixes the window), so it has no ``sequence()``.
    """

    default_dropout = 0.0
    name_for_errors = "youtube_dnn"

    def setup(self):
        super().setup()
        self.mlp = [nn.Dense(self.cfg.embed_dim, name=f"fc_{i}")
                    for i in range(self.cfg.mlp_layers)]
        if self.dropout_rate > 0:
            self.input_dropout = nn.Dropout(self.dropout_rate)

    @property
    def state_dim(self) -> int:
        """Dimension of the state vector (embed_dim)."""
        return self.cfg.embed_dim

    def __call__(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """State ``[B, D]`` of ``items [B, L]`` (``lengths`` unused: the pad mask decides)."""
        check_items(items, lengths, self.num_items, self.cfg, self.name_for_errors)
        valid = valid_mask(items, self.pad_id)
        x = self.embed(items)
        if self.cfg.mean_over_pads:
            # The reference's pad row is zero (padding_idx), so a pad feeds 0 to the MLP.
            x = x * valid[..., None].astype(x.dtype)
        if self.dropout_rate > 0:
            x = self.input_dropout(x, deterministic=not train)
        h = x
        for layer in self.mlp:
            h = jax.nn.relu(layer(h))
        if self.cfg.mean_over_pads:
            return h.mean(axis=1)
        w = valid[..., None].astype(h.dtype)
        return (h * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
