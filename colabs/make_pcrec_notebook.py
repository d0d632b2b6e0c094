"""Writes colabs/pcrec.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke mode).

    .venv/bin/python colabs/make_pcrec_notebook.py
"""

from notebook import code, md, write

INTRO = """# PCRec: two peers and the entropy of their layers

This notebook uses only the `jaxrec` library. It trains PCRec (Sun et al., "Enhancing
Top-N Item Recommendations by Peer Collaboration", SIGIR 2022) with a SASRec base on the
embedded synthetic data: two peers in lockstep (stacked on a leading axis, `jax.vmap`),
at 0.5× and 1× the learning rate with their own data shuffles, and at every epoch end
each peer's tensors are blended with the other's by layer-wise weights
`μ = b·sigmoid(a·(H(W_self) − H(W_peer)))`, H being the 10-bin entropy of the tensor's
values.

It records the per-layer entropy of both peers at every epoch end (before the
cooperation) and the μ each tensor of peer 0 receives, then compares the served peer
with the same network trained alone.

Run it from a clone of the repository (after `make venv`). Set `JAXREC_SMOKE=1` for a
few-step version; the test suite runs it that way."""

SETUP = """import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec import metrics as M
from jaxrec.data import tasks
from jaxrec.methods import common, pcrec
from jaxrec.train.data import BatchSource

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="pcrec_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")


def config(arg):
    \"\"\"configs/pcrec.py:<arg> on synthetic data, CPU-sized (tiny in smoke mode).\"\"\"
    c = config_util.load_config_file(os.path.join(CONFIGS, "pcrec.py"),
                                      arg + (",smoke" if SMOKE else ",size=cpu"))
    c.train.num_epochs = 2 if SMOKE else 12
    c.optim.lr = 5e-3
    return c

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""

TRAIN_MD = """## Training the peers by hand

The trainer would do the same (`jaxrec.main --config=configs/pcrec.py`); here the loop is
written out so the peers can be inspected at each epoch end, where the state is the one
the cooperation at the start of the next step will read."""

TRAIN = """c = config("variant=lw")
task = tasks.build_task(c)
init_key, root = jax.random.split(jax.random.key(c.seed))
state = pcrec.init(init_key, task, c)
consts = pcrec.make_consts(c, task)
step_fn = jax.jit(pcrec.train_step)
source = BatchSource(task.train, task.batch_size, seed=c.seed)
hp = state.hp
print(f"{task.num_train} training windows, {hp.steps_per_epoch} steps per epoch, "
      f"learning-rate scales {hp.lr_scales}, shuffle seeds {hp.seeds}")

entropies, mus = [], []          # per epoch: {layer: [P]}, {layer: μ of peer 0}
for step in range(hp.total_steps):
    state, m = step_fn(state, source[step], jax.random.fold_in(root, step), consts)
    if (step + 1) % hp.steps_per_epoch == 0:
        ent = jax.vmap(pcrec.tree_entropies)(state.params)
        entropies.append({k: np.asarray(v) for k, v in ent.items()})
        p0, p1 = common.tree_index(state.params, 0), common.tree_index(state.params, 1)
        _, mu = pcrec.layerwise(p0, p1, hp.criterion, hp.a, hp.b)
        mus.append({pcrec.path_str(k): float(v)
                    for k, v in jax.tree_util.tree_flatten_with_path(mu)[0]})
        print(f"epoch {len(entropies)}: loss {float(m['loss']):.3f}")"""

PLOT_MD = """## Per-layer entropy of the two peers

Solid lines: peer 0 (0.5× learning rate); dashed: peer 1 (1×, the served one). Only
weight tensors with more than one dimension are drawn (biases and LayerNorm scales start
constant, entropy 0)."""

PLOT = """def short(name):
    return name.replace("params/", "").replace("encoder/", "").replace("/kernel", "") \\
               .replace("/embedding", "")

leaves = dict((pcrec.path_str(p), x) for p, x in
              jax.tree_util.tree_flatten_with_path(state.params)[0])
layers = [k for k in entropies[0] if leaves[k].ndim > 2]      # [P, ...] with ndim > 1
epochs = np.arange(1, len(entropies) + 1)
fig, ax = plt.subplots(figsize=(8, 4.5))
colors = plt.cm.tab10(np.linspace(0, 1, len(layers)))
for color, layer in zip(colors, layers):
    h = np.stack([e[layer] for e in entropies])               # [epochs, P]
    ax.plot(epochs, h[:, 0], "-", color=color, label=short(layer))
    ax.plot(epochs, h[:, 1], "--", color=color)
ax.set_xlabel("epoch"); ax.set_ylabel("10-bin entropy (nats)")
ax.set_title("Per-layer entropy, peer 0 (solid) vs peer 1 (dashed)")
ax.legend(fontsize=7, loc="best"); plt.tight_layout(); plt.show()

fig, ax = plt.subplots(figsize=(8, 3.5))
for color, layer in zip(colors, layers):
    ax.plot(epochs, [m[layer] for m in mus], marker="o", color=color, label=short(layer))
ax.axhline(0.5 * hp.b, color="grey", lw=0.8)
ax.set_xlabel("epoch"); ax.set_ylabel("μ of peer 0 (share it keeps)")
ax.set_title(f"Layer-wise μ = b·sigmoid(a·ΔH), a = {hp.a:g}")
ax.legend(fontsize=7); plt.tight_layout(); plt.show()"""

COMPARE_MD = """## PCRec-LW vs the same network alone

The alone run is the served peer's twin: same initialisation (seed 11), data order and
learning rate, no partner. One seed on small data: read the gap as an example, not as a
result (see `results/pcrec_*.md` for the benchmark)."""

COMPARE = """rows = {}
for arg, name in (("variant=none", "SASRec alone"), ("variant=lw", "PCRec-LW"),
                  ("variant=pw", "PCRec-PW")):
    res = experiment.run(config(arg), os.path.join(WORKDIR, arg.split("=")[1]),
                         progress=False)
    rows[name] = res["test"]
print(M.format_table(rows, columns=[f"all/{m}@{k}" for m in ("mrr", "hr", "ndcg")
                                    for k in (5, 20)]))"""


def main():
    write("pcrec", [md(INTRO), code(SETUP), md(TRAIN_MD), code(TRAIN), md(PLOT_MD), code(PLOT), md(COMPARE_MD), code(COMPARE)])


if __name__ == "__main__":
    main()
