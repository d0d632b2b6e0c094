"""``make run``: the default experiment on the embedded synthetic data.

Trains SASRec (supervised cross-entropy), SASRec-SQN and SASRec-SA2C on the synthetic
dataset's session split and prints their rows of a paper-style table (test HR/NDCG @5/10/20 for purchases and
clicks, at the best validation step), plus the dataset's statistics table.

    python -m jaxrec.run_default [--workdir=DIR] [--epochs=N]
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import flags, logging

from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import prepare as prep
from jaxrec.data.stats import dataset_table

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where runs are written (default: a temp directory).")
flags.DEFINE_integer("epochs", 0, "Override the number of epochs (0: config default).")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="jaxrec_run_")
    ds = prep.load("synthetic")
    print("Synthetic dataset (embedded default):")
    print(dataset_table(ds))
    rows = {}
    for label, cfg_file in (("SASRec", "supervised.py"), ("SASRec-SQN", "sqn.py"),
                            ("SASRec-SA2C", "sa2c.py")):
        config = config_util.load_config_file(cfg_file,
                                              "dataset=synthetic,encoder=sasrec")
        if FLAGS.epochs:
            config.train.num_epochs = FLAGS.epochs
        t = time.time()
        print(f"\n== {label}: {config.train.num_epochs} epochs ==")
        res = experiment.run(config, os.path.join(root, label), dataset=ds)
        print(f"{label}: {time.time() - t:.0f}s, best validation step {res['best_step']}")
        rows[label] = res["test"]
    print("\nTest set, at the best validation step (purchase | click):")
    print(M.format_table(rows))
    print(f"\nRuns (checkpoints, metrics.jsonl, results.json) under {root}")


def run():
    """Console script ``jaxrec-demo`` (``make run``)."""
    from jaxrec import cli
    cli.run(main)


if __name__ == "__main__":
    run()
