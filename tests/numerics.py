"""Float comparisons that hold on any x86-64 CPU (AVX2 or AVX-512, Intel or AMD) and on a GPU.

Two computations of the same gradient or parameter tree (a refactored step against the former
one, a cached path against the live one, a rematerialised backward pass) agree only up to
rounding, and rounding depends on the reduction order XLA and Eigen pick for the machine
(vector width, cache sizes). An entry that nearly cancels — a gradient of 1e-5 in a tree whose
largest entry is 5e-2, or a leaf whose true gradient is exactly zero, like an attention key
bias — differs between two machines by far more than its own size times any sensible rtol,
although the computation is right. Entry-wise ``assert_allclose(rtol, atol=1e-6)`` then fails
on one CPU and passes on another.

So these helpers judge each entry against the **magnitude of its leaf and of the whole tree**:

    |got - want| <= rtol * max|want_leaf| + tree_rtol * max|want_tree|

A wrong formula, a missing term or a swapped input moves a leaf by a large fraction of its own
scale and still fails; round-off, which is a small fraction of the tree's scale, passes.
"""

import jax
import numpy as np


def _max_abs(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.max(np.abs(x))) if x.size else 0.0


def assert_close_to_scale(got, want, rtol: float = 1e-4, *, atol: float = 0.0, err_msg: str = ""):
    """``|got - want| <= rtol * max|want| + atol`` for every entry of one array."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{err_msg}: shape {got.shape} != {want.shape}")
    scale = _max_abs(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale + atol,
                               err_msg=f"{err_msg} (leaf scale {scale:.3g}, rtol {rtol:g}, "
                                       f"atol {atol:.3g})")


def assert_trees_close(got, want, rtol: float = 1e-4, *, tree_rtol: float | None = None):
    """Every leaf of ``got`` within ``rtol`` of its leaf's scale plus ``tree_rtol`` (default
    ``rtol / 10``) of the whole tree's scale, in ``want``; the failure names the leaf's path."""
    tree_rtol = rtol / 10 if tree_rtol is None else tree_rtol
    got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(want)[0]
    if [p for p, _ in got_leaves] != [p for p, _ in want_leaves]:
        raise AssertionError("the trees have different structures:\n"
                             f"{[jax.tree_util.keystr(p) for p, _ in got_leaves]}\n"
                             f"{[jax.tree_util.keystr(p) for p, _ in want_leaves]}")
    tree_scale = max((_max_abs(b) for _, b in want_leaves), default=0.0)
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        assert_close_to_scale(a, b, rtol, atol=tree_rtol * tree_scale,
                              err_msg=jax.tree_util.keystr(path))
