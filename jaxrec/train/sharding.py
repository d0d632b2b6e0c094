"""Scale-out with JAX's own SPMD: a device mesh, sharded state and batches, sharded ranking.

What the trainer (:mod:`jaxrec.train.loop`) does with it, only when ``config.mesh`` asks
for more than one device (the default ``data=1, model=1`` keeps the single-device path
untouched, with no mesh and no sharding calls at all):

- :func:`mesh_from_config` builds a 2-D :class:`jax.sharding.Mesh` with axes
  ``('data', 'model')`` from ``config.mesh.data`` / ``config.mesh.model`` (-1 = all
  remaining devices), over every device of every process;
- batches are split over ``data`` (each process loads only the rows its devices hold:
  :func:`local_rows`, :func:`global_batch`); parameters and optimizer moments are
  replicated, except leaves whose '/'-joined path matches one of the *model patterns*
  (:data:`DEFAULT_MODEL_PATTERNS`, ``config.mesh.model_patterns``, a method's optional
  ``SHARD_PATTERNS``), which are split over ``model`` along their item axis
  (:func:`leaf_spec`). The step is then ``jax.jit`` with these in/out shardings and the
  state donated, so it compiles once and GSPMD inserts the collectives (gradient
  all-reduce over ``data``; the item-axis matmuls stay local to their shard);
- evaluation ranks the target against a ``model``-sharded score matrix shard by shard
  (:func:`sharded_target_ranks`, and :func:`sharded_top_k` for top-k lists): each
  device sees only its ``[B, N / model]`` columns and only ``[B]`` counts or ``[B, k]``
  candidates cross devices, so ``[B, N]`` never exists on one device;
- ``config.train.compute_dtype='bfloat16'`` gives every matmul (``dot_general``) of the
  step and of evaluation the bf16 x bf16 -> f32 algorithm
  (``jax.default_matmul_precision('BF16_BF16_F32')``, :func:`precision_context`):
  GPU and TPU backends multiply in bf16 and accumulate in f32; parameters, optimizer
  state and element-wise work stay f32. XLA:CPU ignores the algorithm (computes f32).

Several hosts: :func:`initialize_distributed` calls ``jax.distributed.initialize()``
(SLURM / Open MPI / TPU detect themselves; elsewhere ``JAX_COORDINATOR_ADDRESS``,
``JAXREC_NUM_PROCESSES`` and ``JAXREC_PROCESS_ID``); ``jaxrec.main`` calls it before any
JAX work. Process 0 alone writes logs and results (:func:`is_writer`); checkpoints are
written by orbax from every process, each saving the shards it holds.

Uneven sharding is not allowed by ``jax.jit`` (a dimension must divide by the number of
shards): an item table of ``N + 1`` rows (the pad row) over 8 devices usually does not. A
matched leaf is then split along its largest axis that divides (the embedding width),
which still gives each device ``1/model`` of the table; the choice is printed
(:func:`describe`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ("data", "model")
# Leaves split over 'model' by default: the item tables and everything that scores items
# ('/'-joined state paths, searched with re.search). They cover RecNet's item embedding
# ('encoder/item_embed/embedding'), every named head ('head_s', 'head_q', SMORL's Q heads
# 'head_q_acc' ..., PRL's 'head': kernel [D, N] and bias [N]) and the tied-head bias,
# together with their optimizer moments, whose paths end the same way. Outputs of a
# method's ``eval_consts`` (an item tower over all N items, e.g. IISAN's) are split along
# their item axis by shape instead (:func:`jit_item_sharded`).
DEFAULT_MODEL_PATTERNS = (r"(^|/)item_embed/embedding$",
                          r"(^|/)head(_[^/]+)?/(kernel|bias)$", r"(^|/)tied_bias$")
COMPUTE_DTYPES = {"float32": None, "bfloat16": "BF16_BF16_F32"}


# ----------------------------------------------------------------------------- processes
DETERMINISM_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def set_determinism(config) -> bool:
    """With ``config.train.deterministic``, adds XLA's GPU determinism flags
    (:data:`DETERMINISM_FLAGS`: deterministic reductions and scatters instead of atomics)
    to ``XLA_FLAGS``, so a resumed run is bit-exact with an uninterrupted one on a GPU, at
    some speed cost. CPUs are deterministic already. Must run before the first JAX
    computation (``jaxrec.main`` and ``experiment.run`` call it first); returns whether the
    flags are in force, warning when the backend had already started without them."""
    if not bool(config.get("train", {}).get("deterministic", False)):
        return False
    flags_now = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in DETERMINISM_FLAGS if f not in flags_now]
    if not missing:
        return True
    from jax._src import xla_bridge
    if getattr(xla_bridge, "_backends", None):
        logging.warning("config.train.deterministic: JAX's backend is already initialised, so "
                        "%s cannot take effect in this process; set XLA_FLAGS before "
                        "starting Python", " ".join(missing))
        return False
    os.environ["XLA_FLAGS"] = " ".join([flags_now, *missing]).strip()
    return True


def initialize_distributed(mode: Optional[str] = None) -> bool:
    """``jax.distributed.initialize()`` when this process is one of several.

    Args:
      mode: 'auto' (default; ``JAXREC_DISTRIBUTED`` overrides): initialise when the
        environment says there are several processes (``SLURM_NTASKS`` > 1,
        ``OMPI_COMM_WORLD_SIZE`` > 1, ``JAX_COORDINATOR_ADDRESS`` or
        ``JAXREC_NUM_PROCESSES`` set); '1' always; '0' never.
    Returns:
      True when the distributed system was initialised here.
    Must run before any JAX computation (``jaxrec.main`` calls it first).
    """
    mode = str(mode or os.environ.get("JAXREC_DISTRIBUTED", "auto")).lower()
    if mode in ("0", "false", "no", "off"):
        return False
    env = os.environ
    several = (int(env.get("SLURM_NTASKS", "1") or 1) > 1
               or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
               or bool(env.get("JAX_COORDINATOR_ADDRESS"))
               or bool(env.get("JAXREC_NUM_PROCESSES")))
    if mode == "auto" and not several:
        return False
    kwargs = {}
    if env.get("JAXREC_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAXREC_NUM_PROCESSES"])
    if env.get("JAXREC_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAXREC_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


def is_writer() -> bool:
    """Process 0 writes logs, metrics and results (every process writes its checkpoint
    shards through orbax)."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- the mesh
