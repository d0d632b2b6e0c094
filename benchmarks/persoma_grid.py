"""PERSOMA grid: resampler x sampling x history length n x regime, against text prompting and a
UEM-style baseline, on genre-set F1 (spec llm.md §1.5).

PERSOMA (Hebert et al., arXiv 2408.00960) resamples the embeddings of a user's history into soft
tokens for a frozen (or LoRA-tuned) LLM. The spec's expected shape (§1.5): text prompting gets
worse once the history exceeds its context, and the Perceiver's cost stays flat in n (its k is
fixed). This script trains every cell with ``configs/persoma.py`` on one task per (sampling, n)
(so every row of a cell sees the same examples, decoder and item embeddings) and reports, per row:

* test genre-set F1 / precision / recall (macro over users) at the end of training;
* decoder input tokens per query (soft tokens + real prompt tokens) and the forward pass's
  compiled FLOPs per example (XLA cost analysis of one batch) — the cost side of the claim;
* two training-free references per (sampling, n): the 3 most frequent genres of the user's
  sampled history, and the 3 most frequent target genres of the training users.

CPU-sized [inferred]: the 2-layer d=64 decoder pretrained on the item texts (cached), a
subset of users (``--max_train/--max_eval``), ``--steps`` AdamW steps per row, MiniLM item
embeddings. Timings are printed, not written, so a rerun reproduces the file.

    .venv/bin/python benchmarks/persoma_grid.py --out=results/persoma_grid.md
    .venv/bin/python benchmarks/persoma_grid.py --dataset=ml100k --resamplers=mlp,perceiver \
        --regimes=frozen --samplings=recent --baselines=text --text_regimes=lora --out=results/persoma_ml100k.md

The first is 48 rows, about 22 CPU-minutes (54 min wall on 2 shared cores; the MLP/Transformer
rows at n = 200 are most of it); the second 9 rows, 4 CPU-minutes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import report
from jaxrec import config_util, experiment
from jaxrec.data import tasks
from jaxrec.evaluators.genres import genre_scores
from jaxrec.methods import persoma
from jaxrec.train import memory

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | ml100k.")
flags.DEFINE_list("resamplers", ["mlp", "transformer", "perceiver"], "PERSOMA resamplers.")
flags.DEFINE_list("samplings", ["recent", "random"], "First-stage sampling strategies.")
flags.DEFINE_list("ns", ["10", "50", "200"], "History lengths n.")
flags.DEFINE_list("regimes", ["frozen", "lora", "full"], "Training regimes of the PERSOMA rows.")
flags.DEFINE_list("baselines", ["text", "uem"], "Baselines (text: --text_regimes; uem: the first regime).")
flags.DEFINE_list("text_regimes", ["lora", "full"], "Regimes of the text-prompting rows (frozen trains nothing).")
flags.DEFINE_list("all_regimes_for", ["recent"], "Samplings whose rows run every regime; the other "
                  "samplings run the first regime only (text prompting: its first trainable one), "
                  "to keep the grid within its CPU budget.")
flags.DEFINE_integer("steps", 150, "Training steps per row.")
flags.DEFINE_integer("context", 96, "Text prompting's history budget in tokens.")
flags.DEFINE_string("encoder", "minilm", "Item encoder: minilm | hash.")
flags.DEFINE_integer("max_train", 1200, "Training examples kept (0 = all).")
flags.DEFINE_integer("max_eval", 150, "Validation / test users kept (0 = all).")
flags.DEFINE_integer("seed", 0, "Training seed.")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Write the table as Markdown to this file (rewritten after every row).")


def config_for(variant: str, resampler: str, sampling: str, n: int, regime: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_util.load_config_file(
        os.path.join(root, "configs", "persoma.py"),
        f"variant={variant},resampler={resampler},sampling={sampling},n={n},regime={regime},"
        f"dataset={FLAGS.dataset},encoder={FLAGS.encoder},context={FLAGS.context},steps={FLAGS.steps},"
        f"seed={FLAGS.seed}")
    c.data.max_train_examples = FLAGS.max_train
    c.data.max_validation_examples = FLAGS.max_eval
    c.data.max_test_examples = FLAGS.max_eval
    return c


def references(task) -> dict:
    """Training-free F1 on the test users: top-3 genres of the sampled history; the 3 most
    frequent training targets."""
    ig = task.extras["item_genres"]
    te = task.test.arrays
    golds = [set(np.nonzero(r)[0].tolist()) for r in te["target_genres"]]
    hist = []
    for items, m in zip(te["hist"], te["hist_mask"]):
        counts = ig[items[m > 0]].sum(0)
        order = np.lexsort((np.arange(len(counts)), -counts))
        hist.append({int(g) for g in order[:3] if counts[g] > 0})
    pop = Counter(int(g) for r in task.train["target_genres"] for g in np.nonzero(r)[0])
    top = {g for g, _ in pop.most_common(3)}
    return {"history top-3": genre_scores(hist, golds)["f1"], "popular top-3": genre_scores([top] * len(golds), golds)["f1"]}


def forward_flops(config, task) -> float:
    """Compiled FLOPs of the forward pass (loss) per example, one batch of the training shape."""
    state = persoma.init(jax.random.key(0), task, config)
    consts = persoma.make_consts(config, task)
    batch = {k: jnp.asarray(v[:task.batch_size]) for k, v in task.train.items()}

    def fwd(params, batch, consts):
        variables = {"params": persoma.freeze.merge(params, consts["frozen"])}
        logits = state.model.apply(variables, *persoma._inputs(batch, consts), batch["target_ids"],
                                   batch["target_mask"])
        return persoma.target_loss(logits, batch["target_ids"], batch["target_mask"])[0]

    compiled = jax.jit(fwd).lower(state.params, batch, consts).compile()
    return memory.compiled_cost(compiled).flops / task.batch_size


def render(rows: list, refs: dict, total: int) -> str:
    head = (f"{'variant':<22} {'sampling':<8} {'n':>4} {'regime':<7} {'F1':>6} {'P':>6} {'R':>6} "
            f"{'in tokens':>9} {'MFLOP/ex':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<22} {r['sampling']:<8} {r['n']:>4} {r['regime']:<7} {r['f1']:>6.3f} "
                     f"{r['precision']:>6.3f} {r['recall']:>6.3f} {r['tokens']:>9.1f} {r['mflops']:>9.1f}")
    lines += ["", "Training-free references (test F1):"]
    for (s, n), v in sorted(refs.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        lines.append(f"  {s:<8} n={n:>4}: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items()))
    if len(rows) < total:
        lines += ["", f"(partial: {len(rows)} of {total} rows)"]
    return "\n".join(lines)


def plan() -> list:
    out = []
    for s in FLAGS.samplings:
        regimes = list(FLAGS.regimes) if s in FLAGS.all_regimes_for else list(FLAGS.regimes[:1])
        text_regimes = list(FLAGS.text_regimes)
        if s not in FLAGS.all_regimes_for:
            text_regimes = text_regimes[:1]
        for n in (int(x) for x in FLAGS.ns):
            rows = [("persoma", r, reg) for r in FLAGS.resamplers for reg in regimes]
            if "uem" in FLAGS.baselines and s in FLAGS.all_regimes_for:
                rows += [("uem", "pooled", FLAGS.regimes[0])]
            if "text" in FLAGS.baselines:
                rows += [("text", "none", reg) for reg in text_regimes]
            out += [(s, n, v, r, reg) for v, r, reg in rows]
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="persoma_grid_")
    cells = plan()
    rows, refs, flops, task_cache = [], {}, {}, {}
    dataset = None
    t_start = time.time()
    for s, n, variant, resampler, regime in cells:
        cfg = config_for(variant, resampler, s, n, regime)
        if dataset is None:
            dataset = tasks.load_dataset(cfg)
        key = (s, n, cfg.data.prompt_mode)
        if key not in task_cache:
            task_cache[key] = tasks.build_task(cfg, dataset)
        task = task_cache[key]
        if (s, n) not in refs:
            refs[(s, n)] = references(task)
        t0 = time.time()
        res = experiment.run(cfg, os.path.join(workdir, f"{s}_{n}_{variant}_{resampler}_{regime}"), task=task,
                             progress=False)
        fkey = (variant, resampler, n)
        if fkey not in flops:
            flops[fkey] = forward_flops(cfg, task)
        test = res["test"]
        label = f"{variant}-{resampler}" if variant == "persoma" else variant
        rows.append(dict(variant=label, sampling=s, n=n, regime=regime, f1=test["f1"], precision=test["precision"],
                         recall=test["recall"], tokens=persoma.input_tokens(task, cfg), mflops=flops[fkey] / 1e6))
        print(f"[{len(rows)}/{len(cells)}] {label} {s} n={n} {regime}: F1 {test['f1']:.3f} "
              f"({time.time() - t0:.0f} s, {(time.time() - t_start) / 60:.1f} min total)", file=sys.stderr, flush=True)
        text = render(rows, refs, len(cells))
        if FLAGS.out:
            report.write_markdown(FLAGS.out, f"PERSOMA grid ({FLAGS.dataset})", text)
    print(render(rows, refs, len(cells)))


if __name__ == "__main__":
    app.run(main)
