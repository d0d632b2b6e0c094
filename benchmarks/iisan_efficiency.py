r"""IISAN's efficiency claim (Fu et al., SIGIR 2024, abstract, §5.3, Table 1; spec iisan.md
§1.10, §1.14–1.15): full fine-tuning (FFT) vs Adapter / LoRA / BitFit vs IISAN (towers
live) vs IISAN (cached) on the same towers.

Two parts, side by side in one table:

* **paper scale, abstract** — BERT-base + ViT-B/16, 32 users x 11 items, 30 tokens,
  224 x 224 images: trainable parameters, and the compiled training step's memory and FLOPs
  from :func:`jaxrec.train.memory.step_cost` (XLA's analyses of ``ShapeDtypeStruct``
  inputs: no weight is allocated and nothing runs, so this works on a CPU);
* **measured, tiny towers** — the same step run for real on random-init 4-block towers
  (width 32, 16 x 16 images) and the synthetic task, seconds per step (median of
  ``--steps`` after compilation).

Four more rows put the baselines under the live towers' memory options (``tower_dtype=
bfloat16,remat``: bf16 activations as under the paper's fp16 autocast, and per-block
rematerialisation), the same options for FFT, Adapter and LoRA so the comparison stays fair,
plus IISAN (uncached) with bf16 towers. The "saved for backward" column is what JAX's
autodiff keeps from the forward pass (the vjp residuals, traced only), next to what XLA's
compiled step holds at once (temporaries): the two can order the methods differently.

TPME uses the paper's weights (time 0.45, parameters 0.1, memory 0.45) over the six rows,
once with the measured tiny-tower time and once with paper-scale FLOPs as the time axis.

Command (the committed table; rows computed beforehand with ``--rows`` into the cache):
  .venv/bin/python benchmarks/iisan_efficiency.py --cache_dir=/tmp/iisan_eff --steps=5 --out=results/iisan_efficiency.md

Each row's numbers can be kept in ``--cache_dir`` (one JSON per row, reused when present), so
rows can be computed by separate processes (``--rows``) and the table assembled by a final
run; paper-scale compilation takes minutes per baseline on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import config_util
from jaxrec.data.tasks import build_task
from jaxrec.methods import iisan
from jaxrec.metrics import tpme
from jaxrec.peft import freeze
from jaxrec.train.memory import format_bytes, step_cost

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "iisan.py")
ROWS = (("FFT", "variant=fft"), ("Adapter", "variant=adapter"), ("LoRA", "variant=lora"),
        ("BitFit", "variant=bitfit"), ("IISAN (uncached)", "variant=iisan,cached=0"),
        ("IISAN (cached)", "variant=iisan,cached=1"),
        # The memory options of the live towers (config tower_dtype / remat), the same for
        # every baseline so the comparison stays fair: bf16 activations (the paper's fp16
        # autocast) and per-block rematerialisation.
        ("FFT (bf16 + remat)", "variant=fft,tower_dtype=bfloat16,remat"),
        ("Adapter (bf16 + remat)", "variant=adapter,tower_dtype=bfloat16,remat"),
        ("LoRA (bf16 + remat)", "variant=lora,tower_dtype=bfloat16,remat"),
        ("IISAN (uncached; bf16)", "variant=iisan,cached=0,tower_dtype=bfloat16"))
# The abstract's numbers (spec §1.15): GPU memory and seconds per epoch.
PAPER = {"FFT": ("47 GB", "443 s"), "Adapter": ("37-39 GB", "350-380 s"),
         "LoRA": ("37-39 GB", "350-380 s"), "IISAN (cached)": ("3 GB", "22 s")}


def abstract_state(spec):
    """The method state and frozen consts as ShapeDtypeStructs (nothing allocated)."""
    params = iisan.init_params(spec, jax.random.key(0), abstract=True)
    trainable, frozen = freeze.split_trainable(params, iisan.labels_of(spec, params))
    tx = iisan.make_optimizer(spec, trainable)
    state = iisan.State(step=jax.ShapeDtypeStruct((), jnp.int32), params=trainable,
                        opt_state=jax.eval_shape(tx.init, trainable), spec=spec, tx=tx)
    return state, frozen


def paper_inputs(arg: str, users: int, num_items: int):
    """(spec, abstract state, abstract step inputs) of one training step at the paper's shapes."""
    c = config_util.load_config_file(CONFIG, f"{arg},towers=base")
    spec = iisan.build_spec(c, num_items)
    state, frozen = abstract_state(spec)
    l = spec.net.user_cfg.state_len
    content = iisan.example_content(spec, users * (l + 1), abstract=True)
    ids = jax.ShapeDtypeStruct((users, l + 1), jnp.int32)
    log_mask = jax.ShapeDtypeStruct((users, l), jnp.int32)
    log_pop = jax.ShapeDtypeStruct((num_items + 1,), jnp.float32)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return spec, state, dict(content=content, ids=ids, log_mask=log_mask, frozen=frozen,
                             log_pop=log_pop, rng=rng)