def mesh_shape(config, num_devices: Optional[int] = None) -> tuple[int, int]:
    """(data, model) sizes from ``config.mesh`` (absent: (1, 1)); -1 takes the rest.

    Raises:
      ValueError: sizes that do not multiply to the number of devices, naming the fields.
    """
    n = jax.device_count() if num_devices is None else int(num_devices)
    m = config.get("mesh", None) if hasattr(config, "get") else None
    data = int(m.get("data", 1)) if m is not None else 1
    model = int(m.get("model", 1)) if m is not None else 1
    if data == -1 and model == -1:
        raise ValueError("config.mesh.data and config.mesh.model are both -1; fix one")
    if (data, model) == (1, 1) and jax.process_count() > 1:
        # Several processes with the default mesh: one device each would train the same
        # model apart (and write over each other's checkpoints). Use every device for data
        # parallelism instead, as a user launching N processes means.
        data = n
    if model == -1:
        model = n // max(data, 1)
    if data == -1:
        data = n // max(model, 1)
    if data < 1 or model < 1 or data * model > n or (data * model != n and
                                                    (data, model) != (1, 1)):
        raise ValueError(f"config.mesh.data={data} x config.mesh.model={model} must equal "
                         f"the {n} devices available (use -1 for 'the rest'; "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count=K simulates K "
                         f"devices on CPU)")
    return data, model


def mesh_from_config(config) -> Optional[Mesh]:
    """The ``('data', 'model')`` mesh of ``config.mesh``, or None for one device
    (data = model = 1 in a single process: today's unsharded path)."""
    data, model = mesh_shape(config)
    if data * model == 1 and jax.process_count() == 1:
        return None
    return make_mesh(data, model)


def make_mesh(data: int, model: int) -> Mesh:
    """A ``(data, model)`` mesh with automatic (GSPMD) axes, so methods written without
    sharding annotations compile as they are. ``jax.make_mesh`` orders devices so that
    ``model`` neighbours share a host and each process holds whole ``data`` rows."""
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, model), AXES, axis_types=(auto, auto))


def model_size(mesh: Optional[Mesh]) -> int:
    return 1 if mesh is None else int(mesh.shape["model"])


def data_size(mesh: Optional[Mesh]) -> int:
    return 1 if mesh is None else int(mesh.shape["data"])


