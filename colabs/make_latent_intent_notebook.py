"""Writes colabs/latent_intent.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke
mode).

    .venv/bin/python colabs/make_latent_intent_notebook.py
"""

from notebook import code, md, write

CELLS = [
md("""# Latent user intent on a REINFORCE recommender

This notebook uses only the `jaxrec` library. It trains the top-K off-policy-corrected REINFORCE recommender (Chen et al., WSDM 2019) and the latent-intent model built on it (Chang et al., WWW '23 Companion: a conditional VAE over behaviour signals whose prior mean conditions the policy) on the embedded synthetic sessions, whose generator keeps the latent intent of every event (continue / explore / repeat / buy). It plots their validation curves, then the inferred intent vectors coloured by the true intent.

Run it from a clone of the repository (after `make venv`). Set `JAXREC_SMOKE=1` for a few-step version; the test suite runs it that way."""),
code("""import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import synthetic
from jaxrec.data.tasks import build_task
from jaxrec.evaluators import make_evaluators
from jaxrec.methods import get_method

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="intent_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")


def config(method, arg=""):
    \"\"\"configs/<method>.py:<arg>, shrunk to a few steps in smoke mode.\"\"\"
    c = config_util.load_config_file(os.path.join(CONFIGS, f"{method}.py"),
                                      ",".join(a for a in (arg, "smoke" if SMOKE else "") if a))
    if SMOKE:
        c.train.num_steps, c.train.eval_every = 6, 3
    else:
        c.train.num_epochs, c.train.eval_every = 5, 50
    return c


def curve(workdir, metric):
    \"\"\"(steps, values) of a validation metric from a run's metrics.jsonl.\"\"\"
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    rows = [r for r in rows if r["split"] == "validation" and r.get(metric) is not None]
    return [r["step"] for r in rows], [r[metric] for r in rows]

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""),
md("""## REINFORCE with the top-K correction, with and without the latent intent

Both read the same GRU state (the history's items and their observed behaviour signals). The latent-intent model adds the conditional VAE: its posterior sees the behaviour signals of the event being predicted (dwell time, entry point, repeat flag, category switch), its prior only the history, and the policy reads the prior mean behind a stop-gradient."""),
code("""configs = {"REINFORCE top-K": config("reinforce"), "+ latent intent": config("latent_intent")}
task = build_task(configs["REINFORCE top-K"])    # the same data for both
runs = {}
for name, c in configs.items():
    runs[name] = experiment.run(c, os.path.join(WORKDIR, name.replace(" ", "_")), task=task,
                                progress=False)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name in runs:
    wd = os.path.join(WORKDIR, name.replace(" ", "_"))
    axes[0].plot(*curve(wd, "purchase/ndcg@10"), marker="o", label=name)
    axes[1].plot(*curve(wd, "total/reward@10"), marker="o", label=name)
axes[0].set_ylabel("validation purchase NDCG@10"); axes[1].set_ylabel("validation reward@10")
for ax in axes:
    ax.set_xlabel("training step"); ax.legend()
plt.tight_layout(); plt.show()
print(M.format_table({n: r["test"] for n, r in runs.items()}))"""),
md("""## The inferred intents, coloured by the true intent

The intent evaluator computes the vectors the model exposes (`latents`) for the validation queries. Below, their first two principal components: the posterior mean (which sees the behaviour signals) and the prior mean z̄ (what the policy reads, from the history alone). The table gives the linear-probe AUC and the k-means NMI against the true intents."""),
code("""method = get_method("latent_intent")
evaluator = make_evaluators(method, task, configs["+ latent intent"])["intent"]
vectors, intent = evaluator.vectors(runs["+ latent intent"]["state"], None, "validation")
names = synthetic.INTENTS

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, key in zip(axes, ("posterior_mean", "prior_mean")):
    z = vectors[key] - vectors[key].mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T
    for k, label in enumerate(names):
        m = intent == k
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label=label)
    ax.set_title(key.replace("_", " ")); ax.set_xlabel("PC 1"); ax.set_ylabel("PC 2")
axes[0].legend(markerscale=3)
plt.tight_layout(); plt.show()

cols = [f"intent/{n}/{m}" for n in ("state", "prior_mean", "posterior_mean")
        for m in ("probe_auc", "nmi")]
print(M.format_table({n: r["test"] for n, r in runs.items()}, columns=cols))"""),
]
write("latent_intent", CELLS)
