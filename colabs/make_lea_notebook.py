"""Writes colabs/lea.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke mode).

    .venv/bin/python colabs/make_lea_notebook.py
"""

from notebook import code, md, write

CELLS = [
md("""# LEA: a small LLM as the environment of an RL recommender

This notebook uses only the `jaxrec` library. It follows Wang, Karatzoglou, Arapakis and Jose (SIGIR 2024, arXiv 2403.16948): a decoder-only LLM, adapted with LoRA on a small share of the users' sessions, acts as the **environment** (LE) of an RL recommender. It has

* **item tokens** — one new embedding per item, trained (alone) to generate a sentence describing the item;
* a **state model** — the item-token sequence of a session prefix → a state vector, trained by a softmax over state–action similarity against the next item;
* a **reward model** — prefix + one candidate → a score, trained with the Bradley–Terry loss of the next item against an item the user never touched.

Offline, the LE provides, for every logged transition, its state vector, a reward replacing the fixed click = 0.2 / purchase = 1.0, and extra *augmented* positive actions; SA2C (or SQN) trains on them without ever running the LLM. Only the abstract and Fig. 2 of the paper are known, so every detail is a field of `config.lea`. The LLM here is a tiny decoder pretrained on the item texts.

Set `JAXREC_SMOKE=1` for a few-step version; the test suite runs it that way."""),
code("""import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec.data import tasks

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="lea_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")


def config(arg=""):
    \"\"\"configs/lea.py:<arg>, shrunk in smoke mode; caches under WORKDIR.\"\"\"
    c = config_util.load_config_file(os.path.join(CONFIGS, "lea.py"),
                                     ",".join(a for a in (arg, "smoke" if SMOKE else "") if a))
    c.lea.cache_dir = c.decoder.cache_dir = os.path.join(WORKDIR, "cache")
    return c

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""),
md("""## Building the environment and the augmented data

One call builds the task: it pretrains the decoder on the item texts, trains the item tokens, the state model and the reward model (progress is printed), then precomputes the arrays. Both steps are cached, so every variant below reuses them."""),
code("""c = config("variant=full")
dataset = tasks.load_dataset(c)
task = tasks.build_task(c, dataset)
info = task.extras["lea"]
print(f"{dataset.name}: {dataset.num_items} items; the LE learned from {info['sessions']} sessions "
      f"({c.lea.train_fraction:.0%}), {info['transitions']} transitions")
for stage in ("items", "state", "reward"):
    first, last = info[f"loss_{stage}"]
    print(f"  {stage:>6} stage loss {first:.3f} -> {last:.3f}")
print("training arrays:", ", ".join(f"{k} {v.shape}" for k, v in task.train.items() if k.startswith(("le_", "aug_"))))"""),
md("""## What the environment says about the logged data

Left: the reward model's reward of the logged action (σ of its score) for clicks and purchases, next to the fixed rewards it replaces. Right: the augmented actions' weights."""),
code("""tr = task.train
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5))
bins = np.linspace(0, 1, 31)
a1.hist(tr["le_reward"][tr["is_buy"] == 0], bins=bins, alpha=0.6, density=True, label="clicks")
if (tr["is_buy"] > 0).any():
    a1.hist(tr["le_reward"][tr["is_buy"] > 0], bins=bins, alpha=0.6, density=True, label="purchases")
for r, name in ((c.data.r_click, "fixed click"), (c.data.r_buy, "fixed purchase")):
    a1.axvline(r, color="k", ls="--", lw=0.8)
    a1.text(r, a1.get_ylim()[1] * 0.9, name, rotation=90, ha="right", fontsize=8)
a1.set_xlabel("reward-model reward of the logged action")
a1.legend()
a2.hist(tr["aug_weights"].ravel(), bins=bins, color="C2")
a2.set_xlabel(f"weight of the {tr['aug_actions'].shape[1]} augmented actions per state")
plt.tight_layout()
plt.show()"""),
md("""One training state, its logged next item and the environment's augmented actions, by title:"""),
code("""titles = dataset.items.titles
n = task.num_items
row = int(np.argmax((tr["state"] < n).sum(1) >= 3))
hist = [titles[i] for i in tr["state"][row] if i < n]
print("history:  ", " | ".join(hist))
print("logged:   ", titles[tr["action"][row]], f"(reward {tr['le_reward'][row]:.2f})")
for a, w in zip(tr["aug_actions"][row], tr["aug_weights"][row]):
    print("augmented:", titles[a], f"(weight {w:.2f})")"""),
md("""## SA2C with and without the environment

The same SA2C (SASRec encoder) alone, with each plug point, and with all three. In smoke mode only the base and full runs, two steps each, so the bars mean nothing there; `benchmarks/lea_table.py` writes the full table (`results/lea_synthetic.md`, `results/lea_ml100k.md`)."""),
code("""variants = ("base", "full") if SMOKE else ("base", "state", "reward", "aug", "full")
results = {}
for v in variants:
    cv = config(f"variant={v}")
    if not SMOKE:
        cv.train.num_epochs = 5
    t = task if cv.data.kind == c.data.kind else tasks.build_task(cv, dataset)
    res = experiment.run(cv, os.path.join(WORKDIR, v), task=t, progress=False)
    results[v] = res["test"]
metric = c.eval.select_metric.replace("purchase", "click") if SMOKE else c.eval.select_metric
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(variants, [results[v].get(metric, np.nan) for v in variants], color=["grey"] + ["C0"] * 4)
ax.set_ylabel(f"test {metric}")
ax.set_title("SA2C + LEA plug points")
plt.tight_layout()
plt.show()
for v in variants:
    print(f"{v:>6}: {metric} {results[v].get(metric, float('nan')):.4f}")"""),
]
write("lea", CELLS)
