"""The latent-intent table: REINFORCE vs + top-K correction vs + latent intent, over seeds.

Chang et al., "Latent User Intent Modeling for Sequential Recommenders" (WWW '23 Companion)
condition Chen et al.'s top-K off-policy-corrected REINFORCE recommender (WSDM 2019) on a
latent intent inferred by a conditional VAE. On the synthetic data, whose generator keeps
every event's latent intent, this script trains each row with several seeds and reports
the mean ± standard deviation over seeds of the test metrics at the best validation step:
purchase / click NDCG@10, the cumulative reward@10 of the hits (``total/reward@10``: the RL
papers' reward measure) and the intent recovery of the intent evaluator (linear-probe
AUC and k-means NMI, specs/intent_pcrec.md §1.4) of the GRU state, the prior mean z̄ (what
the policy reads) and the posterior mean.

    .venv/bin/python benchmarks/intent_table.py --out=results/intent_synthetic.md

Rows (``--rows``): ``reinforce`` (capped off-policy correction, no top-K: the
``variant=plain`` config), ``topk`` (+ top-K correction), ``intent`` (+ latent intent,
concat conditioning), ``onpolicy`` / ``intent_onpolicy`` (top-K without the importance
weight π/β, i.e. the return- and λ_K-weighted likelihood of the logged items). About 3
CPU-minutes for the default 5 rows x 3 seeds x 5 epochs on the ``small`` preset.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags, logging

import report
from jaxrec import config_util, experiment
from jaxrec.data import tasks

FLAGS = flags.FLAGS
ROWS_DEFAULT = ("reinforce", "topk", "intent", "onpolicy", "intent_onpolicy")
flags.DEFINE_list("rows", list(ROWS_DEFAULT), "Rows (see the docstring).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every row.")
flags.DEFINE_integer("epochs", 5, "Epochs per run.")
flags.DEFINE_integer("eval_every", 50, "Validation cadence in steps.")
flags.DEFINE_string("dataset", "synthetic", "synthetic (intent recovery needs its truth).")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Also write the table as Markdown to this file.")

ROWS = {   # row -> (config file, argument, config.rl.off_policy, label in the table)
    "reinforce": ("reinforce", "variant=plain", True, "REINFORCE (capped π/β)"),
    "topk": ("reinforce", "variant=topk", True, "+ top-K"),
    "intent": ("latent_intent", "variant=topk", True, "+ top-K + intent"),
    "onpolicy": ("reinforce", "variant=topk", False, "top-K, no π/β"),
    "intent_onpolicy": ("latent_intent", "variant=topk", False, "top-K, no π/β + intent"),
}
COLUMNS = (("purchase/ndcg@10", "purch NG@10"), ("click/ndcg@10", "click NG@10"),
           ("total/reward@10", "reward@10"),
           ("intent/state/probe_auc", "state AUC"), ("intent/state/nmi", "state NMI"),
           ("intent/prior_mean/probe_auc", "prior AUC"), ("intent/prior_mean/nmi", "prior NMI"),
           ("intent/posterior_mean/probe_auc", "post AUC"),
           ("intent/posterior_mean/nmi", "post NMI"))


def config_for(row: str, seed: int):
    if row not in ROWS:
        raise app.UsageError(f"unknown row {row!r}; accepted: {', '.join(ROWS)}")
    name, arg, off_policy, _ = ROWS[row]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_util.load_config_file(os.path.join(root, "configs", f"{name}.py"),
                                     f"{arg},dataset={FLAGS.dataset}")
    c.seed = seed
    c.rl.off_policy = off_policy
    c.train.num_epochs = FLAGS.epochs
    c.train.eval_every = FLAGS.eval_every
    return c


def format_rows(results: dict) -> str:
    """results: row -> [test dict per seed] -> the mean ± std table."""
    head = f"{'row':<24}" + "".join(f"{label:>17}" for _, label in COLUMNS)
    lines = [head, "-" * len(head)]
    for row, runs in results.items():
        cells = []
        for key, _ in COLUMNS:
            v = np.asarray([r[key] for r in runs if key in r], np.float64)
            fmt = ".1f" if "reward" in key else ".4f"
            cells.append(f"{v.mean():{fmt}} ± {v.std():{fmt}}" if v.size else "—")
        lines.append(f"{ROWS[row][3]:<24}" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="intent_table_")
    seeds = [int(s) for s in FLAGS.seeds]
    task, results = None, {}
    for row in FLAGS.rows:
        for seed in seeds:
            c = config_for(row, seed)
            if task is None:       # one task for every run: the data do not depend on seed
                task = tasks.build_task(c)
            res = experiment.run(c, os.path.join(root, f"{row}_seed{seed}"), task=task,
                                 progress=False)
            results.setdefault(row, []).append(res["test"])
            print(f"{row} seed {seed}: best step {res['best_step']}, test purchase NDCG@10 "
                  f"{res['test']['purchase/ndcg@10']:.4f}", flush=True)
    text = "\n".join([
        f"Test metrics at the best validation step (purchase NDCG@10), mean ± std over "
        f"seeds {','.join(map(str, seeds))} — {FLAGS.dataset}, {FLAGS.epochs} epochs",
        format_rows(results)])
    print("\n" + text)
    if FLAGS.out:
        report.write_markdown(FLAGS.out, f"Latent intent vs REINFORCE on {FLAGS.dataset}",
                              text)
    print(f"runs under {root}")


if __name__ == "__main__":
    app.run(main)
