"""Houlsby (serial bottleneck) adapters.

Paper: Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019, §2.1 /
Fig. 2: a bottleneck ``down -> nonlinearity -> up`` with an internal skip connection, inserted
after the attention-output projection and after the FFN-output projection of every layer,
before the residual + LayerNorm, and initialised close to identity.

IISAN (Fu et al., SIGIR 2024; spec ``iisan.md`` §1.3, §1.12) uses the same block both as its
side-adapter block (SANB) and as the "Adapter" baseline: 768 -> 64 -> 768, ReLU, weights
N(0, 0.01^2), biases 0.

Backbones place ``HoulsbyAdapter`` modules named ``adapter_attn`` / ``adapter_ffn`` (when
``adapter_size > 0``); the freeze preset ``"houlsby"`` trains every path containing
``adapter_``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any

_ACTIVATIONS = {
    "relu": nn.relu,
    # Exact (erf) GELU, as torch.nn.GELU() used by the IISAN reference adapters.
    "gelu": lambda x: nn.gelu(x, approximate=False),
}


class HoulsbyAdapter(nn.Module):
    """Residual bottleneck adapter ``x + up(act(down(x)))``.

    Submodules ``down`` (``nn.Dense(bottleneck)``) and ``up`` (``nn.Dense(D)``), weights drawn
    from N(0, 0.01^2) and biases zero so that the block is close to identity at init.
    Parameter count: ``2 * D * bottleneck + bottleneck + D``.

    Attributes:
      bottleneck: inner width ``r``.
      activation: ``"relu"`` (IISAN default) or ``"gelu"``.
      dtype: computation dtype (``None``: promote from inputs and params).
      param_dtype: parameter dtype.
    """

    bottleneck: int
    activation: str = "relu"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the adapter.

        Args:
          x: ``[..., D]``.

        Returns:
          ``[..., D]``, same dtype as the computation dtype.
        """
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"HoulsbyAdapter.activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.bottleneck <= 0:
            raise ValueError(f"HoulsbyAdapter.bottleneck must be > 0, got {self.bottleneck}")
        init = nn.initializers.normal(stddev=0.01)
        h = nn.Dense(
            self.bottleneck, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=init, name="down",
        )(x)
        h = _ACTIVATIONS[self.activation](h)
        h = nn.Dense(
            x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=init, name="up",
        )(h)
        return x + h