def paper_scale(arg: str, users: int, num_items: int):
    """(trainable params, StepCost) of one training step at the paper's shapes."""
    _, state, x = paper_inputs(arg, users, num_items)
    cost = step_cost(iisan.step_on_content, state, x["content"], x["ids"], x["log_mask"],
                     x["frozen"], x["log_pop"], x["rng"], donate_argnums=(0,))
    return freeze.count_params(state.params)[0], cost


def saved_residual_bytes(arg: str, users: int, num_items: int) -> int:
    """Bytes JAX saves for the backward pass of the loss at the paper's shapes (traced only).

    The leaves of the ``vjp`` closure are the residuals: activations kept from the forward
    pass for the backward one. Inputs kept as they are (frozen weights, the batch) are not
    counted; they are arguments of the step anyway. This is what autodiff *asks* to keep,
    before XLA's buffer assignment decides what is live at once (the temporaries column).
    """
    spec, state, x = paper_inputs(arg, users, num_items)

    def pullback(params, frozen, content, ids, log_mask, log_pop, rng):
        loss = lambda p: iisan.loss_on_content(p, frozen, spec, content, ids, log_mask, log_pop, rng)
        return jax.vjp(loss, params, has_aux=True)[1]

    closed = jax.make_jaxpr(pullback)(state.params, x["frozen"], x["content"], x["ids"],
                                      x["log_mask"], x["log_pop"], x["rng"])
    inputs = {id(v) for v in closed.jaxpr.invars}
    total = 0
    for v in closed.jaxpr.outvars:
        aval = getattr(v, "aval", None)
        if id(v) in inputs or not hasattr(aval, "shape"):
            continue
        if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
            continue
        total += int(np.prod(aval.shape, dtype=np.int64)) * aval.dtype.itemsize
    return total