# ----------------------------------------------------------------------------- leaves
def model_patterns(config, method=None) -> tuple:
    """Regexes of the leaves split over ``model``: ``config.mesh.model_patterns`` when
    set, else :data:`DEFAULT_MODEL_PATTERNS`; plus the method module's optional
    ``SHARD_PATTERNS`` (the contract's optional hint)."""
    m = config.get("mesh", None) if hasattr(config, "get") else None
    own = tuple(m.get("model_patterns", ()) or ()) if m is not None else ()
    pats = own or DEFAULT_MODEL_PATTERNS
    pats = pats + tuple(getattr(method, "SHARD_PATTERNS", ()) or ())
    for p in pats:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"config.mesh.model_patterns: bad regex {p!r} ({e})") from e
    return pats


def path_str(path) -> str:
    """A key path as 'a/b/0/c' (the form the patterns match)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaf_spec(shape: Sequence[int], model: int, num_items: Optional[int],
              items_only: bool = False) -> tuple[P, str]:
    """The PartitionSpec of a matched leaf and a note of the choice.

    The item axis (size ``N`` or ``N + 1``, the last such) is split over ``model`` when it
    divides; else (unless ``items_only``) the largest axis that divides (the table's
    width); else the leaf stays replicated.
    """
    shape = tuple(int(s) for s in shape)
    if model <= 1 or not shape:
        return P(), "replicated"
    items = [a for a in range(len(shape))
             if num_items is not None and shape[a] in (num_items, num_items + 1)]
    for a in reversed(items):
        if shape[a] % model == 0:
            return P(*[("model" if i == a else None) for i in range(len(shape))]), \
                f"item axis {a}"
    if items_only:
        return P(), "replicated (no item axis that divides)"
    for a in sorted(range(len(shape)), key=lambda i: (-shape[i], -i)):
        if shape[a] % model == 0 and shape[a] >= model:
            why = (f"item axis {items[-1]} ({shape[items[-1]]}) does not divide by "
                   f"model={model}; axis {a} instead" if items else f"axis {a}")
            return P(*[("model" if i == a else None) for i in range(len(shape))]), why
    return P(), f"replicated (no axis of {shape} divides by model={model})"


def tree_specs(tree: Any, mesh: Optional[Mesh], patterns: Sequence[str],
               num_items: Optional[int], prefix: str = "") -> tuple[Any, dict]:
    """PartitionSpecs for every leaf of ``tree`` (P() unless its path matches a pattern)
    and {path: note} of the matched leaves."""
    m = model_size(mesh)
    notes = {}

    def one(path, x):
        name = prefix + path_str(path)
        if m > 1 and any(re.search(p, name) for p in patterns):
            spec, why = leaf_spec(np.shape(x), m, num_items)
            notes[name] = (tuple(np.shape(x)), spec, why)
            return spec
        return P()

    return jax.tree_util.tree_map_with_path(one, tree), notes


def tree_shardings(tree: Any, mesh: Mesh, patterns: Sequence[str],
                   num_items: Optional[int], prefix: str = "") -> tuple[Any, dict]:
    """NamedShardings for every leaf of ``tree`` (see :func:`tree_specs`)."""
    specs, notes = tree_specs(tree, mesh, patterns, num_items, prefix)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, P)), notes


def describe(mesh: Mesh, notes: dict, limit: int = 8) -> str:
    """One line per sharded leaf (first ``limit``) for the run's log."""
    lines = [f"mesh data={mesh.shape['data']} x model={mesh.shape['model']} over "
             f"{mesh.size} devices ({jax.process_count()} process(es)); "
             f"{len(notes)} leaves split over 'model'"]
    for name, (shape, spec, why) in list(notes.items())[:limit]:
        lines.append(f"  {name} {list(shape)} -> {spec} ({why})")
    if len(notes) > limit:
        lines.append(f"  ... and {len(notes) - limit} more")
    return "\n".join(lines)


def init_sharded(init_fn, key, mesh: Mesh, patterns: Sequence[str],
                 num_items: Optional[int]) -> tuple[Any, Any, dict]:
    """``init_fn(key)`` created directly in its shards (jitted with out_shardings, so an
    item table never has to fit on one device), with its shardings and notes. An init that
    cannot be traced (it reads concrete values) runs eagerly and is then placed."""
    abstract = jax.eval_shape(init_fn, key)
    shardings, notes = tree_shardings(abstract, mesh, patterns, num_items)
    try:
        state = jax.jit(init_fn, out_shardings=shardings)(key)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
            jax.errors.TracerArrayConversionError, jax.errors.TracerIntegerConversionError):
        state = jax.device_put(init_fn(key), shardings)
    return state, shardings, notes


