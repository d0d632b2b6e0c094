"""The multi-device checks of tests/train/test_sharding.py, run in one subprocess with 8
simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set
before JAX starts, so it cannot run inside the pytest process).

Usage: python -m tests.train.sharding_program OUT_JSON WORKDIR

Every check writes numbers into OUT_JSON; the test module asserts on them.
"""

import json
import os
import sys
import time

if "--xla_force_host_platform_device_count=8" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrec import metrics as M  # noqa: E402
from jaxrec.data import prepare as prep  # noqa: E402
from jaxrec.data.tasks import build_task  # noqa: E402
from jaxrec.evaluators.ranking import history_mask  # noqa: E402
from jaxrec.methods import get_method  # noqa: E402
from jaxrec.train import loop, sharding as sh  # noqa: E402
from jaxrec.train.checkpoint import Checkpointer  # noqa: E402
from tests.train.helpers import get_config  # noqa: E402

STEPS = 4


def config(name, mesh, **train):
    c = get_config(name, "smoke")
    c.train.batch_size = 16
    c.train.num_steps = STEPS
    c.train.eval_every = STEPS          # one validation (and test) at the end
    c.train.log_every = 1
    c.eval.batch_size = 32
    c.eval.max_queries = 64
    c.mesh.data, c.mesh.model = mesh
    for k, v in train.items():
        c.train[k] = v
    return c


def run(name, mesh, workdir, ds, **train):
    c = config(name, mesh, **train)
    t = time.time()
    res = loop.train(get_method(c.method), build_task(c, ds), c, workdir, progress=False)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(l)["loss"] for l in f if '"split": "train"' in l]
    return res, {"losses": losses, "validation": res["validation"], "test": res["test"],
                 "traces": res["step_traces"], "seconds": time.time() - t}


