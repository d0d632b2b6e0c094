"""PCRec's comparison (Sun et al., SIGIR 2022; intent_pcrec.md §2.7): each base model
alone vs PCRec layer-wise (LW), parameter-wise (PW) and the noise baseline, on one dataset.

    .venv/bin/python benchmarks/pcrec_table.py --dataset=ml100k_recbole \\
        --out=results/pcrec_ml100k.md
    .venv/bin/python benchmarks/pcrec_table.py --dataset=synthetic \\
        --out=results/pcrec_synthetic.md

Rows per base: ``alone`` (one network: lr 1×, shuffle seed 11 — the same initialisation,
data order and learning rate as the served peer of the two-peer runs), ``PCRec-LW`` and
``PCRec-PW`` (two peers at 0.5× / 1× lr, seeds 10 / 11, cooperation at every epoch end,
the 1× peer served) and ``noise`` (one network, low-magnitude weights perturbed at epoch
ends). Everything else is ``configs/pcrec.py:size=cpu`` with the flags below (a CPU-sized
run: fewer epochs and a higher learning rate than the paper's 200–300 epochs at 1e-3).

Two tables: test metrics at the best validation MRR@20 (jaxrec's model selection) and the
best validation value of each metric over the epochs (the reference reports the best epoch
of each metric, on its test split). With ``--out`` the tables are written as Markdown with
the exact command, so a rerun reproduces the file.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags, logging

import report
from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import tasks

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | ml100k_recbole")
flags.DEFINE_list("bases", ["sasrec", "youtube", "bpr"], "Base models.")
flags.DEFINE_list("variants", ["none", "lw", "pw", "noise"], "Rows per base.")
flags.DEFINE_list("epochs", ["sasrec=6", "youtube=20", "bpr=10"], "Epochs per base.")
flags.DEFINE_integer("dim", 32, "Embedding width d (the paper: 256).")
flags.DEFINE_float("lr", 5e-3, "Adam learning rate of the 1x peer (the paper: 1e-3).")
flags.DEFINE_integer("seed", 0, "Seed of every run (peers differ by their own seeds).")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Also write the tables as Markdown to this file.")

ROW = {"none": "alone", "lw": "PCRec-LW", "pw": "PCRec-PW", "noise": "noise"}
COLUMNS = [f"all/{m}@{k}" for m in ("mrr", "hr", "ndcg") for k in (5, 20)]


def config_for(base: str, variant: str, epochs: dict):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_util.load_config_file(
        os.path.join(root, "configs", "pcrec.py"),
        f"base={base},variant={variant},dataset={FLAGS.dataset},size=cpu")
    c.seed = FLAGS.seed
    c.model.embed_dim = c.model.ffn_dim = FLAGS.dim
    c.optim.lr = FLAGS.lr
    c.train.num_epochs = epochs[base]
    return c


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    epochs = {}
    for item in FLAGS.epochs:
        k, _, v = item.partition("=")
        epochs[k] = int(v)
    missing = [b for b in FLAGS.bases if b not in epochs]
    if missing:
        raise app.UsageError(f"--epochs has no entry for {missing}")
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="pcrec_table_")
    test_rows, best_rows, datasets, times = {}, {}, {}, {}
    for base in FLAGS.bases:
        for variant in FLAGS.variants:
            config = config_for(base, variant, epochs)
            key = (config.dataset.name, tuple(sorted(config.dataset.options.items())))
            if key not in datasets:
                datasets[key] = tasks.load_dataset(config)
            name = f"{base} {ROW[variant]}"
            t0 = time.time()
            res = experiment.run(config, os.path.join(root, f"{base}_{variant}"),
                                 dataset=datasets[key], progress=False)
            times[name] = time.time() - t0
            test_rows[name] = res["test"]
            best_rows[name] = {k: v["value"] for k, v in res["best_validation"].items()}
            print(f"{name}: test MRR@20 {res['test'].get('all/mrr@20', float('nan')):.4f} "
                  f"({times[name]:.0f} s)")
    text = "\n".join([
        f"Test metrics at the best validation MRR@20 — {FLAGS.dataset}, d = {FLAGS.dim}, "
        f"lr {FLAGS.lr:g}, epochs {', '.join(FLAGS.epochs)}, seed {FLAGS.seed}",
        M.format_table(test_rows, columns=COLUMNS), "",
        "Best validation value of each metric over the epochs (the reference's way, on "
        "validation)",
        M.format_table(best_rows, columns=COLUMNS)])
    print("\n" + text)
    # Timings vary between machines and loads, so they are printed, not written.
    print("Wall time per run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    if FLAGS.out:
        report.write_markdown(FLAGS.out, f"PCRec on {FLAGS.dataset}", text)
    print(f"runs under {root}")


if __name__ == "__main__":
    app.run(main)