def measured(arg: str, task_cache: dict, users: int, steps: int) -> float:
    """Median seconds per training step of the tiny-tower model on the synthetic task."""
    c = config_util.load_config_file(CONFIG, f"{arg},towers=tiny")
    c.dataset.options.preset = "tiny"
    c.train.batch_size = users
    key = "task"
    if key not in task_cache:
        task_cache[key] = build_task(c)
    task = task_cache[key]
    state = iisan.init(jax.random.key(0), task, c)
    consts = iisan.make_consts(c, task)
    step = jax.jit(iisan.train_step, donate_argnums=0)
    batch = task.example_batch()
    state, m = step(state, batch, jax.random.key(1), consts)        # compile
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch, jax.random.key(i), consts)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=32, help="users per batch (x 11 items)")
    ap.add_argument("--num_items", type=int, default=20314, help="catalogue size (Scientific)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per tiny model")
    ap.add_argument("--out", default="", help="write the Markdown table here")
    ap.add_argument("--cache_dir", default="", help="keep / reuse each row's numbers here")
    ap.add_argument("--rows", default="", help="comma-separated row names to compute only "
                    "(with --cache_dir; no table)")
    ap.add_argument("--retime", action="store_true", help="re-measure the tiny-tower step "
                    "time of cached rows in this process (one load for all rows)")
    args = ap.parse_args()

    wanted = [r for r in args.rows.split(",") if r] or [n for n, _ in ROWS]
    unknown = set(wanted) - {n for n, _ in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {[n for n, _ in ROWS]}")
    rows, task_cache = [], {}
    for name, arg in ROWS:
        if name not in wanted:
            continue
        path = os.path.join(args.cache_dir, re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".json")
        if args.cache_dir and os.path.exists(path):
            with open(path) as f:
                row = json.load(f)
            if "resid" not in row:
                row["resid"] = saved_residual_bytes(arg, args.users, args.num_items)
                with open(path, "w") as f:
                    json.dump(row, f)
            if args.retime:
                # Re-measure the tiny-tower step here, so every row's time comes from one
                # process under the same machine load (the paper-scale numbers are exact).
                row["sec"] = measured(arg, task_cache, args.users, args.steps)
                print(f"{name}: tiny step {row['sec'] * 1e3:.1f} ms", flush=True)
            rows.append(row)
            continue
        t0 = time.time()
        n_train, cost = paper_scale(arg, args.users, args.num_items)
        sec = measured(arg, task_cache, args.users, args.steps)
        row = dict(name=name, params=n_train, peak=cost.peak_bytes, temp=cost.temp_bytes,
                   args=cost.argument_bytes, flops=cost.flops, sec=sec,
                   resid=saved_residual_bytes(arg, args.users, args.num_items),
                   setting=dict(users=args.users, num_items=args.num_items, steps=args.steps))
        rows.append(row)
        if args.cache_dir:
            os.makedirs(args.cache_dir, exist_ok=True)
            with open(path, "w") as f:
                json.dump(row, f)
        print(f"{name}: {n_train:,} trainable, peak {format_bytes(cost.peak_bytes)}, "
              f"{cost.flops / 1e12:.2f} TFLOP, tiny step {sec * 1e3:.1f} ms "
              f"({time.time() - t0:.0f} s)", flush=True)
    if args.rows:
        return

    t_meas = tpme([r["sec"] for r in rows], [r["params"] for r in rows], [r["peak"] for r in rows])
    t_flop = tpme([r["flops"] for r in rows], [r["params"] for r in rows], [r["peak"] for r in rows])
    head = ("| method | trainable params | step memory (peak) | of which temporaries "
            "| saved for backward (JAX) | step FLOPs "
            "| tiny-tower s/step | TPME (time = tiny s/step) | TPME (time = FLOPs) | paper: memory, s/epoch |")
    lines = [head, "|" + "---|" * 10]
    for r, a, b in zip(rows, t_meas, t_flop):
        paper = PAPER.get(r["name"], ("", ""))
        lines.append(f"| {r['name']} | {r['params']:,} | {format_bytes(r['peak'])} | "
                     f"{format_bytes(r['temp'])} | {format_bytes(r['resid'])} | "
                     f"{r['flops'] / 1e12:.3f} T | {r['sec'] * 1e3:.1f} ms | "
                     f"{a:.3f} | {b:.3f} | {', '.join(p for p in paper if p)} |")
    by = {r["name"]: r for r in rows}
    fft, cached, live = by["FFT"], by["IISAN (cached)"], by["IISAN (uncached)"]
    ratios = [
        f"FFT / IISAN (uncached) step memory: {fft['peak'] / live['peak']:.1f}x "
        f"(target >= 16x, paper 47 GB / 3 GB)",
        f"FFT / IISAN (cached) step memory: {fft['peak'] / cached['peak']:.1f}x",
        f"FFT / IISAN (cached) step FLOPs: {fft['flops'] / cached['flops']:.0f}x "
        f"(target >= 20x in time, paper 443 s / 22 s per epoch)",
        f"FFT / IISAN (cached) measured tiny-tower step time: {fft['sec'] / cached['sec']:.1f}x",
        f"FFT / IISAN (uncached) measured tiny-tower step time: {fft['sec'] / live['sec']:.1f}x",
    ]
    for suffix in ("", " (bf16 + remat)"):
        f = by.get("FFT" + suffix)
        for name in ("Adapter", "LoRA"):
            r = by.get(name + suffix)
            if f is None or r is None:
                continue
            between = live["peak"] <= r["peak"] <= f["peak"]
            ratios.append(f"{name}{suffix}: memory {f['peak'] / r['peak']:.2f}x below FFT{suffix}, "
                          f"{r['peak'] / live['peak']:.1f}x above IISAN (uncached): "
                          f"{'between them' if between else 'NOT between them'}; saved for "
                          f"backward {f['resid'] / r['resid']:.2f}x below FFT{suffix}")
    text = "\n".join(lines) + "\n\n" + "\n".join("- " + s for s in ratios)
    text += (f"\n\nPaper scale: BERT-base + ViT-B/16 (float32 unless a row says bf16: bf16 "
             f"tower activations, float32 weights and Adam state; remat: every tower block "
             f"recomputed in the backward pass), {args.users} users x 11 items, 30 "
             f"tokens, 224x224 images, {args.num_items} items, Adam; memory = arguments + outputs - "
             f"donated + temporaries of the compiled step (XLA CPU backend); saved for backward = "
             f"the loss's vjp residuals as traced by JAX (inputs excluded), before XLA schedules "
             f"them; FLOPs = XLA cost analysis. Tiny towers: 4 blocks x 32 wide, 16x16 images, synthetic 'tiny' task, "
             f"{args.users} users x 11 items, median of {args.steps} steps on this machine's CPU.")
    if args.cache_dir:
        text += (" Rows were computed by separate processes (--rows) into --cache_dir and "
                 "assembled here; without --retime their tiny-tower times come from those "
                 "processes, under whatever load the machine had then.")
    print(text)
    if args.out:
        from benchmarks.report import write_markdown
        write_markdown(args.out, "IISAN efficiency: FFT vs PEFT vs IISAN", text)


if __name__ == "__main__":
    main()
