"""NextItNet state encoder as used by SQN/SAC, SNQN/SA2C and PRL (specs/rl.md §2).

Paper: Yuan et al., "A Simple Convolutional Generative Network for Next Item
Recommendation", WSDM 2019 (§3.3 residual blocks with dilated causal convolutions), as
instantiated in Xin et al., SIGIR 2020 (SQN) and the authors' TF1 code (``NextItNet*.py``,
``NextItNetModules.nextitnet_residual_block``).

Reference arrangement:
- x = E[items] * mask (pad positions zeroed).
- 6 residual blocks with dilations [1, 2, 1, 2, 1, 2]. Block with dilation d:
  causal conv (kernel 3, dilation d) -> LN -> ReLU -> causal conv (kernel 3, dilation
  **2d**) -> LN -> ReLU, plus the block input. "Causal" = left zero-padding of (k-1)·dil.
- The output of every block is multiplied by the mask again.
- Conv weights ~ truncated normal (stddev 0.02), biases 0; LN epsilon 1e-8.
- The state is the output at position len-1 (right padding) / L-1 (left padding).

Parameters per block: 2 (k D^2 + D) + 2 · 2 D.
"""

from __future__ import annotations

from typing import Optional

import jax
import flax.linen as nn

from jaxrec.encoders.common import ItemEncoderBase, check_items, valid_mask


class _ResidualBlock(nn.Module):
    """One NextItNet residual block: ``[B, L, C] -> [B, L, C]``, causal over L."""

    channels: int
    dilation: int
    kernel_size: int
    ln_eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        w_init = nn.initializers.truncated_normal(stddev=0.02)
        h = x
        for i, dil in enumerate((self.dilation, 2 * self.dilation)):
            # Left-only padding of (k-1)*dil makes the conv causal: output t sees t,
            # t-dil, ..., t-(k-1)*dil and never a later position.
            h = nn.Conv(self.channels, (k,), kernel_dilation=(dil,),
                        padding=[((k - 1) * dil, 0)], kernel_init=w_init,
                        bias_init=nn.initializers.zeros, name=f"conv{i + 1}")(h)
            h = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False,
                             name=f"ln{i + 1}")(h)
            h = nn.relu(h)
        return x + h


class NextItNet(ItemEncoderBase):
    """Stack of dilated causal residual conv blocks over the item history.

    ``NextItNet(num_items, cfg)``; ``state_dim = cfg.embed_dim`` (the channel count).
    """

    default_dropout = 0.0
    name_for_errors = "nextitnet"

    def setup(self):
        super().setup()
        cfg = self.cfg
        self.blocks = [_ResidualBlock(cfg.embed_dim, d, cfg.kernel_size, cfg.ln_eps,
                                      name=f"block_{i}")
                       for i, d in enumerate(cfg.dilations)]
        if self.dropout_rate > 0:
            self.input_dropout = nn.Dropout(self.dropout_rate)

    @property
    def state_dim(self) -> int:
        """Dimension of the state vector (the channel count = embed_dim)."""
        return self.cfg.embed_dim

    def sequence(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """Per-position outputs of the last block, ``[B, L, D]`` (zeros at pads).

        Args:
          items: ``[B, L]`` int ids (pad included); lengths: unused here (the mask comes
            from the ids, as in the reference), accepted for a uniform signature.
          train: enables input dropout (only if ``cfg.dropout`` > 0, an extension; the
            reference has none).
        """
        check_items(items, lengths, self.num_items, self.cfg, self.name_for_errors)
        mask = valid_mask(items, self.pad_id)[..., None].astype(jax.numpy.float32)
        x = self.embed(items) * mask
        if self.dropout_rate > 0:
            x = self.input_dropout(x, deterministic=not train)
        for block in self.blocks:
            x = block(x) * mask
        return x
