"""Writes colabs/iisan.ipynb (unexecuted; tests/test_notebooks.py runs it in smoke mode).

    .venv/bin/python colabs/make_iisan_notebook.py
"""

from notebook import code, md, write

INTRO = """# IISAN: side networks over frozen towers, and what they save

This notebook uses only the `jaxrec` library. It trains IISAN (Fu et al., "IISAN:
Efficiently Adapting Multimodal Representation for Sequential Recommendation with Decoupled
PEFT", SIGIR 2024) on the embedded synthetic data, whose items have titles and 16x16 images:

1. the frozen text (BERT-style) and image (ViT) towers run **once** over all items and their
   tapped [CLS] states go to a cache;
2. IISAN trains its gated side networks and a SASRec user encoder from that cache, while
   full fine-tuning (FFT) trains the same towers end to end;
3. the compiled training steps' memory and the measured step times are compared, and the
   learned gates (initialised at 0.5) are drawn.

The towers are tiny random-init ones (CPU-sized); `benchmarks/iisan_efficiency.py` does the
same accounting at the paper's BERT-base + ViT-base shapes. Set `JAXREC_SMOKE=1` for a
few-step version; the test suite runs it that way."""

SETUP = """import os
import tempfile
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxrec
from jaxrec import config_util, experiment
from jaxrec.data import tasks
from jaxrec.methods import iisan
from jaxrec.peft.side_adapters import gate_values
from jaxrec.train.memory import compiled_cost, format_bytes

SMOKE = os.environ.get("JAXREC_SMOKE") == "1"
WORKDIR = os.environ.get("JAXREC_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="iisan_colab_")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(jaxrec.__file__)), "configs")


def config(arg):
    \"\"\"configs/iisan.py:<arg> with tiny towers on the tiny synthetic data.\"\"\"
    c = config_util.load_config_file(os.path.join(CONFIGS, "iisan.py"), arg + ",smoke")
    c.train.batch_size = 8 if SMOKE else 32
    c.train.num_steps = 3 if SMOKE else 300
    c.train.eval_every = c.train.num_steps
    c.optim.lr = 1e-3
    return c

print("smoke mode" if SMOKE else "full mode", "- runs under", WORKDIR)"""

CACHE_MD = """## The tap cache

`make_consts` of cached IISAN runs both frozen towers over every item once and keeps the
tapped [CLS] vectors (embedding output + every second block: 3 taps of the 4-block tiny
towers, 7 of BERT-base), bfloat16 by default, row 0 = padding."""

CACHE = """c = config("variant=iisan")
task = tasks.build_task(c)
t0 = time.time()
consts = iisan.make_consts(c, task)
taps = consts["items"]
print(f"{task.num_items} items: cache built in {time.time() - t0:.1f} s")
for name, a in taps.items():
    print(f"  {name}: {a.shape} {a.dtype}, {format_bytes(a.nbytes)}")"""

TRAIN_MD = """## Training IISAN (cached and live towers) and FFT

Each run goes through the trainer (`jaxrec.main` does the same). The in-batch softmax over
the batch's `B x 11` items, with logQ correction and history masking, is IISAN's objective
for every variant."""

TRAIN = """rows, states = {}, {}
variants = [("variant=iisan", "IISAN (cached)"), ("variant=iisan,cached=0", "IISAN (uncached)"),
            ("variant=fft", "FFT")]
for arg, name in (variants[::2] if SMOKE else variants):    # smoke: cached IISAN and FFT
    res = experiment.run(config(arg), os.path.join(WORKDIR, name.replace(" ", "_")), task=task,
                         progress=False)
    rows[name], states[name] = res["test"], res["state"]
    print(f"{name}: test HR@10 {res['test'].get('all/hr@10', float('nan')):.4f}")"""

COST_MD = """## Memory and time of one training step

Memory from XLA's analysis of the compiled step (arguments + outputs − donated +
temporaries; nothing is executed for it), time measured after compilation. IISAN keeps no
tower activations for a backward pass, and the cached variant does not run the towers at
all."""

COST = """def measure(arg, steps=3 if SMOKE else 20):
    c = config(arg)
    state = iisan.init(jax.random.key(0), task, c)
    k = iisan.make_consts(c, task)
    batch = task.example_batch()
    rng = jax.random.key(1)
    # One compilation serves both the memory analysis and the timing.
    step = jax.jit(iisan.train_step, donate_argnums=0).lower(state, batch, rng, k).compile()
    cost = compiled_cost(step)
    state, m = step(state, batch, rng, k); jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch, rng, k); jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return cost, float(np.median(times))

costs = {name: measure(arg) for arg, name in (("variant=fft", "FFT"),
                                              ("variant=iisan,cached=0", "IISAN (uncached)"),
                                              ("variant=iisan", "IISAN (cached)"))}
names = list(costs)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].bar(names, [costs[n][0].peak_bytes / 2**20 for n in names], color=["C3", "C0", "C2"])
axes[0].set_ylabel("step memory (MiB)"); axes[0].set_title("compiled step memory")
axes[1].bar(names, [costs[n][1] * 1e3 for n in names], color=["C3", "C0", "C2"])
axes[1].set_ylabel("ms per step"); axes[1].set_title("measured step time (tiny towers, CPU)")
for ax in axes:
    ax.tick_params(axis="x", labelsize=8)
plt.tight_layout(); plt.show()
for n in names:
    print(f"{n}: {format_bytes(costs[n][0].peak_bytes)}, {costs[n][1] * 1e3:.1f} ms")"""

GATES_MD = """## The learned gates

Every SANB has a scalar gate `sigmoid(θ / 0.1)`, 0.5 at initialisation. Intra-modal gates
weigh the backbone tap against the previous side state; inter-modal gates weigh the image
tap against the text tap."""

GATES = """g = gate_values(states["IISAN (cached)"].params["tower"])
fig, ax = plt.subplots(figsize=(7, 3.5))
for net, values in g.items():
    ax.plot(range(len(values)), values, marker="o", label=net)
ax.axhline(0.5, color="grey", lw=0.8, ls="--")
ax.set_xlabel("tap (0 = embedding output)"); ax.set_ylabel("gate value")
ax.set_title("IISAN gates after training"); ax.legend(); plt.tight_layout(); plt.show()"""


def main():
    write("iisan", [md(INTRO), code(SETUP), md(CACHE_MD), code(CACHE), md(TRAIN_MD), code(TRAIN), md(COST_MD), code(COST), md(GATES_MD), code(GATES)])


if __name__ == "__main__":
    main()
