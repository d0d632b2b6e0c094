"""Writes colabs/gaze_reward.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke mode).

    .venv/bin/python colabs/make_gaze_reward_notebook.py
"""

from notebook import code, md, write

CELLS = [
md("""# GazeReward: reward models that read predicted eye movements

This notebook uses only the `jaxrec` library. It follows Lopez-Cardona et al., "Seeing Eye to AI" (ICLR 2025): a reward model over a decoder LLM receives per-token eye-tracking features predicted from the text — either as an `<eye/> … </eye>` block of projected features before the text (**GazeConcat**) or added to the token embeddings (**GazeAdd**) — and is trained with the Bradley–Terry loss on preference pairs.

Offline, the eye-tracking predictor is a reading-time proxy (word length, `wordfreq` frequency, position, punctuation → nFix, FFD, GPT, TRT, fixProp), the LLM is a tiny decoder trained from scratch, and the pairs are synthetic: rejected answers use rarer words and are more often cut short. We look at the features, then compare accuracy with and without gaze.

Set `JAXREC_SMOKE=1` for a few-step version; the test suite runs it that way."""),
code("""import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec.data import preferences as prefs
from jaxrec.data import tasks

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="gaze_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")


def config(arg=""):
    \"\"\"configs/gaze_reward.py:<arg>, shrunk in smoke mode.\"\"\"
    return config_util.load_config_file(os.path.join(CONFIGS, "gaze_reward.py"),
                                        ",".join(a for a in (arg, "smoke" if SMOKE else "") if a))

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""),
md("""## The reading-time proxy on one pair

Total reading time (TRT, in units of 100 ms) per word of the chosen and the rejected answer to the same prompt. Rare, long words are read longer."""),
code("""pairs = prefs.synthetic_pairs(3, seed=0)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5), sharey=True)
for ax, side in zip(axes, ("chosen", "rejected")):
    words = getattr(pairs, side)[0].split()
    f = prefs.proxy_features(words)
    ax.bar(range(len(words)), f[:, prefs.FEATURES.index("TRT")])
    ax.set_xticks(range(len(words)), words, rotation=60, ha="right")
    ax.set_title(f"{side}: mean TRT {f[:, 3].mean():.2f}")
axes[0].set_ylabel("proxy TRT (100 ms)")
plt.tight_layout()
plt.show()"""),
md("""## Training the reward model with and without gaze

One task (pairs, tokenizers, cached features) serves the three variants."""),
code("""task = None
results, curves = {}, {}
for variant in ("none", "concat", "add"):
    c = config(f"variant={variant}")
    if not SMOKE:
        c.train.num_epochs, c.train.eval_every = 4, 50
    if task is None:
        task = tasks.build_task(c)
        print(task.num_train, "training pairs; feature cache holds", task.extras["cache_size"], "texts")
    wd = os.path.join(WORKDIR, variant)
    res = experiment.run(c, wd, task=task, progress=False)
    results[variant] = res["test"]
    rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    rows = [r for r in rows if r["split"] == "validation"]
    curves[variant] = ([r["step"] for r in rows], [r["accuracy"] for r in rows])
    print(f"{variant:>6}: test accuracy {res['test']['accuracy']:.3f}")"""),
code("""names = {"none": "no gaze", "concat": "GazeConcat", "add": "GazeAdd"}
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
a1.bar([names[v] for v in results], [results[v]["accuracy"] for v in results], color=["grey", "C0", "C1"])
a1.axhline(0.5, color="k", lw=0.5, ls="--")
a1.set_ylabel("test pairwise accuracy")
a1.set_ylim(0.4, 1.0)
for v, (s, acc) in curves.items():
    a2.plot(s, acc, marker="o", label=names[v])
a2.set_xlabel("step")
a2.set_ylabel("validation accuracy")
a2.legend()
plt.tight_layout()
plt.show()"""),
md("""`benchmarks/gaze_rm.py` repeats this with three seeds; its table is in `results/gaze_rm.md`, with a reading of where the paper's direction does and does not show here."""),
]
write("gaze_reward", CELLS)
