"""Caser state encoder as used by SQN/SAC, SNQN/SA2C and PRL (specs/rl.md §2).

Paper: Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional
Sequence Embedding", WSDM 2018 (§3.2 horizontal and vertical convolutions), as
instantiated in Xin et al., SIGIR 2020 (SQN) and the authors' TF1 code (``Caser*.py``).

Reference arrangement:
- Pad positions are multiplied to zero (``mask = ids != pad``) before any convolution.
- Horizontal convolutions: for each height h in {2, 3, 4}, 16 filters of size h x D
  spanning the whole embedding width, ReLU, then max-pool over the L-h+1 positions
  -> 16 values per height (48).
- One vertical convolution: an L x 1 filter (weights over time, shared across the D
  embedding columns) with bias and ReLU -> D values (64).
- Weights ~ truncated normal (stddev 0.1), biases 0.1.
- State = concat -> 48 + 64 = **112**. Dropout on the state: the SA2C code applies 0.1;
  the SQN/SAC scripts compute a dropout output but feed the undropped vector to the heads,
  so the default here is 0 (set ``cfg.dropout = 0.1`` for SA2C).

Caser is not causal over positions (the vertical filter mixes all L), so it has no
``sequence()``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxrec.encoders.common import ItemEncoderBase, check_items, valid_mask


class Caser(ItemEncoderBase):
    """Horizontal + vertical convolutions over the L x D history "image".

    ``Caser(num_items, cfg)``; ``state_dim = num_h_filters * len(filter_heights) +
    num_v_filters * embed_dim`` (112 at the paper configuration).
    """

    default_dropout = 0.0
    name_for_errors = "caser"

    def setup(self):
        super().setup()
        cfg = self.cfg
        w_init = nn.initializers.truncated_normal(stddev=0.1)
        b_init = nn.initializers.constant(0.1)
        # A "VALID" 1-D conv over time with D input channels is exactly the reference's
        # h x D 2-D filter that spans the full embedding width.
        self.h_convs = [nn.Conv(cfg.num_h_filters, (h,), padding="VALID", kernel_init=w_init,
                                bias_init=b_init, name=f"h_conv_{h}")
                        for h in cfg.filter_heights]
        self.v_kernel = self.param("v_kernel", w_init, (cfg.state_len, cfg.num_v_filters))
        self.v_bias = self.param("v_bias", b_init, (cfg.num_v_filters,))
        if self.dropout_rate > 0:
            self.state_dropout = nn.Dropout(self.dropout_rate)

    @property
    def state_dim(self) -> int:
        """Dimension of the state vector (112 at the paper configuration)."""
        cfg = self.cfg
        return cfg.num_h_filters * len(cfg.filter_heights) + cfg.num_v_filters * cfg.embed_dim

    def __call__(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """State ``[B, state_dim]``.

        Args:
          items: ``[B, L]`` int ids with ``L == cfg.state_len``.
          lengths: ``[B]`` int or None; unused (Caser reads the whole masked window) and
            accepted for a uniform encoder signature.
          train: enables dropout on the state (only if the rate is > 0).
        """
        check_items(items, lengths, self.num_items, self.cfg, self.name_for_errors,
                    exact_len=True)
        mask = valid_mask(items, self.pad_id)[..., None]
        x = self.embed(items) * mask                             # [B, L, D]
        pooled = [jnp.max(nn.relu(conv(x)), axis=1) for conv in self.h_convs]  # [B, F] each
        # Vertical filters: a learned weighted sum over time, per embedding column.
        v = nn.relu(jnp.einsum("bld,lv->bvd", x, self.v_kernel)
                    + self.v_bias[None, :, None])                # [B, V, D]
        state = jnp.concatenate(pooled + [v.reshape(v.shape[0], -1)], axis=-1)
        if self.dropout_rate > 0:
            state = self.state_dropout(state, deterministic=not train)
        return state
