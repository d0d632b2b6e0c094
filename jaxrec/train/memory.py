"""Compiled memory and FLOPs of a step, from abstract shapes: no weights, no execution.

Why: IISAN's claim (Fu et al., SIGIR 2024, §5.3 / Table 1 and the abstract: 47 GB for full
fine-tuning against 3 GB for IISAN; spec ``iisan.md`` §1.10, §1.15) is about the memory and
time of a *training step* at paper scale (BERT-base + ViT-base on 32 users x 11 items). On a
CPU-only machine the step cannot be run at that scale, but XLA can still compile it: the
compiled executable's buffer assignment says how many bytes the arguments, outputs and
temporaries (activations kept for the backward pass, gradients, workspace) take, and its cost
analysis counts the FLOPs. Both come from ``jax.ShapeDtypeStruct`` inputs
(``jax.eval_shape`` of an ``init``), so a 200M-parameter step is "measured" without ever
allocating a weight (``ecosystem.md`` §5: these predictions track real RSS growth within a
few per cent on CPU).

What the numbers mean (XLA's ``CompiledMemoryStats``):

* ``argument_bytes`` — every input buffer (parameters, optimizer state, batch, consts);
* ``output_bytes`` — every result buffer (the new state, metrics), plus the result tuple's
  pointer table (8 bytes per output on CPU);
* ``alias_bytes`` — outputs that reuse a donated input buffer (counted in both above);
* ``temp_bytes`` — the step's scratch: activations saved for the backward pass, gradients
  before the update, fusion workspaces. This is what decoupling the side network from the
  frozen backbone shrinks (spec §1.10 "MW+A" vs "MW+a").
* ``peak_bytes`` = arguments + outputs − aliased + temporaries: an upper bound of the live
  device memory during the step (XLA may free dead arguments early, never later).

FLOPs are XLA's count for the compiled HLO (``cost_analysis()['flops']``: one multiply-add
is two FLOPs); backends count slightly differently, so compare them within one backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxrec.storage import format_bytes  # noqa: F401  (re-exported)

__all__ = ["StepCost", "abstract", "tree_bytes", "step_cost", "format_bytes"]


@dataclasses.dataclass(frozen=True)
class StepCost:
    """Compiled memory (bytes) and FLOPs of one call of a jitted function.

    Attributes:
      argument_bytes, output_bytes, temp_bytes, alias_bytes, generated_code_bytes: XLA's
        ``memory_analysis()`` fields (see the module docstring).
      flops: XLA's ``cost_analysis()['flops']`` (NaN when the backend reports none).
      bytes_accessed: XLA's estimate of memory traffic (NaN when not reported).
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    flops: float
    bytes_accessed: float

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs − aliased outputs + temporaries (upper bound of live memory)."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def as_dict(self) -> dict:
        """Every field plus ``peak_bytes``, JSON-able."""
        d = dataclasses.asdict(self)
        d["peak_bytes"] = self.peak_bytes
        return d


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` of every array leaf (abstract leaves are kept as they are).

    Args:
      tree: a pytree of arrays / numpy arrays / ``ShapeDtypeStruct`` (e.g. a state).
    Returns:
      The same structure with ``ShapeDtypeStruct`` leaves, so ``step_cost`` never needs the
      values (and nothing is transferred to a device).
    """
    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
        return x
    return jax.tree.map(one, tree)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (concrete or ``ShapeDtypeStruct``).

    Typed PRNG keys count their underlying ``uint32`` words (what XLA allocates).
    """
    total = 0
    for x in jax.tree.leaves(tree):
        if not hasattr(x, "shape"):
            continue
        dtype = x.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            x = jax.eval_shape(jax.random.key_data, x)
            dtype = x.dtype
        total += int(np.prod(x.shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def step_cost(fn: Callable, *args: Any, static_argnums: Sequence[int] = (),
              donate_argnums: Sequence[int] = (), **kwargs: Any) -> StepCost:
    """Compiles ``fn(*args, **kwargs)`` for the shapes of ``args`` and reads XLA's analyses.

    Nothing is executed and no argument value is read: pass ``jax.ShapeDtypeStruct`` leaves
    (:func:`abstract`, or ``jax.eval_shape`` of an ``init``) to cost a paper-scale step on
    any machine. Static (hashable, non-array) arguments go through ``static_argnums``.

    Args:
      fn: the (un-jitted or jitted) step function.
      *args, **kwargs: its arguments, concrete or abstract.
      static_argnums: positions of static arguments.
      donate_argnums: positions of donated arguments (the trainer donates the state, so
        pass ``(0,)`` to cost a train step as the trainer runs it; donated buffers then show
        up in ``alias_bytes``).

    Returns:
      :class:`StepCost` for the default backend.

    Raises:
      RuntimeError: the backend's compiled executable reports no memory analysis.
    """
    jitted = jax.jit(fn, static_argnums=tuple(static_argnums),
                     donate_argnums=tuple(donate_argnums))
    shaped = [a if i in static_argnums else abstract(a) for i, a in enumerate(args)]
    return compiled_cost(jitted.lower(*shaped, **abstract(kwargs)).compile())


def compiled_cost(compiled: Any) -> StepCost:
    """:class:`StepCost` of an already compiled executable (``jax.jit(f).lower(...).compile()``),
    so a caller that also runs the step compiles it once.

    Raises:
      RuntimeError: the backend's compiled executable reports no memory analysis.
    """
    mem = compiled.memory_analysis()
    if mem is None:
        raise RuntimeError(f"the {jax.default_backend()!r} backend reports no memory analysis "
                           f"for compiled executables")
    cost = compiled.cost_analysis()
    # jax has returned this as a dict and as a one-element list of dicts across versions.
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return StepCost(
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        flops=_as_float(cost.get("flops", float("nan"))),
        bytes_accessed=_as_float(cost.get("bytes accessed", float("nan"))),
    )
