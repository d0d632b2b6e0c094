"""LoRA: low-rank adaptation of a dense layer.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, §4.1
(``h = W0 x + (alpha / r) * B A x`` with ``B = 0`` at init, so training starts from the
pretrained function). Used as a baseline by IISAN (Fu et al., SIGIR 2024, §5 / spec
``iisan.md`` §1.11–1.12: rank 8 on query and value) and as the tuning regime of PERSOMA and
GazeReward (spec ``llm.md`` §1.3, §2.4).

Unlike the IISAN reference code, which replaced the pretrained query/value ``Linear`` by a
freshly initialised ``lora.Linear`` (discarding the pretrained weight, spec §1.12), this layer
KEEPS the pretrained ``kernel`` and only adds the low-rank update.

Freezing is not done here: the optimizer masks of :mod:`jaxrec.peft.freeze` decide which of
``kernel`` / ``bias`` / ``lora_a`` / ``lora_b`` train.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

Array = Any
Dtype = Any
Initializer = Any

# loralib initialises A [r, in] with kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
# variance_scaling(1/3, fan_in, uniform) has bound sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in) for a
# [in, r] kernel (fan_in = in), so it is the same distribution in flax's [in, out] layout.
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LoRADense(nn.Module):
    """Drop-in replacement for ``nn.Dense`` with an optional low-rank update.

    ``y = x @ kernel + bias + (alpha / rank) * (dropout(x) @ lora_a) @ lora_b``

    Parameters (same names and shapes as ``nn.Dense``, so ``rank=0`` yields a parameter tree
    identical to ``nn.Dense`` and loads the same checkpoints):

    * ``kernel [in, features]``, ``bias [features]`` (when ``use_bias``);
    * when ``rank > 0``: ``lora_a [in, rank]`` (loralib's kaiming-uniform) and
      ``lora_b [rank, features]`` (zeros, so the layer equals the pretrained one at init).

    Attributes:
      features: output width ``F``.
      use_bias: add ``bias``.
      rank: LoRA rank ``r``; 0 disables the low-rank branch.
      alpha: LoRA ``alpha``; the update is scaled by ``alpha / rank`` (loralib convention).
      lora_dropout: dropout on the input of the low-rank branch only (loralib / PEFT).
      dtype: computation dtype (``None``: promote from inputs and params, as ``nn.Dense``).
      param_dtype: parameter dtype.
      precision: ``lax`` precision of the matmuls.
      kernel_init / bias_init: initialisers of the pretrained-style parameters.
      lora_a_init / lora_b_init: initialisers of the low-rank factors.
    """

    features: int
    use_bias: bool = True
    rank: int = 0
    alpha: float = 1.0
    lora_dropout: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    lora_a_init: Initializer = lora_a_init
    lora_b_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
        """Applies the layer over the last axis.

        Args:
          inputs: ``[..., in]``.
          deterministic: disables ``lora_dropout`` (needs a ``'dropout'`` rng when False
            and ``lora_dropout > 0``).

        Returns:
          ``[..., features]``.
        """
        if self.rank < 0:
            raise ValueError(f"LoRADense.rank must be >= 0, got {self.rank}")
        d_in = jnp.shape(inputs)[-1]
        kernel = self.param("kernel", self.kernel_init, (d_in, self.features), self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        contract = (((x.ndim - 1,), (0,)), ((), ()))
        y = lax.dot_general(x, kernel, contract, precision=self.precision)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        if self.rank == 0:
            return y

        lora_a = self.param("lora_a", self.lora_a_init, (d_in, self.rank), self.param_dtype)
        lora_b = self.param("lora_b", self.lora_b_init, (self.rank, self.features), self.param_dtype)
        h = nn.Dropout(rate=self.lora_dropout)(inputs, deterministic=deterministic)
        h, lora_a, lora_b = promote_dtype(h, lora_a, lora_b, dtype=self.dtype)
        # (x A) B costs O(r (in + out)) per row instead of forming the [in, out] product A B.
        h = lax.dot_general(h, lora_a, contract, precision=self.precision)
        h = lax.dot_general(h, lora_b, contract, precision=self.precision)
        return y + (self.alpha / self.rank) * h


def merge_lora_kernel(kernel: Array, lora_a: Array, lora_b: Array, alpha: float) -> Array:
    """Folds a trained low-rank update into the dense kernel for inference.

    Args:
      kernel: ``[in, out]`` pretrained kernel.
      lora_a: ``[in, r]``.
      lora_b: ``[r, out]``.
      alpha: the layer's ``alpha``; the scale is ``alpha / r``.

    Returns:
      ``[in, out]`` kernel ``W + (alpha / r) A B``; a ``LoRADense(rank=0)`` with it computes the
      same function as the LoRA layer (up to float rounding).
    """
    if lora_a.shape[0] != kernel.shape[0] or lora_b.shape[1] != kernel.shape[1]:
        raise ValueError(
            f"LoRA factors lora_a {lora_a.shape} / lora_b {lora_b.shape} do not fit kernel "
            f"{kernel.shape}"
        )
    if lora_a.shape[1] != lora_b.shape[0]:
        raise ValueError(f"LoRA ranks differ: lora_a {lora_a.shape} vs lora_b {lora_b.shape}")
    rank = lora_a.shape[1]
    return kernel + (alpha / rank) * (lora_a @ lora_b)