def as_np(x):
    """float64 numpy of an array or a typed PRNG key (its key data)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x, np.float64)


def leaves(tree):
    return {sh.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def main(out_path, work):
    ds = prep.load("synthetic", preset="tiny")
    out = {"devices": jax.device_count()}

    # 1. Same losses and metrics on one device, data parallel and model sharded.
    runs = {}
    for name, meshes in (("sqn.py", [(1, 1), (8, 1), (2, 4)]),
                         ("supervised.py", [(1, 1), (1, 8)])):
        for mesh in meshes:
            key = f"{name}:{mesh[0]}x{mesh[1]}"
            res, runs[key] = run(name, mesh, os.path.join(work, key.replace(":", "_")), ds)
            if key == "sqn.py:8x1":
                saved_state = res["state"]
    out["runs"] = runs

    # 2. bf16 compute: every dot of the lowered SQN step carries the bf16 x bf16 -> f32
    # algorithm (XLA:CPU ignores it, so on CPU the numbers cannot show it).
    cb = config("sqn.py", (1, 1), compute_dtype="bfloat16")
    task = build_task(cb, ds)
    method = get_method("sqn")
    key = jax.random.split(jax.random.key(0))[0]
    state = method.init(key, task, cb)
    batch = {k: v[:16] for k, v in task.train.items()}
    out["bf16"] = {}
    for name, c in (("float32", config("sqn.py", (1, 1))), ("bfloat16", cb)):
        with sh.precision_context(c)():
            text = jax.jit(method.train_step).lower(state, batch, key, None).as_text()
        dots = [l for l in text.splitlines() if "stablehlo.dot_general" in l]
        out["bf16"][name] = {"dots": len(dots), "bf16_dots": sum(
            "lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32"
            in l for l in dots)}

    # 3. The checkpoint written on the (8, 1) mesh restores on (2, 4) and (1, 1).
    c81 = config("sqn.py", (8, 1))
    task = build_task(c81, ds)
    method = get_method("sqn")
    key = jax.random.split(jax.random.key(0))[0]
    ckpt = Checkpointer(os.path.join(work, "sqn.py_8x1"))
    step = ckpt.latest_step()
    saved = leaves(saved_state)
    restored = {}
    for mesh in ((2, 4), (1, 1)):
        if mesh == (1, 1):
            template = method.init(key, task, c81)
        else:
            m = sh.make_mesh(*mesh)
            template, _, _ = sh.init_sharded(lambda k: method.init(k, task, c81), key, m,
                                             sh.model_patterns(c81, method), task.num_items)
        state, meta = ckpt.restore(step, template)
        got = leaves(state)
        emb = "params/params/encoder/item_embed/embedding"
        restored[f"{mesh[0]}x{mesh[1]}"] = {
            "step": step, "meta_step": meta["step"],
            "max_abs_diff": max(float(np.max(np.abs(as_np(v) - as_np(saved[k]))))
                                for k, v in got.items()),
            "same_leaves": sorted(got) == sorted(saved),
            "embedding_devices": len(got[emb].sharding.device_set),
            "embedding_shard_shape": list(got[emb].addressable_shards[0].data.shape),
            "saved_embedding_devices": len(saved[emb].sharding.device_set),
        }
    ckpt.close()
    out["restore"] = restored

    # 4. Per-device memory of the item tables from the compiled step (abstract shapes, so
    # nothing is allocated): 1 device vs model=8.
    cs = config("supervised.py", (1, 8))
    task = build_task(cs, ds)
    method = get_method("supervised")
    ex = {k: jax.ShapeDtypeStruct((16,) + v.shape[1:], v.dtype)
          for k, v in task.example_batch().items()}
    abstract = jax.eval_shape(lambda k: method.init(k, task, cs), key)
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype)
    mem = {}
    for model in (1, 8):
        mesh = sh.make_mesh(1, model)
        shard, notes = sh.tree_shardings(abstract, mesh, sh.model_patterns(cs, method),
                                         task.num_items)
        repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        args = (jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                             abstract, shard),
                {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=repl) for k, v in ex.items()},
                jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=repl), None)
        compiled = jax.jit(method.train_step, donate_argnums=0, out_shardings=(shard, repl)
                           ).lower(*args).compile()
        ma = compiled.memory_analysis()
        mem[str(model)] = {"argument": int(ma.argument_size_in_bytes),
                           "temp": int(ma.temp_size_in_bytes)}
        if model == 8:
            mem["sharded_bytes"] = int(sum(np.prod(a.shape) * a.dtype.itemsize
                                           for a, s in zip(jax.tree.leaves(abstract),
                                                           jax.tree.leaves(shard))
                                           if s.spec != jax.sharding.PartitionSpec()))
            mem["sharded_leaves"] = len(notes)
            mem["table_bytes"] = int(np.prod(abstract.params["params"]["encoder"]["item_embed"]
                                             ["embedding"].shape) * 4)
            t = jax.ShapeDtypeStruct(abstract.params["params"]["encoder"]["item_embed"]
                                     ["embedding"].shape, jnp.float32,
                                     sharding=shard.params["params"]["encoder"]["item_embed"]
                                     ["embedding"])
            mem["table_per_device"] = int(jax.jit(lambda x: x * 2, out_shardings=t.sharding)
                                          .lower(t).compile().memory_analysis()
                                          .argument_size_in_bytes)
    out["memory"] = mem

    out["ranking_checks"] = ranking_checks()
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


def ranking_checks():
    """5. Sharded ranks and top-k equal the unsharded ones (ties, NaN, history, padding)."""
    rs = np.random.default_rng(0)
    mesh = sh.make_mesh(2, 4)
    checks = {}
    # (N, ties, id_shift or None = no history, mask_target_if_in_history); N = 83 does not
    # divide over model=4 (the padded path).
    cases = [(83, t, None, True) for t in M.TIES] + [
        (83, "reference", 1, True), (83, "pessimistic", 0, False),
        (80, "optimistic", 0, True), (80, "reference", 1, False)]
    ref = jax.jit(M.target_ranks, static_argnames=("mask_target_if_in_history", "ties"))
    for n, ties, shift, mask_t in cases:
        r = np.random.default_rng(n)
        scores = r.integers(0, 6, (16, n)).astype(np.float32)    # many ties
        scores[3, 5] = np.nan
        targets = r.integers(0, n, 16).astype(np.int32)
        targets[7] = n + 2                 # out of range: UNRANKED (jitted, not an error)
        hist = r.integers(0, n + 1, (16, 5)).astype(np.int32)
        hist[2, 0] = targets[2] + (shift or 0)                     # target in the history
        excl = None if shift is None else history_mask(jnp.asarray(hist), n, shift)
        want = ref(jnp.asarray(scores), jnp.asarray(targets), excl,
                   mask_target_if_in_history=mask_t, ties=ties)
        got = sh.sharded_target_ranks(jnp.asarray(scores), jnp.asarray(targets), mesh,
                                      None if shift is None else jnp.asarray(hist),
                                      shift or 0, mask_target_if_in_history=mask_t,
                                      ties=ties)
        checks[f"ranks n={n} {ties} shift={shift} mask={mask_t}"] = bool(
            np.array_equal(np.asarray(want), np.asarray(got)))
    for n in (80, 83):
        scores = rs.integers(0, 6, (16, n)).astype(np.float32)
        v0, i0 = jax.lax.top_k(jnp.asarray(scores), 10)
        v1, i1 = sh.sharded_top_k(jnp.asarray(scores), 10, mesh)
        checks[f"top_k n={n}"] = bool(np.array_equal(v0, v1) and np.array_equal(i0, i1))
    # An evaluator's eval_consts (an item tower over all N items): split along the item
    # axis over model=4, 20 of the 80 rows per device; item-less leaves replicated.
    tower = sh.jit_item_sharded(lambda x: {"items": jnp.tile(x[:, None], (1, 8)),
                                           "small": x[:3]}, mesh, 80)
    o = tower(jnp.arange(80.0))
    checks["eval_consts split"] = bool(
        o["items"].addressable_shards[0].data.shape == (20, 8)
        and o["small"].sharding.is_fully_replicated
        and np.array_equal(np.asarray(o["items"])[:, 3], np.arange(80.0)))
    return checks


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
