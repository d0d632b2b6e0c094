"""The training loop: one jitted step, periodic evaluation, model selection, checkpoints.

It knows the method contract only (:mod:`jaxrec.methods`; README, "Adding a method: the contract") and imports no
method; which method, task and evaluators run is decided by the caller
(:func:`jaxrec.experiment.run`, ``jaxrec.main``):

- the step is ``jax.jit(method.train_step, donate_argnums=0)``, compiled once; the frozen
  ``consts`` (``method.make_consts``) are a separate, non-donated argument that is never
  checkpointed and is rebuilt on resume;
- the step's RNG is ``fold_in(root, step)`` with ``init_key, root = split(key(seed))``
  (``init`` gets ``init_key``), and batch i is a pure function of
  (seed, i), so a run resumed from a checkpoint repeats exactly what an uninterrupted run
  would have done;
- every ``eval_every`` steps (or ``eval_every_epochs`` epochs) the evaluators of
  ``config.evals`` run on the validation split; when the selection metric improves they
  run on the test split too, so the reported test numbers are those at the best
  validation step (the papers' released scripts never read their test split; rl.md §9).
  The best value of every validation metric over all evaluations (the reference scripts'
  way of reporting) is kept as well, each with its step;
- checkpoints (orbax) hold the method state and the bookkeeping; metrics go to
  ``<workdir>/metrics.jsonl`` and to the console; ``<workdir>/results.json`` at the end;
- a non-finite loss stops the run with an error naming the step range, without saving,
  so the last checkpoint on disk is the last good one;
- ``config.mesh`` (:mod:`jaxrec.train.sharding`): with more than one device the state is
  created in its shards (item tables and heads split over ``model``, the rest
  replicated), batches are split over ``data`` (each process loads its own rows), the
  step is jitted with those in/out shardings, and only process 0 writes logs and
  results. ``data=1, model=1`` (the default) is the single-device path, unchanged;
- ``config.train.compute_dtype='bfloat16'``: matmuls in bf16 with f32 accumulation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from types import ModuleType
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrec import evaluators as ev_lib
from jaxrec.runs import schedule  # noqa: F401  (loop.schedule: part of the trainer's API)
from jaxrec.train import sharding as sh
from jaxrec.train.checkpoint import Checkpointer, flatten_dotted
from jaxrec.train.data import BatchSource

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
RESULT_NOTES = {
    "validation": "validation metrics at best_step, the step with the best select_metric",
    "test": "test metrics at best_step (model selection on validation)",
    "best_validation": "the best value of every validation metric over all evaluations, "
                       "each at its own step (how the reference scripts report)",
}


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def _to_py(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


def json_safe(obj: Any) -> Any:
    """Non-finite floats -> None, so results.json and metrics.jsonl are strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _log_jsonl(path: str, record: dict) -> None:
    if not sh.is_writer():              # several hosts: process 0 writes
        return
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(record)) + "\n")


# Fields that may change when a run is resumed: its length and its logging.
RESUMABLE_CHANGES = ("train.num_epochs", "train.num_steps", "train.log_every",
                     "train.max_checkpoints", "train.allow_config_change")


