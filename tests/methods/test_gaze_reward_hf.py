"""GazeReward on Hugging Face checkpoints written here: a tiny FlaxLlamaForCausalLM /
FlaxGemmaForCausalLM (PyTorch-layout safetensors + config.json) with a BPE tokenizer trained
here whose special ids are not jaxrec's (Llama-3-style without a pad token, Gemma-style).

The decoder's shape comes from the checkpoint and its forward equals the HF Flax model's;
training goes through ``jaxrec.main``; frozen weights are jit arguments (the compiled step
does not grow with them); bad directories give one ``error:`` line and status 2.
"""
import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest
import transformers

from jaxrec.configs import gaze_reward as gaze_config
from jaxrec.backbones.llama import LlamaModel
from jaxrec.data import preferences as prefs
from jaxrec.data import tasks
from jaxrec.methods import gaze_reward as gr
from tests.backbones.test_llama import _hf_config, _write_checkpoint
from tests.data_layer.test_preferences import train_bpe
from tests.numerics import assert_close_to_scale
from tests.train.helpers import run_main

# The smoke config's pairs (60 pairs, data seed 0): the tokenizers are trained on their text.
SMOKE_PAIRS = prefs.synthetic_pairs(60, 0)
CORPUS = [f"{prefs.USER} {p} {prefs.ASSISTANT} {c} {r}"
          for p, c, r in zip(SMOKE_PAIRS.prompt, SMOKE_PAIRS.chosen, SMOKE_PAIRS.rejected)]
STYLES = {"llama3": "llama", "gemma": "gemma"}


def write_decoder(path, style: str, extra_vocab: int = 5, vocab_size: int | None = None):
    """An HF checkpoint of ``STYLES[style]`` (2 layers, width 32, 128 positions) whose embedding
    has ``extra_vocab`` rows more than the tokenizer (as hub models pad their vocabulary), or
    ``vocab_size`` rows. Returns ``(hf_model, hf_params, tokenizer)``."""
    tk, fast = train_bpe(CORPUS, style, 400 if style == "llama3" else 300)
    cfg = _hf_config(STYLES[style])
    cfg.vocab_size = vocab_size or tk.get_vocab_size() + extra_vocab
    cfg.max_position_embeddings = 128
    model = getattr(transformers, "FlaxGemmaForCausalLM" if style == "gemma" else "FlaxLlamaForCausalLM")(cfg, seed=0)
    hf_params, _ = _write_checkpoint(model, cfg, path, seed=3)
    fast.save_pretrained(str(path))
    return model, hf_params, tk


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cache = {}

    def get(style):
        if style not in cache:
            path = tmp_path_factory.mktemp(style)
            cache[style] = (path,) + write_decoder(path, style)
        return cache[style]
    return get


def build_task(c) -> tasks.Task:
    parts = gr.preference_task(None, c)
    return tasks.Task(name="synthetic", kind=c.data.kind, num_items=1, batch_size=c.train.batch_size,
                      train=parts.train, validation=parts.validation, test=parts.test,
                      item_freq=np.zeros(1, np.int64), items=None, stats={}, extras=parts.extras)


@pytest.mark.parametrize("style", ["llama3", "gemma"])
def test_decoder_forward_and_reward_equal_hf_flax(checkpoints, style):
    """The reward model's decoder is the checkpoint's (shape from its config.json, not
    config.model: set here to another size), fed the tokenizer's own special ids; its hidden
    states equal the HF Flax model's and the reward is the score head at the last real token."""
    path, hf_model, hf_params, tk = checkpoints(style)
    c = gaze_config.get_config(f"smoke,variant=add,decoder_checkpoint={path}")
    c.model.hidden_size, c.model.num_layers = 16, 1          # unused with a checkpoint
    task = build_task(c)
    state, consts = gr.init(jax.random.key(0), task, c), gr.make_consts(c, task)
    cfg = state.model.config
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size, cfg.model_type) == (
        32, 2, hf_model.config.vocab_size, STYLES[style])
    assert c.model.regime == "lora" and cfg.lora_rank == 8
    n = tk.get_vocab_size()
    bos, eos = {"llama3": (n - 2, n - 1), "gemma": (n - 1, n - 2)}[style]
    batch = task.example_batch(4)
    ids, mask = batch["chosen_ids"], batch["chosen_mask"]
    lengths = mask.sum(1)
    short = lengths < ids.shape[1]                       # the others were cut at max_len, eos too
    assert (ids[:, 0] == bos).all() and short.any() and (ids[short, lengths[short] - 1] == eos).all()
    assert ids.max() < n

    params = gr.full_params(state, consts)["params"]
    ours = LlamaModel(cfg).apply({"params": params["decoder"]}, ids, mask, return_logits=False).last_hidden
    ref = hf_model(ids, attention_mask=mask, params=hf_params, output_hidden_states=True).hidden_states[-1]
    real = mask.astype(bool)
    assert_close_to_scale(np.asarray(ours)[real], np.asarray(ref)[real], 1e-4)

    # GazeAdd with zero gaze reads the text alone; the reward pools the last real token.
    zero = dict(batch, chosen_gaze=0 * batch["chosen_gaze"], rejected_gaze=0 * batch["rejected_gaze"])
    no_proj = dict(params, et_proj=jax.tree.map(np.zeros_like, params["et_proj"]))
    r = np.asarray(gr.rewards(state.model, {"params": no_proj}, zero)[0])
    last = np.asarray(ref)[np.arange(4), lengths - 1]
    # et_proj of zeros ends in a LayerNorm with bias 0: it adds exactly 0
    want = last @ np.asarray(params["score"]["kernel"])[:, 0] + np.asarray(params["score"]["bias"])[0]
    assert_close_to_scale(r, want, 1e-4)


