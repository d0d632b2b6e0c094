"""GazeReward on synthetic preferences: no-gaze vs GazeConcat vs GazeAdd pairwise accuracy.

Lopez-Cardona et al., "Seeing Eye to AI" (ICLR 2025) add predicted eye-tracking features to a
reward model, either as a ``<eye/> ... </eye>`` prefix (GazeConcat) or added to the token
embeddings (GazeAdd), and report higher preference accuracy than the same reward model without
them (spec llm.md §2.5). This script trains the three variants of ``configs/gaze_reward.py``
(tiny decoder from scratch, the reading-time proxy as ET predictor) with several seeds on the
synthetic pairs of :func:`jaxrec.data.preferences.synthetic_pairs` and reports test pairwise
accuracy and BT loss at the best validation step, mean ± std over seeds. A training-free
reference row ranks each pair by the proxy's mean total reading time per ET token (lower
wins), to show how much signal the features carry on their own.

    .venv/bin/python benchmarks/gaze_rm.py --out=results/gaze_rm.md

About 5 CPU-minutes for 3 variants x 3 seeds x 4 epochs of 2,100 training pairs.
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
flags.DEFINE_list("variants", ["none", "concat", "add"], "Reward-model variants.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of every variant.")
flags.DEFINE_integer("epochs", 4, "Epochs per run.")
flags.DEFINE_string("predictor", "proxy", "ET predictor: proxy | bilstm.")
flags.DEFINE_string("features", "fcomb2.5", "Feature combination.")
flags.DEFINE_string("regime", "full", "full | lora | frozen.")
flags.DEFINE_string("workdir", None, "Where runs go (default: a fresh temp directory).")
flags.DEFINE_string("out", None, "Also write the table as Markdown to this file.")

LABELS = {"none": "no gaze (baseline)", "concat": "GazeConcat", "add": "GazeAdd"}


def config_for(variant: str, seed: int):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = config_util.load_config_file(
        os.path.join(root, "configs", "gaze_reward.py"),
        f"variant={variant},predictor={FLAGS.predictor},features={FLAGS.features},regime={FLAGS.regime}")
    c.seed = seed
    c.train.num_epochs = FLAGS.epochs
    return c


def proxy_rule_accuracy(arrays: dict) -> float:
    """Chosen wins when its mean proxy TRT per ET token is lower (no training)."""
    def mean_trt(side):
        m = arrays[f"{side}_et_mask"]
        return (arrays[f"{side}_et"][..., 3] * m).sum(1) / np.maximum(m.sum(1), 1)
    return float(np.mean(mean_trt("chosen") < mean_trt("rejected")))


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="gaze_rm_")
    seeds = [int(s) for s in FLAGS.seeds]
    task, results = None, {}
    for variant in FLAGS.variants:
        for seed in seeds:
            c = config_for(variant, seed)
            if task is None:   # the pairs and features do not depend on the variant or seed
                task = tasks.build_task(c)
            res = experiment.run(c, os.path.join(root, f"{variant}_seed{seed}"), task=task, progress=False)
            results.setdefault(variant, []).append(res["test"])
            print(f"{variant} seed {seed}: best step {res['best_step']}, test accuracy "
                  f"{res['test']['accuracy']:.4f}", flush=True)
    head = f"{'variant':<28}{'test accuracy':>18}{'test BT loss':>18}"
    lines = [head, "-" * len(head)]
    for variant, runs in results.items():
        acc = np.array([r["accuracy"] for r in runs])
        loss = np.array([r["bt_loss"] for r in runs])
        lines.append(f"{LABELS.get(variant, variant):<28}{acc.mean():>10.4f} ± {acc.std():.4f}"
                     f"{loss.mean():>10.4f} ± {loss.std():.4f}")
    lines.append(f"{'proxy TRT rule (no training)':<28}{proxy_rule_accuracy(task.test.arrays):>10.4f}")
    text = "\n".join([
        f"Test pairwise accuracy at the best validation step, mean ± std over seeds "
        f"{','.join(map(str, seeds))} — synthetic preferences ({task.num_train} training pairs, "
        f"{task.test.size} test pairs), predictor {FLAGS.predictor}, {FLAGS.features}, regime "
        f"{FLAGS.regime}, {FLAGS.epochs} epochs",
        *lines])
    print("\n" + text)
    if FLAGS.out:
        report.write_markdown(FLAGS.out, "GazeReward on synthetic preferences", text)
    print(f"runs under {root}")


if __name__ == "__main__":
    app.run(main)