def config_changes(saved: dict, new: dict) -> list[str]:
    """``'field: saved -> new'`` for every field whose value differs between two config
    JSON documents (added and removed fields included), except :data:`RESUMABLE_CHANGES`."""
    a, b = flatten_dotted(saved), flatten_dotted(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k in RESUMABLE_CHANGES or a.get(k, "<absent>") == b.get(k, "<absent>"):
            continue
        out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
    return out


def _record_config(config, workdir: str, writer: bool) -> None:
    """Writes ``config.json`` for a new run. A resumed run keeps the original one: resuming
    with other hyperparameters is refused, naming the fields, unless
    ``config.train.allow_config_change`` (then the new config goes to
    ``config.resumed-<step>.json`` and the changes are printed)."""
    from jaxrec.runs import finished_steps
    path = os.path.join(workdir, "config.json")
    new_json = config.to_json_best_effort(indent=2)
    steps = finished_steps(workdir)
    if steps and os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable ({e}); it records the config of the run "
                             f"whose checkpoints are in {workdir}/checkpoints. Restore it, or "
                             "use a new --workdir") from None
        changes = config_changes(saved, json.loads(new_json))
        if changes and not config.train.get("allow_config_change", False):
            raise ValueError(
                f"--workdir={workdir} holds a run (checkpoint at step {steps[-1]}) with other "
                f"hyperparameters: {'; '.join(changes)}. Resume with the original config "
                f"(recorded in {path}), use a new --workdir, or set "
                "--config.train.allow_config_change=True to resume anyway")
        if changes and writer:
            print(f"resuming with a changed config ({'; '.join(changes)}); the original "
                  f"stays in {path}", file=sys.stderr)
            with open(os.path.join(workdir, f"config.resumed-{steps[-1]}.json"), "w") as f:
                f.write(new_json)
        return
    if writer:
        with open(path, "w") as f:
            f.write(new_json)


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Keeps the records of ``path`` with ``step <= last_step`` (atomic rewrite)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = [ln for ln in lines if int(json.loads(ln).get("step", 0)) <= last_step]
    if len(keep) == len(lines):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _write_runtime(workdir: str, timing: dict, t_end: float) -> None:
    """``runtime.json``: the device, its peak memory (where the backend reports it, e.g.
    GPUs) and the mean wall time of a step after the first (which includes compilation).
    Kept out of results.json, which a resumed run reproduces exactly."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    n = timing["steps_after_first"]
    out = {"platform": dev.platform, "device_kind": dev.device_kind,
           "num_devices": jax.device_count(),
           "peak_device_bytes": (stats or {}).get("peak_bytes_in_use"),
           "steps_timed": n,
           "mean_step_s": ((t_end - timing["first_step_done"]) / n
                           if n and timing["first_step_done"] else None)}
    with open(os.path.join(workdir, "runtime.json"), "w") as f:
        json.dump(out, f, indent=2)


def jit_step(method: ModuleType, *, traces: Optional[list] = None, mesh=None,
             state_sharding: Any = None, consts_sharding: Any = None):
    """The trainer's compiled step: ``jax.jit(method.train_step)`` with the input state
    donated (its buffers are reused for the new state), and on a mesh with explicit in/out
    shardings (the state comes back laid out as it went in, so the step compiles once; GSPMD
    adds the gradient all-reduce over 'data'; the batch is split over 'data').

    Benchmarks lower this same function from abstract shapes
    (``jit_step(m).lower(state, batch, rng, consts).compile()``), so what they report is the
    step a run executes. ``traces[0]`` is incremented at every trace (= compilation)."""
    def train_step(*args):
        if traces is not None:
            traces[0] += 1
        return method.train_step(*args)

    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    repl = NamedSharding(mesh, P())
    batch_sh = NamedSharding(mesh, P("data"))
    return jax.jit(train_step, donate_argnums=0,
                   in_shardings=(state_sharding, batch_sh, repl, consts_sharding),
                   out_shardings=(state_sharding, repl))


class Bookkeeping:
    """Model selection and best-per-metric tracking, saved with every checkpoint.

    Attributes (all JSON-able, restored on resume):
      step: steps done.
      best_step / best_value: the evaluation step with the best ``select`` value.
      validation / test: all metrics at ``best_step``.
      best_validation: metric -> {'value', 'step'}: the best of each validation metric
        over all evaluations (lower is better where the evaluator says so).
      stale: evaluations since ``select`` last improved (early stopping,
        ``config.train.patience`` > 0).
    """

    def __init__(self, select: str, lower: Any = None, record: Optional[dict] = None):
        self.select = select
        self.lower = lower or (lambda metric: False)
        self.record = record or {"step": 0, "best_step": -1, "best_value": None,
                                 "validation": {}, "test": {}, "best_validation": {},
                                 "stale": 0}

    def _better(self, metric: str, new: float, old: Optional[float]) -> bool:
        if new is None or not np.isfinite(new):
            return False
        if old is None:
            return True
        return new < old if self.lower(metric) else new > old

    def update(self, step: int, val: dict) -> bool:
        """Records a validation result; True when ``select`` improved (run the test)."""
        r = self.record
        val = json_safe(val)     # as it will be after a checkpoint round trip
        for k, v in val.items():
            if k.endswith("/count") or not isinstance(v, (int, float)) or v is None:
                continue
            old = r["best_validation"].get(k, {}).get("value")
            if self._better(k, float(v), old):
                r["best_validation"][k] = {"value": float(v), "step": step}
        if self.select not in val:
            raise KeyError(f"config.eval.select_metric={self.select!r} is not among the "
                           f"validation metrics: {sorted(val)}")
        value = val[self.select]
        value = float("nan") if value is None else float(value)
        first = r["best_step"] < 0
        if first or self._better(self.select, value, r["best_value"]):
            r.update(best_step=step, validation=val,
                     best_value=value if np.isfinite(value) else None)
            return True
        return False


def train(method: ModuleType, task, config, workdir: str, *,
          stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Trains ``method`` on ``task``; returns the results dict.

    Args:
      method: a method module (the contract of :mod:`jaxrec.methods`).
      task: a :class:`jaxrec.data.tasks.Task`.
      config: the run's ConfigDict (``seed``, ``train``, ``eval``, ``evals``; the method
        reads its own sections in ``init``).
      workdir: run directory; rerunning with the same one resumes from its checkpoint.
      stop_after: simulate a kill: return right after the checkpoint at this step.
      progress: show a tqdm progress bar.
    Returns:
      {'best_step', 'validation', 'test', 'best_validation', 'num_steps', 'steps_done',
       'stats', 'notes', ..., 'state', 'step_traces'} — everything but 'state' and
      'step_traces' (how many times the step was traced, i.e. compiled) is also in
      results.json.
    """
    os.makedirs(workdir, exist_ok=True)
    writer = sh.is_writer()
    _record_config(config, workdir, writer)
    mesh = sh.mesh_from_config(config)        # None: one device, no sharding at all
    precision = sh.precision_context(config)

    plan = schedule(config, task)
    num_steps, eval_every = plan["num_steps"], plan["eval_every"]
    log_every, ckpt_every = plan["log_every"], plan["checkpoint_every"]
    source = BatchSource(task.train, task.batch_size, seed=int(config.seed))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    evaluators = ev_lib.make_evaluators(method, task, config)
    select = str(config.eval.get("select_metric", "") or "")
    if not select:
        raise ValueError("config.eval.select_metric is empty: name the validation metric "
                         "that selects the model, e.g. 'purchase/ndcg@10'")
    known = ev_lib.metric_names(evaluators, task)
    if known is not None and select not in known:
        raise ValueError(f"config.eval.select_metric={select!r} is not a metric of the "
                         f"evaluators in config.evals; they report: {', '.join(sorted(known))}")

    # The PRNG behind init, dropout and sampling: threefry (default) gives the same numbers
    # on every backend; 'rbg' / 'unsafe_rbg' are much cheaper on CPU, where dropout masks
    # can cost a third of a small model's step, at the price of backend-dependent streams.
    # Not bit-compatible with threefry under vmap either (SQN's vmapped passes), so a run
    # records its choice and a resume must use the same.
    impl = str(config.train.get("prng_impl", "threefry2x32") or "threefry2x32")
    if impl not in PRNG_IMPLS:
        raise ValueError(f"config.train.prng_impl={impl!r}; accepted: {', '.join(PRNG_IMPLS)}")
    init_key, root = jax.random.split(jax.random.key(int(config.seed), impl=impl))
    # Frozen arrays of the method (None without make_consts): rebuilt here on every start,
    # never checkpointed.
    make = getattr(method, "make_consts", None)
    consts = make(config, task) if make is not None else None
    if mesh is None:
        state = method.init(init_key, task, config)
    else:
        sh.check_batch(task.batch_size, mesh)
        patterns = sh.model_patterns(config, method)
        state, state_sh, notes = sh.init_sharded(
            lambda k: method.init(k, task, config), init_key, mesh, patterns, task.num_items)
        consts_sh, c_notes = sh.tree_shardings(consts, mesh, patterns, task.num_items,
                                               prefix="consts/")
        consts = jax.device_put(consts, consts_sh)
        if writer:
            print(sh.describe(mesh, {**notes, **c_notes}))
    ckpt = Checkpointer(workdir, max_to_keep=int(config.train.get("max_checkpoints", 2)))
    book = Bookkeeping(select, lambda m: ev_lib.lower_is_better(evaluators, m))
    book.record["prng_impl"] = impl
    latest = ckpt.latest_step()
    if latest is not None:
        state, record = ckpt.restore(latest, state)
        saved_impl = record.get("prng_impl", "threefry2x32")
        if saved_impl != impl:
            raise ValueError(f"config.train.prng_impl={impl!r}, but the checkpoint in "
                             f"{ckpt.directory} was written with {saved_impl!r}: resuming "
                             f"would switch random streams mid-run; use {saved_impl!r}")
        book.record.update(record)
        logging.info("resumed from %s at step %d", ckpt.directory, latest)
        if writer:
            print(f"Resuming from checkpoint at step {latest} in {ckpt.directory}")
    if writer:
        # A kill between two checkpoints (or before the first one finished) leaves log lines
        # of steps after the last checkpoint; those steps are replayed now, so drop them (no
        # duplicate lines after the replay).
        _truncate_jsonl(metrics_path, latest or 0)

    # The step donates its input state; methods may legitimately alias one array in two
    # leaves (e.g. shared zeros), which donation forbids, so give every leaf its own buffer.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    traces = [0]      # how often the step was traced (= compiled); 1 in a healthy run
    if mesh is None:
        step_fn = jit_step(method, traces=traces)
        get_batch = source.__getitem__
    else:
        batch_sh = NamedSharding(mesh, P("data"))
        step_fn = jit_step(method, traces=traces, mesh=mesh, state_sharding=state_sh,
                           consts_sharding=consts_sh)
        rows = sh.local_rows(batch_sh, task.batch_size)

        def get_batch(i):       # this process's rows of batch i, as one global batch
            return sh.global_batch(source.rows(i, rows), batch_sh, task.batch_size)
    progress = progress and writer          # several hosts: one progress bar, one log
    if writer:
        print(f"{task.name}: {task.num_train} training examples, {task.steps_per_epoch} "
              f"steps per epoch (batch {task.batch_size}); {num_steps} steps, evaluation "
              f"every {eval_every}")

    patience = int(config.train.get("patience", 0) or 0)
    t_start = time.time()

    def run_eval(state, step: int) -> bool:
        """Evaluates; returns True when early stopping says to stop."""
        with precision():
            val = ev_lib.run_all(evaluators, state, consts, "validation")
        _log_jsonl(metrics_path, {"step": step, "split": "validation", "time": time.time(),
                                  "elapsed_s": time.time() - t_start, **val})
        if book.update(step, val):
            with precision():
                test = ev_lib.run_all(evaluators, state, consts, "test")
            _log_jsonl(metrics_path, {"step": step, "split": "test", **test})
            book.record["test"] = json_safe(test)
            book.record["stale"] = 0
        else:
            book.record["stale"] = book.record.get("stale", 0) + 1
        r = book.record
        best = "nan" if r["best_value"] is None else f"{r['best_value']:.4f}"
        if writer:
            print(f"[step {step}] validation {select} = {float(val.get(select, np.nan)):.4f} "
                  f"(best {best} at step {r['best_step']})")
        return patience > 0 and r["stale"] >= patience

    start = int(book.record["step"])
    if book.record.get("early_stopped"):
        num_steps = start                    # a finished, early-stopped run stays finished
    bar = None
    if progress and start < num_steps:
        from tqdm import tqdm
        # Redraw rarely when stderr is a log file rather than a terminal.
        bar = tqdm(total=num_steps, initial=start, desc=f"train {config.method}",
                   unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 30.0)
    window = []
    t0 = time.time()
    # Test hook: die abruptly (like SIGKILL: no cleanup, orbax's async save may be cut)
    # right after this step, to test resuming from a kill between two checkpoints.
    kill_after = int(os.environ.get("JAXREC_DEBUG_KILL_AFTER_STEP", "0") or 0)
    timing = {"first_step_done": None, "steps_after_first": 0}
    for step in range(start, num_steps):
        batch = get_batch(step)
        with precision():
            state, m = step_fn(state, batch, jax.random.fold_in(root, step), consts)
        window.append(m)
        done = step + 1
        if timing["first_step_done"] is None:       # compilation ends with the first step
            jax.block_until_ready(m)
            timing["first_step_done"] = time.time()
        else:
            timing["steps_after_first"] += 1
        at_log = done % log_every == 0 or done == num_steps
        at_eval = done % eval_every == 0 or done == num_steps
        at_ckpt = done % ckpt_every == 0 or done == num_steps or done == stop_after
        if at_log or at_eval or at_ckpt:
            stacked = jax.device_get(window)
            window = []
            losses = np.asarray([w["loss"] for w in stacked], np.float64)
            if not np.all(np.isfinite(losses)):
                bad = done - len(losses) + int(np.argmin(np.isfinite(losses)))
                last = ckpt.latest_step()
                ckpt.close()
                if bar:
                    bar.close()
                raise NonFiniteLossError(
                    f"non-finite training loss at step {bad + 1} (of {num_steps}); training "
                    f"stopped. Last good checkpoint: "
                    f"{'step ' + str(last) if last is not None else 'none'} in "
                    f"{ckpt.directory}. Lower config.optim.lr or enable "
                    f"config.optim.clip_norm.")
            rec = {k: float(np.mean([_to_py(w[k]) for w in stacked])) for k in stacked[0]}
            rec.update(step=done, split="train",
                       steps_per_sec=len(stacked) / max(time.time() - t0, 1e-9))
            t0 = time.time()
            _log_jsonl(metrics_path, rec)
            if bar:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
        stop_early = run_eval(state, done) if at_eval else False
        if stop_early:
            print(f"early stop: no improvement of {select} in {patience} evaluations")
            num_steps = done                 # the run is complete at this step
            book.record["early_stopped"] = True
            at_ckpt = True
        if at_ckpt:
            book.record["step"] = done
            ckpt.save(done, state, json_safe(book.record))
        if bar:
            bar.update(1)
        if kill_after and done == kill_after:
            ckpt.wait()          # the last checkpoint finished long ago in a real kill
            os._exit(137)
        if (stop_after is not None and done >= stop_after) or stop_early:
            break
    jax.block_until_ready(state)
    t_end = time.time()
    if bar:
        bar.close()
    ckpt.close()
    if writer:
        _write_runtime(workdir, timing, t_end)
    r = book.record
    results = {"method": config.method, "label": str(config.get("label", config.method)),
               "dataset": task.name, "num_steps": num_steps, "steps_per_epoch": task.steps_per_epoch,
               "steps_done": int(r["step"]), "best_step": r["best_step"],
               "select_metric": select, "validation": r["validation"], "test": r["test"],
               "best_validation": r["best_validation"], "notes": RESULT_NOTES,
               "stats": task.stats}
    if writer and (stop_after is None or r["step"] >= num_steps):
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(json_safe(results), f, indent=2)
    results["state"] = state
    results["step_traces"] = traces[0]
    return results
