"""GRU4Rec state encoder as used by SQN/SAC, SNQN/SA2C and PRL (specs/rl.md §2).

Paper: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016, as instantiated in Xin et al., SIGIR 2020 (SQN, §4 "base models") and the
authors' TF1 code (``GRU*.py``: ``tf.nn.dynamic_rnn(GRUCell(64), ..., sequence_length=len)``).

Reference quirks reproduced:
- The cell is TF1's ``GRUCell``, not the cuDNN/PyTorch one: the reset gate multiplies the
  previous state *before* the candidate's recurrent matmul, the two gates share one kernel
  over ``[x; h]`` with bias initialised to **1.0**, the candidate has its own kernel with
  zero bias, kernels are Glorot-uniform. Parameters: ``3 (D H + H^2 + H)``.
- The recurrence runs only for the first ``len`` steps (right padding), so with an empty
  history (``len = 1``) the state is one GRU step on the **pad row** — the pad row is
  visible to GRU4Rec (rl.md §2, §11 "Sessions").
- No dropout (``cfg.dropout`` > 0 adds dropout on the input embeddings, an extension).

With left padding the recurrence skips the leading pad positions (the hidden state stays
at zero until the first real item), so the state equals the right-padded one.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxrec.encoders.common import ItemEncoderBase, check_items, resolve_lengths


class GRU4Rec(ItemEncoderBase):
    """One-layer GRU over the item history; the state is the hidden state at ``len``.

    ``GRU4Rec(num_items, cfg)``; ``state_dim = cfg.gru_hidden``.
    """

    default_dropout = 0.0
    name_for_errors = "gru4rec"

    def setup(self):
        super().setup()
        D, H = self.cfg.embed_dim, self.cfg.gru_hidden
        glorot = nn.initializers.glorot_uniform()
        # Reset and update gates in one kernel over [x; h] (TF GRUCell "gates/kernel").
        self.gate_kernel = self.param("gate_kernel", glorot, (D + H, 2 * H))
        # TF initialises the gate bias to 1 so that the update gate starts mostly "keep".
        self.gate_bias = self.param("gate_bias", nn.initializers.ones, (2 * H,))
        self.candidate_kernel = self.param("candidate_kernel", glorot, (D + H, H))
        self.candidate_bias = self.param("candidate_bias", nn.initializers.zeros, (H,))
        if self.dropout_rate > 0:
            self.input_dropout = nn.Dropout(self.dropout_rate)

    @property
    def state_dim(self) -> int:
        """Dimension of the state vector (the GRU hidden size)."""
        return self.cfg.gru_hidden

    def _active(self, lengths: jax.Array, L: int) -> jax.Array:
        """``[B, L]`` bool: the steps the recurrence takes (first ``len`` on the right,
        last ``len`` on the left)."""
        t = jnp.arange(L)[None, :]
        if self.cfg.padding == "right":
            return t < lengths[:, None]
        return t >= (L - lengths)[:, None]

    def _run(self, items, lengths, train):
        check_items(items, lengths, self.num_items, self.cfg, self.name_for_errors)
        B, L = items.shape
        H = self.cfg.gru_hidden
        D = self.cfg.embed_dim
        lengths = resolve_lengths(items, lengths, self.pad_id, self.cfg.padding)
        x = self.embed(items)                                    # [B, L, D]
        if self.dropout_rate > 0:
            x = self.input_dropout(x, deterministic=not train)
        # The input halves of both matmuls do not depend on h: do them for all steps at
        # once, leaving only the [B, H] x [H, .] products inside the scan.
        x_gates = x @ self.gate_kernel[:D] + self.gate_bias      # [B, L, 2H]
        x_cand = x @ self.candidate_kernel[:D] + self.candidate_bias  # [B, L, H]
        h_gate = self.gate_kernel[D:]                            # [H, 2H]
        h_cand = self.candidate_kernel[D:]                       # [H, H]
        active = self._active(lengths, L)                        # [B, L]

        def step(h, inputs):
            xg, xc, on = inputs                                  # [B,2H], [B,H], [B]
            gates = jax.nn.sigmoid(xg + h @ h_gate)
            r, u = gates[:, :H], gates[:, H:]
            c = jnp.tanh(xc + (r * h) @ h_cand)
            h_new = u * h + (1.0 - u) * c
            on = on[:, None]
            # Steps past len leave h unchanged and output zeros, as dynamic_rnn does.
            return jnp.where(on, h_new, h), jnp.where(on, h_new, 0.0)

        h0 = jnp.zeros((B, H), x.dtype)
        xs = (jnp.swapaxes(x_gates, 0, 1), jnp.swapaxes(x_cand, 0, 1),
              jnp.swapaxes(active, 0, 1))
        h_last, outs = jax.lax.scan(step, h0, xs)
        return jnp.swapaxes(outs, 0, 1), h_last

    def sequence(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """Hidden state after every step.

        Args:
          items: ``[B, L]`` int ids (pad included).
          lengths: ``[B]`` int, or None to derive it from the pad mask.
          train: enables dropout (only if ``cfg.dropout`` > 0).
        Returns:
          ``[B, L, H]``; zeros at steps the recurrence does not take.
        """
        return self._run(items, lengths, train)[0]

    def __call__(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """State ``[B, H]``: the hidden state after ``len`` steps (``h_len``).

        Args:
          items: ``[B, L]`` int ids; lengths: ``[B]`` int or None; train: dropout switch.
        """
        return self._run(items, lengths, train)[1]
