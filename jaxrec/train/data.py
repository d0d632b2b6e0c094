"""Batching: seeded random-access training batches and fixed-shape evaluation batches.

Training batches come from a grain ``MapDataset`` of *index batches* (seeded shuffle,
reshuffled every epoch) mapped through one vectorised numpy gather, so batch ``i`` is a
pure function of ``(seed, i)``: the data position saved in a checkpoint is simply the step.
What the arrays are is the task's business (:mod:`jaxrec.data.tasks`).
"""

from __future__ import annotations

import numpy as np

from jaxrec.runs import eval_batches  # noqa: F401  (re-exported: the trainer's batching)


class BatchSource:
    """Random-access training batches: ``source[i]`` is batch i (seeded, epoch-reshuffled).

    Args:
      arrays: name -> [T, ...] training examples.
      batch_size: rows per batch (the last partial batch of each pass is dropped).
      seed: shuffle seed.
    """

    def __init__(self, arrays: dict, batch_size: int, seed: int):
        import grain
        self.arrays = arrays
        n = len(next(iter(arrays.values())))
        if n < batch_size:
            raise ValueError(f"only {n} training examples for batch_size {batch_size}; "
                             "lower config.train.batch_size")
        self.steps_per_epoch = n // batch_size
        # Index batches over an endless, per-epoch reshuffled stream of example indices.
        self._index = (grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
                       .batch(batch_size, drop_remainder=True))

    def __getitem__(self, i: int) -> dict:
        idx = np.asarray(self._index[int(i)])
        return {k: v[idx] for k, v in self.arrays.items()}

    def rows(self, i: int, rows: slice) -> dict:
        """Rows ``rows`` of batch i, gathered without the rest: one host's part of a
        global batch split over several hosts (same order as ``source[i][rows]``)."""
        idx = np.asarray(self._index[int(i)])[rows]
        return {k: v[idx] for k, v in self.arrays.items()}
