"""One call from a config to results: resolve the method, build the task, train.

This is what ``jaxrec.main`` runs; scripts, notebooks and tests call it directly::

    from jaxrec import config_util, experiment
    config = config_util.load_config_file("configs/sqn.py", "encoder=gru4rec,smoke")
    res = experiment.run(config, "/tmp/run")

The trainer (:func:`jaxrec.train.loop.train`) never resolves a method or reads a data
kind itself; this module is the only place where the three meet.
"""

from __future__ import annotations

from typing import Optional

from jaxrec import validate
from jaxrec.data import tasks
from jaxrec.methods import get_method
from jaxrec.train import loop, sharding


def run(config, workdir: str, *, dataset=None, task: Optional[tasks.Task] = None,
        stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Trains ``config.method`` on ``config.dataset`` in ``workdir`` (resuming if possible).

    Args:
      config: a ConfigDict from ``configs/<method>.py``.
      workdir: run directory.
      dataset: an already loaded :class:`jaxrec.data.prepare.Dataset` (tests reuse one).
      task: an already built task (overrides ``dataset``).
      stop_after / progress: as in :func:`jaxrec.train.loop.train`.
    Returns:
      The results dict of :func:`jaxrec.train.loop.train`.
    """
    # Config and workdir first: a bad value stops the run before any dataset is prepared,
    # checkpoint loaded or step compiled.
    validate.check_config(config, workdir)
    sharding.set_determinism(config)
    method = get_method(config.method)
    task = task if task is not None else tasks.build_task(config, dataset)
    return loop.train(method, task, config, workdir, stop_after=stop_after,
                      progress=progress)
