"""Training and evaluation throughput of the supervised baselines and SQN.

Measures, side by side in one run, training steps/s for each encoder (GRU4Rec, Caser,
NextItNet, SASRec) with the supervised loss and with SQN, at batch 256 over a catalogue of
70,852 items (RetailRocket's size, rl.md §1.5), and full-ranking evaluation queries/s over
the same catalogue. Inputs are random replay rows of the papers' shape (state length 10,
right padding); the numbers are the baseline that later work must beat.

    python benchmarks/throughput.py                     # all encoders, both methods
    python benchmarks/throughput.py --encoders=sasrec --steps=50 --num_items=26702
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxrec import config_util
from jaxrec.data.events import ItemInfo
from jaxrec.data.tasks import SESSION_GROUPS, EvalSet, Task
from jaxrec.evaluators import options_for
from jaxrec.evaluators.ranking import RankingEvaluator
from jaxrec.methods import get_method

FLAGS = flags.FLAGS
flags.DEFINE_list("encoders", list(config_util.ENCODERS), "Encoders to measure.")
flags.DEFINE_list("methods", ["supervised", "sqn"], "Methods to measure.")
flags.DEFINE_integer("batch", 256, "Training batch size.")
flags.DEFINE_integer("num_items", 70_852, "Catalogue size N.")
flags.DEFINE_integer("steps", 20, "Timed training steps (after one warm-up step).")
flags.DEFINE_integer("eval_batch", 256, "Evaluation batch size.")
flags.DEFINE_integer("eval_batches", 10, "Timed evaluation batches.")


def random_batch(rng: np.random.Generator, b: int, n: int, L: int = 10) -> dict:
    lens = rng.integers(1, L + 1, size=b)
    state = rng.integers(0, n, size=(b, L))
    state[np.arange(L)[None, :] >= lens[:, None]] = n          # right padding with N
    nxt = np.concatenate([state[:, 1:], rng.integers(0, n, size=(b, 1))], 1)
    return {"state": state.astype(np.int32), "len_state": lens.astype(np.int32),
            "action": rng.integers(0, n, size=b).astype(np.int32),
            "is_buy": (rng.random(b) < 0.05).astype(np.int8),
            "next_state": nxt.astype(np.int32),
            "len_next_state": np.minimum(lens + 1, L).astype(np.int32),
            "is_done": rng.random(b) < 0.1,
            "target": rng.integers(0, n, size=b).astype(np.int32)}


def random_task(rng: np.random.Generator, n: int, batch: int, num_queries: int) -> Task:
    """A task of random replay rows and session-protocol queries over N items."""
    train = random_batch(rng, 4 * batch, n)
    q = random_batch(rng, num_queries, n)
    ev = EvalSet({"state": q["state"], "len_state": q["len_state"], "target": q["target"],
                  "group": q["is_buy"].astype(np.int32)}, "session", SESSION_GROUPS)
    return Task(name="random", kind="replay", num_items=n, batch_size=batch, train=train,
                validation=ev, test=ev, item_freq=np.ones(n, np.int64), items=ItemInfo(),
                stats={}, extras={})


def measure(method_name: str, encoder: str, rng: np.random.Generator) -> dict:
    config = config_util.base_config(method_name, "retailrocket", encoder, smoke=False)
    config.eval.batch_size = FLAGS.eval_batch
    method = get_method(method_name)
    task = random_task(rng, FLAGS.num_items, FLAGS.batch, FLAGS.eval_batch * FLAGS.eval_batches)
    batches = [{k: v[i * FLAGS.batch:(i + 1) * FLAGS.batch] for k, v in task.train.items()}
               for i in range(4)]
    state = method.init(jax.random.key(0), task, config)
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
    step = jax.jit(method.train_step, donate_argnums=0)
    t = time.perf_counter()
    state, m = step(state, batches[0], jax.random.key(0), None)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(FLAGS.steps):
        state, m = step(state, batches[i % 4], jax.random.key(i), None)
    jax.block_until_ready(m)
    train_sps = FLAGS.steps / (time.perf_counter() - t)
    evaluator = RankingEvaluator(method, task, config, options_for(config, "ranking"))
    evaluator.run(state, None, "validation")              # compile
    t = time.perf_counter()
    evaluator.run(state, None, "validation")
    eval_qps = task.validation.size / (time.perf_counter() - t)
    return {"method": method_name, "encoder": encoder, "train steps/s": train_sps,
            "train examples/s": train_sps * FLAGS.batch, "eval queries/s": eval_qps,
            "compile s": compile_s}


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}, batch {FLAGS.batch}, "
          f"N = {FLAGS.num_items:,}, {FLAGS.steps} timed steps")
    rows = []
    for enc in FLAGS.encoders:
        for meth in FLAGS.methods:
            rows.append(measure(meth, enc, rng))
            r = rows[-1]
            print(f"  measured {meth}/{enc}: {r['train steps/s']:.2f} steps/s", flush=True)
    cols = ["method", "encoder", "train steps/s", "train examples/s", "eval queries/s",
            "compile s"]
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) else str(v)
    width = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print("\n" + "  ".join(c.rjust(w) for c, w in zip(cols, width)))
    print("  ".join("-" * w for w in width))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(cols, width)))
    base = {r["encoder"]: r for r in rows if r["method"] == "supervised"}
    for r in rows:
        if r["method"] == "sqn" and r["encoder"] in base:
            ratio = base[r["encoder"]]["train steps/s"] / r["train steps/s"]
            print(f"SQN/{r['encoder']} step costs {ratio:.2f}x a supervised step "
                  f"(3 forward passes and 2 heads vs 1 and 1)")


if __name__ == "__main__":
    app.run(main)
