"""The training loop: one jitted step, periodic validation, model selection, checkpoints.

It knows the method contract only (``init`` / ``train_step`` / ``predict``; DESIGN.md):

- the step is ``jax.jit(method.train_step, donate_argnums=0)``, compiled once;
- the step's RNG is ``fold_in(key(seed), step)`` and batch i is a pure function of
  (seed, i), so a run resumed from a checkpoint repeats exactly what an uninterrupted run
  would have done;
- every ``eval_every`` steps the validation set is ranked; when the selection metric
  improves, the test set is ranked too, so the reported test numbers are those at the best
  validation step (the papers' released scripts never read their test split; rl.md §9);
- checkpoints (orbax) hold the method state and the bookkeeping; metrics go to
  ``<workdir>/metrics.jsonl`` and to the console; ``<workdir>/results.json`` at the end;
- a non-finite loss stops the run with an error naming the step range, without saving,
  so the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.methods import get_method
from jaxrec.train import evaluate as ev_lib
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.data import BatchSource, TaskData, build_task


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def _to_py(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()


def _log_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def resolve_num_steps(config, task: TaskData, batch_size: int) -> int:
    steps = int(config.train.get("num_steps", 0) or 0)
    if steps <= 0:
        steps = int(config.train.num_epochs) * max(task.num_train // batch_size, 1)
    return steps


def train(config, workdir: str, task: Optional[TaskData] = None,
          stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Trains ``config.method`` on ``config.dataset``; returns the results dict.

    Args:
      config: an ml_collections ConfigDict (see ``configs/``).
      workdir: run directory; rerunning with the same one resumes from its checkpoint.
      task: prebuilt data (tests reuse one); built from the config when None.
      stop_after: simulate a kill: return right after the checkpoint at this step.
      progress: show a tqdm progress bar.
    Returns:
      {'best_step', 'validation': {...}, 'test': {...}, 'num_steps', 'stats', ...}.
    """
    os.makedirs(workdir, exist_ok=True)
    method = get_method(config.method)
    task = task or build_task(config)
    with config.unlocked():
        config.data.num_items = task.num_items
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))

    tc = config.train
    bs = int(tc.batch_size)
    source = BatchSource(task.train, bs, seed=int(config.seed))
    num_steps = resolve_num_steps(config, task, bs)
    eval_every = int(tc.get("eval_every", 0) or num_steps)
    log_every = max(1, int(tc.get("log_every", 100)))
    ckpt_every = int(tc.get("checkpoint_every", 0) or eval_every)
    ks = tuple(config.eval.get("ks", (5, 10, 20)))
    select = config.eval.get("select_metric", "purchase/ndcg@10"
                             if task.validation.protocol == "session" else "all/ndcg@10")
    eval_bs = int(config.eval.get("batch_size", 256))
    rewards = (float(config.rl.get("r_click", 0.2)), float(config.rl.get("r_buy", 1.0))) \
        if "rl" in config else (0.2, 1.0)
    metrics_path = os.path.join(workdir, "metrics.jsonl")

    init_key, root = jax.random.split(jax.random.key(int(config.seed)))
    state = method.init(init_key, source[0], config)
    ckpt = Checkpointer(workdir, max_to_keep=int(tc.get("max_checkpoints", 2)))
    book = {"step": 0, "best_step": -1, "best_value": -float("inf"), "validation": {},
            "test": {}}
    latest = ckpt.latest_step()
    if latest is not None:
        state, book = ckpt.restore(latest, state)
        logging.info("resumed from %s at step %d", ckpt.directory, latest)
        print(f"Resuming from checkpoint at step {latest} in {ckpt.directory}")

    # The step donates its input state; methods may legitimately alias one array in two
    # leaves (e.g. shared zeros), which donation forbids, so give every leaf its own buffer.
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    step_fn = jax.jit(method.train_step, donate_argnums=0)
    rank_fn = ev_lib.make_rank_fn(
        method.predict, task.validation.protocol, task.num_items,
        bool(config.eval.get("mask_target_if_in_history", True)))

    def run_eval(state, step: int) -> None:
        val = ev_lib.evaluate(state, task.validation, rank_fn, eval_bs, ks, rewards)
        _log_jsonl(metrics_path, {"step": step, "split": "validation", **val})
        value = val.get(select)
        if value is None:
            raise KeyError(f"config.eval.select_metric={select!r} is not among the "
                           f"validation metrics: {sorted(val)}")
        if not np.isfinite(value):      # e.g. no purchase among the validation queries
            value = -float("inf")
        if book["best_step"] < 0 or value > book["best_value"]:
            test = ev_lib.evaluate(state, task.test, rank_fn, eval_bs, ks, rewards)
            _log_jsonl(metrics_path, {"step": step, "split": "test", **test})
            book.update(best_step=step, best_value=value, validation=val, test=test)
        print(f"[step {step}] validation {select} = {value:.4f} "
              f"(best {book['best_value']:.4f} at step {book['best_step']})")

    start = int(book["step"])
    bar = None
    if progress and start < num_steps:
        from tqdm import tqdm
        # Redraw rarely when stderr is a log file rather than a terminal.
        bar = tqdm(total=num_steps, initial=start, desc=f"train {config.method}",
                   unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 30.0)
    window = []
    t0 = time.time()
    for step in range(start, num_steps):
        batch = source[step]
        state, m = step_fn(state, batch, jax.random.fold_in(root, step))
        window.append(m)
        done = step + 1
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
        if at_eval:
            run_eval(state, done)
        if at_ckpt:
            book["step"] = done
            ckpt.save(done, state, book)
        if bar:
            bar.update(1)
        if stop_after is not None and done >= stop_after:
            break
    if bar:
        bar.close()
    ckpt.close()
    results = {"method": config.method, "dataset": config.dataset.name,
               "encoder": config.model.get("encoder", None), "num_steps": num_steps,
               "steps_done": int(book["step"]), "best_step": book["best_step"],
               "select_metric": select, "validation": book["validation"],
               "test": book["test"], "stats": task.stats}
    if stop_after is None or book["step"] >= num_steps:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    results["state"] = state
    return results