def jit_item_sharded(fn, mesh: Mesh, num_items: int):
    """``jax.jit(fn)`` whose outputs are split over ``model`` along their item axis (size
    N or N + 1, when it divides), the rest replicated: an evaluator's ``eval_consts`` (an
    item tower over all N items) then never sits whole on one device. The output layout
    is fixed from ``jax.eval_shape`` at the first call."""
    m = model_size(mesh)
    compiled = {}

    def call(*args):
        if "fn" not in compiled:
            abstract = jax.eval_shape(fn, *args)
            out = jax.tree.map(lambda a: NamedSharding(
                mesh, leaf_spec(a.shape, m, num_items, items_only=True)[0]), abstract)
            compiled["fn"] = jax.jit(fn, out_shardings=out)
        return compiled["fn"](*args)

    return call


# ----------------------------------------------------------------------------- batches
def batch_spec(batch_size: int, mesh: Mesh) -> P:
    """P('data') when the batch divides over ``data``, else P() (replicated)."""
    return P("data") if batch_size % data_size(mesh) == 0 else P()


def local_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a ``[batch_size, ...]`` batch that this process's devices hold (a
    contiguous block: :func:`make_mesh` groups each process's devices along ``data``)."""
    idx = sharding.addressable_devices_indices_map((batch_size,))
    starts = [i[0].start or 0 for i in idx.values()]
    stops = [batch_size if i[0].stop is None else i[0].stop for i in idx.values()]
    return slice(min(starts), max(stops))


def global_batch(local: dict, sharding: NamedSharding, batch_size: int) -> dict:
    """This process's rows ``local`` (``[b, ...]`` numpy per key, from :func:`local_rows`)
    -> global ``[batch_size, ...]`` arrays laid out by ``sharding``."""
    return {k: jax.make_array_from_process_local_data(
        sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:]) for k, v in local.items()}


def check_batch(batch_size: int, mesh: Mesh, field: str = "config.train.batch_size") -> None:
    d = data_size(mesh)
    if batch_size % d:
        raise ValueError(f"{field}={batch_size} does not divide over config.mesh.data={d} "
                         f"devices; use a multiple of {d}")


# ----------------------------------------------------------------------------- precision
def precision_context(config):
    """A factory of context managers for ``config.train.compute_dtype`` ('float32':
    nothing; 'bfloat16': every matmul with bf16 inputs and f32 accumulation where the
    backend honours it, GPU/TPU). It must wrap every call of a jitted function (the
    precision is part of the jit cache key, so a call outside it would compile again)."""
    name = str(config.train.get("compute_dtype", "float32") or "float32")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.train.compute_dtype={name!r}; accepted: "
                         f"{', '.join(COMPUTE_DTYPES)}")
    algo = COMPUTE_DTYPES[name]
    return (lambda: jax.default_matmul_precision(algo)) if algo else contextlib.nullcontext


# ----------------------------------------------------------------------------- ranking
def _pad_items(x: jax.Array, model: int, fill) -> tuple[jax.Array, int]:
    """Pads the last axis of ``[B, N]`` to a multiple of ``model``; returns (x, N)."""
    n = x.shape[-1]
    pad = (-n) % model
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill)
    return x, n


