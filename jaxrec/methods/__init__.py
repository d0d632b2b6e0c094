"""One module per paper, each implementing the method contract (README, "Adding a method: the contract").

The core (task builders, the trainer, evaluators, checkpointing) serves every method
without knowing any of them: ``jaxrec.main`` resolves the module named by
``config.method`` with :func:`get_method` and hands it to
``jaxrec.train.loop.train(method, task, config, workdir)``. The loop imports no method
and reads no method's config section.

A method module provides:

``init(rng, task, config) -> state``
    Parameters, optimizer state(s), counters: a pytree (flax ``struct.dataclass``;
    static fields such as the network and the optax transformation are marked
    ``pytree_node=False``). ``task`` is a :class:`jaxrec.data.tasks.Task`: ``num_items``,
    ``steps_per_epoch``, ``item_freq``, item side information, ``extras`` and
    ``example_batch()`` for shapes. A method with two networks keeps them stacked on a
    leading ``[2, ...]`` axis (SQN and the double-Q family). The state is donated to the
    step and checkpointed whole, so it must hold only what training changes.

``train_step(state, batch, rng, consts) -> (state, metrics)``
    Pure; ``jax.jit``-ed once by the trainer with the state donated. ``batch`` is a dict
    of ``[B, ...]`` numpy arrays named by the task kind; ``rng`` is
    ``fold_in(root, step)`` with ``init_key, root = split(key(seed))`` (``init`` gets
    ``init_key``); ``metrics`` is a dict of scalars with ``'loss'`` required (a
    non-finite loss stops the run).

``predict(state, batch, consts)``
    What the method's evaluators consume: scores ``[B, N]`` over all items for
    recommenders (the ranking evaluator), a reward ``[B]`` for reward models, tokens for
    generators.

Optional:

``make_consts(config, task) -> pytree``
    Frozen arrays: backbone weights, a tap cache, pretrained embeddings. Passed to
    ``train_step`` and ``predict`` as a non-donated jit argument, never checkpointed, and
    rebuilt on resume (so a resumed run must rebuild them identically). Default: ``None``.

``eval_consts(state, consts) -> pytree``
    Computed once per evaluation, before the batches (e.g. an item tower over all N
    items); its result replaces ``consts`` in ``predict`` during that evaluation.

``SHARD_PATTERNS: tuple[str, ...]``
    Regexes over '/'-joined state paths (``params/params/encoder/item_embed/embedding``)
    of further leaves with an item axis to split over the mesh's ``model`` axis, beyond
    :data:`jaxrec.train.sharding.DEFAULT_MODEL_PATTERNS` (item tables, ``head_*`` layers
    and their optimizer moments). Only needed for item-sized leaves named otherwise; the
    trainer shards the state itself, so no method code changes for several devices.

``EVALUATORS: dict[str, type]``
    Evaluators that come with the method, by type name, usable in ``config.evals``
    (see :mod:`jaxrec.evaluators`).

A new method needs no edit to the core: name it in ``config.method`` by registry name
(:data:`METHODS`) or by a dotted module path (``mypkg.my_method``).
"""

import importlib
from types import ModuleType

METHODS = ("supervised", "popularity", "sqn", "sac", "snqn", "sa2c", "prl", "smorl",
           "reinforce", "latent_intent", "pcrec", "iisan", "gaze_reward", "persoma")
REQUIRED = ("init", "train_step", "predict")


def get_method(name: str) -> ModuleType:
    """The method module ``jaxrec.methods.<name>``, or any importable module given by a
    dotted path (``mypkg.my_method``).

    Raises:
      ValueError: unknown name, import failure, or a module missing part of the contract.
    """
    if "." in name:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"config.method={name!r}: cannot import it ({e})") from e
    elif name in METHODS:
        try:
            module = importlib.import_module(f"jaxrec.methods.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"jaxrec.methods.{name}":
                raise
            raise ValueError(f"config.method={name!r} is not implemented yet") from e
    else:
        raise ValueError(f"unknown config.method {name!r}; available: {', '.join(METHODS)} "
                         f"(or a dotted module path)")
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise ValueError(f"method module {module.__name__!r} lacks {', '.join(missing)} "
                         f"(the contract: init, train_step, predict)")
    return module
