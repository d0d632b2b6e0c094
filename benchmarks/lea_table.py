"""LEA's ablation (rl.md §8): the base recommender (SA2C by default) against +state, +reward,
+augmentation and full LEA, test metrics at the best validation step.

    .venv/bin/python benchmarks/lea_table.py --dataset=synthetic --out=results/lea_synthetic.md
    .venv/bin/python benchmarks/lea_table.py --dataset=ml100k_sessions --epochs=4 \\
        --phase1_steps=600 --out=results/lea_ml100k.md

``--dataset=ml100k_sessions`` is MovieLens-100K from the installed recbole package read as
the RL tables read it (users as sessions, every rating a click; titles and genres are the
item texts). The LLM environment (decoder pretraining, item tokens, state and reward
models) and the augmentation are built once per dataset and cached (``config.lea.cache_dir``,
``config.decoder.cache_dir``), so every variant — and a rerun — reads the same arrays.

With ``--out`` the table, the environment's losses and the exact command are written as
Markdown (timings are printed only, so a rerun on the same machine reproduces the file).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import app, flags, logging

import report
from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import tasks

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | ml100k_sessions")
flags.DEFINE_list("variants", ["base", "state", "reward", "aug", "full"], "configs/lea.py variants.")
flags.DEFINE_string("base", "sa2c", "sa2c | sqn")
flags.DEFINE_string("encoder", "sasrec", "Encoder of the recommender.")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0: the config's default).")
flags.DEFINE_integer("phase1_steps", 0, "SA2C's phase-1 steps (0: the config's default).")
flags.DEFINE_integer("seed", 0, "Seed of every run (the recommender's; the LE keeps lea.seed).")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Also write the table as Markdown to this file.")
flags.DEFINE_list("extra", [], "Further rows 'variant:lea_field=value' (several fields joined "
                  "by '+'), e.g. 'full:aug_advantage=false'.")


def parse_extra(entry: str) -> tuple[str, dict]:
    """'full:aug_advantage=false+aug_k=3' -> ('full', {'aug_advantage': 'false', 'aug_k': '3'})."""
    variant, sep, fields = entry.partition(":")
    pairs = [f.partition("=") for f in fields.split("+") if f]
    if not sep or not pairs or any(not eq for _, eq, _ in pairs):
        raise app.UsageError(f"--extra={entry!r}: expected 'variant:field=value[+field=value]'")
    return variant, {k: v for k, _, v in pairs}


def set_lea(config, overrides: dict) -> None:
    """config.lea.<field> = value, in the field's type."""
    for k, text in overrides.items():
        if k not in config.lea:
            raise app.UsageError(f"--extra: config.lea has no field {k!r}")
        old = config.lea[k]
        config.lea[k] = (text.lower() in ("1", "true")) if isinstance(old, bool) else type(old)(text)


def config_for(variant: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dataset = "ml100k_recbole" if FLAGS.dataset == "ml100k_sessions" else FLAGS.dataset
    arg = f"variant={variant},base={FLAGS.base},dataset={dataset},encoder={FLAGS.encoder}"
    c = config_util.load_config_file(os.path.join(root, "configs", "lea.py"), arg)
    c.seed = FLAGS.seed
    if FLAGS.epochs:
        c.train.num_epochs = FLAGS.epochs
    if FLAGS.phase1_steps and "phase1_steps" in c.rl:
        c.rl.phase1_steps = FLAGS.phase1_steps
    return c


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="lea_table_")
    rows, env_info, dataset, timings = {}, None, None, {}
    runs = [(v, {}) for v in FLAGS.variants] + [parse_extra(e) for e in FLAGS.extra]
    for variant, overrides in runs:
        config = config_for(variant)
        set_lea(config, overrides)
        name = variant + "".join(f" {k}={v}" for k, v in overrides.items())
        if dataset is None:
            dataset = tasks.load_dataset(config)
        t0 = time.time()
        task = tasks.build_task(config, dataset)
        t_task = time.time() - t0
        env_info = task.extras.get("lea", env_info)
        res = experiment.run(config, os.path.join(root, name.replace(" ", "_")), task=task,
                             progress=False)
        rows[name if overrides else f"{variant} ({config.label})"] = res["test"]
        timings[name] = (t_task, time.time() - t0 - t_task)
        print(f"{name}: task {t_task:.0f} s, training {timings[name][1]:.0f} s", file=sys.stderr,
              flush=True)
    text = "\n".join([f"Test metrics at the best validation step — {FLAGS.dataset}, "
                      f"{FLAGS.base}/{FLAGS.encoder}, seed {FLAGS.seed}", M.format_table(rows)])
    if env_info:
        fmt = lambda p: f"{p[0]:.3f} -> {p[1]:.3f}"
        text += ("\n\nLLM environment (first -> last tenth of each stage's training loss): "
                 f"item tokens {fmt(env_info['loss_items'])}, state model {fmt(env_info['loss_state'])}, "
                 f"reward model (BT) {fmt(env_info['loss_reward'])}; trained on "
                 f"{env_info['sessions']} sessions / {env_info['transitions']} transitions, "
                 f"{env_info['items']} item tokens. On the validation queries, the state model's "
                 f"own top-10 holds the next item {env_info.get('state_hr@10', float('nan')):.4f} of the "
                 f"time (HR@10), and the reward model scores the next item above a random other item "
                 f"in {env_info.get('reward_acc', float('nan')):.4f} of them.")
    print("\n" + text)
    if FLAGS.out:
        report.write_markdown(FLAGS.out, f"LEA ablation on {FLAGS.dataset}", text)
    print(f"runs under {root}")


if __name__ == "__main__":
    app.run(main)
