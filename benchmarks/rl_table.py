"""The RL papers' table: a method × encoder grid on one dataset, test metrics at the best
validation step, in the SA2C paper's layout (rl.md §10.1: HR/NDCG@5/10/20 for purchases,
then clicks), plus SMORL's coverage columns where a run reports them.

    .venv/bin/python benchmarks/rl_table.py --dataset=synthetic
    .venv/bin/python benchmarks/rl_table.py --dataset=ml100k_sessions --epochs=20 \\
        --out=results/rl_ml100k.md

``--dataset=ml100k_sessions`` is MovieLens-100K from the installed recbole package read the
way the RL configs read MovieLens-1M (users as sessions, every rating a click: purchase
columns are empty, selection on click NDCG@10) — the offline stand-in for ML-1M-style data.
SMORL reads the item embeddings of the grid's own supervised GRU4Rec run (so
``supervised`` with ``gru4rec`` runs first whenever SMORL is in the grid).

With ``--out`` the table is also written as Markdown with the exact command, so a rerun on
the same machine reproduces the file.
"""

from __future__ import annotations

import os
import tempfile

from absl import app, flags, logging

import report
from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import tasks

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | ml100k_sessions | retailrocket | "
                    "yoochoose | movielens_1m")
flags.DEFINE_string("raw_dir", "", "Raw files of a real dataset.")
flags.DEFINE_list("methods", ["supervised", "sqn", "sac", "snqn", "sa2c", "prl", "smorl"],
                  "Methods (config files configs/<method>.py).")
flags.DEFINE_list("encoders", list(config_util.ENCODERS), "Encoders.")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0: each config's default).")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Also write the table as Markdown to this file.")
flags.DEFINE_string("sweep", "", "One config field swept over values, a row per value: "
                    "'rl.phase1_steps=120:290:460'.")

EXTRA_COLUMNS = ("coverage/cv@10", "coverage/novel_cv@10", "coverage/repetitions@10",
                 "coverage/offpolicy_ndcg@10")


def config_for(method: str, encoder: str, pretrained: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arg = f"encoder={encoder}"
    if FLAGS.dataset == "ml100k_sessions":
        arg += ",dataset=ml100k_recbole"
        if method == "supervised":      # the RL configs are session-protocol already
            arg += ",protocol=session"
    else:
        arg += f",dataset={FLAGS.dataset}"
    if FLAGS.raw_dir:
        arg += f",raw_dir={FLAGS.raw_dir}"
    if method == "smorl":
        arg += f",pretrained={pretrained}"
    c = config_util.load_config_file(os.path.join(root, "configs", f"{method}.py"), arg)
    c.seed = FLAGS.seed
    if FLAGS.epochs:
        c.train.num_epochs = FLAGS.epochs
    return c


def sweep_values() -> tuple[str, list[str]]:
    """``--sweep=path=v1:v2`` as (path, [v1, v2]); ("", [""]) without a sweep."""
    if not FLAGS.sweep:
        return "", [""]
    path, sep, values = FLAGS.sweep.partition("=")
    if not sep or not values:
        raise app.UsageError(f"--sweep={FLAGS.sweep!r}: expected 'path=v1:v2:...'")
    return path, values.split(":")


def set_field(config, path: str, text: str) -> None:
    """Sets the existing field ``path`` of ``config`` from ``text``, in the field's type."""
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    if leaf not in node:
        raise app.UsageError(f"--sweep: the config has no field {path!r}")
    old = node[leaf]
    node[leaf] = (text.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(text)


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    from tqdm import tqdm
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="rl_table_")
    path, values = sweep_values()
    grid = [(m, e, v) for m in FLAGS.methods for e in FLAGS.encoders for v in values]
    if "smorl" in FLAGS.methods and ("supervised", "gru4rec", "") not in grid:
        grid.insert(0, ("supervised", "gru4rec", ""))
    grid.sort(key=lambda mev: mev[0] == "smorl")        # SMORL after its pretrained run
    pretrained = os.path.join(root, "supervised_gru4rec")
    rows, datasets = {}, {}
    for method, encoder, value in tqdm(grid, desc="grid", unit="run"):
        config = config_for(method, encoder, pretrained)
        name = f"{method}/{encoder}"
        if value:
            set_field(config, path, value)
            name += f" {path.rpartition('.')[2]}={value}"
        key = (config.dataset.name, tuple(sorted(config.dataset.options.items())))
        if key not in datasets:
            datasets[key] = tasks.load_dataset(config)
        res = experiment.run(config, os.path.join(root, name.replace("/", "_").replace(" ", "_")),
                             dataset=datasets[key], progress=False)
        rows[name] = res["test"]
    table = M.format_table(rows)
    extra = [c for c in EXTRA_COLUMNS if any(c in r for r in rows.values())]
    lines = [f"Test metrics at the best validation step — {FLAGS.dataset}", table]
    if extra:
        lines += ["", M.format_table({k: r for k, r in rows.items()
                                      if any(c in r for c in extra)}, columns=extra)]
    text = "\n".join(lines)
    print("\n" + text)
    if FLAGS.out:
        title = f"RL recommenders on {FLAGS.dataset}"
        if FLAGS.sweep:
            title += f", sweeping {path}"
        report.write_markdown(FLAGS.out, title, text)
    print(f"runs under {root}")


if __name__ == "__main__":
    app.run(main)