def sharded_target_ranks(scores: jax.Array, targets: jax.Array, mesh: Mesh,
                         history: Optional[jax.Array] = None, id_shift: int = 0, *,
                         mask_target_if_in_history: bool = True,
                         ties: str = "reference") -> jax.Array:
    """:func:`jaxrec.metrics.target_ranks` with the item axis split over ``model``.

    Each device holds ``[B', N / model]`` columns of ``scores`` (``B'`` = B / data when it
    divides); it finds the target's score if the target is among its columns, a ``psum``
    over ``model`` shares it, each device counts the items of its columns that rank above
    the target, and a second ``psum`` adds the counts. Same numbers as the unsharded
    function under every tie rule (column indices are global), NaN and exclusion rules
    included. History exclusion is built per shard from the ids (no ``[B, N]`` mask).

    Args:
      scores: ``[B, N]``; targets: ``[B]`` int.
      history: optional ``[B, L]`` int ids of the input window whose items are removed
        from the ranking (the evaluator's ``exclude_history``), with ``id_shift`` as in
        :func:`jaxrec.evaluators.ranking.history_mask` (item = id - shift; pads fall
        outside [0, N)).
    Returns:
      ``[B]`` int32 ranks (or ``metrics.UNRANKED``), split over ``data``.
    """
    from jaxrec import metrics as M
    if ties not in M.TIES:
        raise ValueError(f"ties must be one of {M.TIES}, got {ties!r}")
    m = model_size(mesh)
    b = scores.shape[0]
    scores, n = _pad_items(jnp.asarray(scores, jnp.float32), m, -jnp.inf)
    bs = "data" if b % data_size(mesh) == 0 else None
    cols = scores.shape[1] // m

    def local(s, t, *hist):
        off = jax.lax.axis_index("model") * cols
        idx = off + jnp.arange(cols)                          # global column ids
        is_t = idx[None, :] == t[:, None]                     # [B', cols]
        ts = jax.lax.psum(jnp.sum(jnp.where(is_t, s, 0.0), axis=1), "model")
        found = jax.lax.psum(jnp.sum(is_t, axis=1), "model")
        unranked = (found == 0) | jnp.isnan(ts)
        if hist:
            li = hist[0] - id_shift - off                       # local column of each id
            ok = (li >= 0) & (li < cols) & (li + off < n)
            rows = jnp.arange(li.shape[0])[:, None]
            e = jnp.zeros((li.shape[0], cols + 1), bool).at[
                rows, jnp.where(ok, li, cols)].set(True)[:, :cols]
            t_ex = jax.lax.psum(jnp.sum(e & is_t, axis=1), "model") > 0
            if mask_target_if_in_history:
                unranked = unranked | t_ex
            s = jnp.where(e & ~is_t, -jnp.inf, s)
        if ties == "pessimistic":
            tied = jnp.ones_like(is_t)
        elif ties == "optimistic":
            tied = jnp.zeros_like(is_t)
        else:
            tied = idx[None, :] > t[:, None]
        t_s = ts[:, None]
        above = ((s > t_s) | ((s == t_s) & tied) | jnp.isnan(s)) & ~is_t & (idx < n)[None]
        count = jax.lax.psum(jnp.sum(above, axis=1, dtype=jnp.int32), "model")
        return jnp.where(unranked, M.UNRANKED, 1 + count).astype(jnp.int32)

    args = (scores, jnp.asarray(targets, jnp.int32))
    specs = (P(bs, "model"), P(bs))
    if history is not None:
        args, specs = args + (jnp.asarray(history, jnp.int32),), specs + (P(bs),)
    # The outputs are psum-ed over 'model', hence replicated there (check_vma cannot
    # infer it through the scatter of the history mask).
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(bs),
                         check_vma=False)(*args)


def sharded_top_k(scores: jax.Array, k: int, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k(scores, k)`` with the item axis split over ``model``: a top-k per
    shard, an all-gather of the ``model * k`` candidates, and a top-k of those. Ties break
    towards the lower item id, as in ``lax.top_k``.

    Args:
      scores: ``[B, N]`` float.
      k: list length (<= N / model).
    Returns:
      (values ``[B, k]``, item ids ``[B, k]`` int32).
    """
    m = model_size(mesh)
    b = scores.shape[0]
    scores, n = _pad_items(scores, m, -jnp.inf)
    cols = scores.shape[1] // m
    if k > cols:
        raise ValueError(f"sharded_top_k: k={k} exceeds the {cols} items per shard")
    bs = "data" if b % data_size(mesh) == 0 else None

    def local(s):
        v, i = jax.lax.top_k(s, k)
        i = i + jax.lax.axis_index("model") * cols
        v = jax.lax.all_gather(v, "model", axis=1, tiled=True)     # [B', m*k], shard order
        i = jax.lax.all_gather(i, "model", axis=1, tiled=True)
        v, j = jax.lax.top_k(v, k)
        return v, jnp.take_along_axis(i, j, axis=1).astype(jnp.int32)

    # Replicated over 'model' after the all-gather (check_vma cannot see through top_k).
    return jax.shard_map(local, mesh=mesh, in_specs=P(bs, "model"),
                         out_specs=(P(bs), P(bs)), check_vma=False)(scores)
