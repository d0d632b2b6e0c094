"""One module per paper. Each provides the method contract of DESIGN.md:

- ``init(rng, example_batch, config) -> state``
- ``train_step(state, batch, rng) -> (state, metrics)`` — pure; jitted once by the trainer
- ``predict(state, batch) -> scores [B, N]`` — what the evaluator ranks

``config.data.num_items`` is filled in by the trainer before ``init``; everything else a
method needs is in its config. The trainer never imports a method by name except through
:func:`get_method`.
"""

import importlib

METHODS = ("supervised", "popularity", "sqn")


def get_method(name: str):
    """Returns the method module ``jaxrec.methods.<name>``, or any importable module given
    by a dotted path (``mypkg.my_method``): a new method needs no change to the trainer."""
    if "." in name:
        return importlib.import_module(name)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return importlib.import_module(f"jaxrec.methods.{name}")