def _constant_elements(hlo: str) -> int:
    """Total elements of every constant in StableHLO text (``stablehlo.constant ... : tensor<AxBxf32>``)."""
    total = 0
    for line in hlo.splitlines():
        if "stablehlo.constant" not in line:
            continue
        m = re.search(r":\s*tensor<([0-9x]*)[a-z]", line)
        dims = [int(x) for x in m.group(1).split("x") if x] if m else []
        total += int(np.prod(dims)) if dims else 1
    return total


def test_compiled_step_does_not_grow_with_frozen_weights():
    """Frozen decoder weights are jit arguments (consts), never closed over: the lowered train
    step's constants stay a few hundred scalars (iotas, scalars of the optimizer) for a decoder
    4x wider, while the frozen weights grow 10x (closed-over arrays would be compiled in:
    ~30 GB for an 8B model). The control lowers the same step with the consts closed over."""
    sizes = {}
    for width in (32, 128):
        c = gaze_config.get_config("smoke,regime=frozen")
        c.data.num_pairs = 20
        c.model.hidden_size, c.model.intermediate_size = width, 2 * width
        task = build_task(c)
        state, consts = gr.init(jax.random.key(0), task, c), gr.make_consts(c, task)
        batch, rng = task.example_batch(4), jax.random.key(0)
        lowered = jax.jit(gr.train_step).lower(state, batch, rng, consts)
        n_frozen = sum(x.size for x in jax.tree.leaves(consts["frozen"]))
        sizes[width] = (_constant_elements(lowered.as_text()), n_frozen)
    closed = jax.jit(lambda s, b, r: gr.train_step(s, b, r, consts)).lower(state, batch, rng)
    (c32, f32), (c128, f128) = sizes[32], sizes[128]
    assert f128 > 10 * f32 > 10_000                    # the frozen weights grew ...
    assert max(c32, c128) < 1_000 and c128 - c32 < 100  # ... the compiled constants did not
    assert _constant_elements(closed.as_text()) >= f128   # the measure sees closed-over weights


@pytest.mark.parametrize("style", ["llama3", "gemma"])
def test_trains_two_steps_through_main(checkpoints, style, tmp_path):
    path = checkpoints(style)[0]
    out = run_main([f"--config=configs/gaze_reward.py:smoke,decoder_checkpoint={path}",
                    "--config.train.num_steps=2", "--config.train.eval_every=2"], tmp_path / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(tmp_path / "run" / "results.json"))
    assert res["steps_done"] == 2 and 0.0 <= res["test"]["accuracy"] <= 1.0
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl")
              if json.loads(line)["split"] == "train"]
    assert losses and all(np.isfinite(losses))


def _one_error_line(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def test_bad_directories_give_one_error_line(tmp_path):
    """A tokenizer with more ids than the model's embedding, a checkpoint without config.json
    and a malformed ET1 predictor directory: each one ``error:`` line naming the directory and
    the file / field, exit status 2."""
    small = tmp_path / "small_vocab"
    write_decoder(small, "llama3", vocab_size=64)
    out = run_main([f"--config=configs/gaze_reward.py:smoke,decoder_checkpoint={small}"], tmp_path / "r1")
    _one_error_line(out, str(small), "tokenizer.json", "vocab_size")

    no_cfg = tmp_path / "no_config"
    write_decoder(no_cfg, "llama3")
    os.remove(no_cfg / "config.json")
    out = run_main([f"--config=configs/gaze_reward.py:smoke,decoder_checkpoint={no_cfg}"], tmp_path / "r2")
    _one_error_line(out, str(no_cfg), "config.json")

    et1 = tmp_path / "et1"
    et1.mkdir()
    (et1 / "config.json").write_text(json.dumps({"model_type": "jaxrec_et1_bilstm", "format_version": 1,
                                                 "vocab_size": 10, "embed_dim": 4, "num_layers": 1,
                                                 "head_size": 4, "features": ["TRT"]}))
    out = run_main([f"--config=configs/gaze_reward.py:smoke,predictor=et1:{et1},features=fcomb1"], tmp_path / "r3")
    _one_error_line(out, str(et1 / "config.json"), "hidden_size")
