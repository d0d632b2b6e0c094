"""LEA's environment on Hugging Face decoder checkpoints whose tokenizers have their own special
ids (Llama-3 style: no pad, bos/eos after the vocabulary; Gemma style: pad 0, eos 1, bos 2):
every input starts with the tokenizer's bos, item sentences end with its eos, padding uses its
pad (eos without one); the frozen decoder leaves stay bfloat16 while the trained ones are
float32; two recommender steps through ``jaxrec.main`` with the stage built on the way."""

import json
import os

import jax
import numpy as np
import pytest

from jaxrec.backbones import decoder_lm, frozen_decoder
from jaxrec.methods import lea
from jaxrec.peft import freeze
from tests.methods.hf_decoder import write_decoder
from tests.train.helpers import run_main

STYLES = ("llama3", "gemma")
WANT = {"llama3": (320, 321, 321), "gemma": (2, 1, 0)}          # bos, eos, pad


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for style in STYLES:
        d = tmp_path_factory.mktemp(style)
        out[style] = (str(d), write_decoder(d, style))
    return out


@pytest.mark.parametrize("style", STYLES)
def test_inputs_use_the_tokenizers_special_ids(checkpoints, style, tiny):
    ckpt, tok = checkpoints[style]
    section = decoder_lm.default_section(checkpoint=ckpt)
    section.frozen_dtype = "bfloat16"
    dec = frozen_decoder.load(section, [])
    bos, eos, pad = WANT[style]
    assert lea.special_ids(dec) == {"bos": bos, "pad": pad}
    texts = decoder_lm.item_texts(tiny.items, 6)
    s = lea.default_section()
    ids, mask, loss = lea.item_sentences(dec, texts, s.template, 96)
    v = dec.config.vocab_size
    for i, t in enumerate(texts):
        real = ids[i][mask[i] == 1]
        after = tok.encode("is " + t, add_special_tokens=False)
        np.testing.assert_array_equal(real, [bos, v + i] + after + [eos])
        assert (ids[i][mask[i] == 0] == pad).all()
    state = np.array([[3, 1, tiny.num_items], [tiny.num_items] * 3])
    p_ids, p_mask, _ = lea.prefix_tokens(state, tiny.num_items, v, **lea.special_ids(dec))
    np.testing.assert_array_equal(p_ids, [[bos, v + 3, v + 1, pad], [bos, pad, pad, pad]])
    # Frozen decoder leaves keep the checkpoint's bfloat16, trained ones are float32.
    model = lea.build_model(dec, tiny.num_items, s)
    params = lea.init_params(model, dec, 0)
    train, frozen = freeze.split_trainable(params, freeze.param_labels(params, lea.TRAINABLE["state"]))
    assert all(x.dtype == np.dtype("bfloat16") for x in jax.tree.leaves(frozen["decoder"]))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(train))
    np.testing.assert_array_equal(np.asarray(params["decoder"]["embed_tokens"]["embedding"]),
                                  np.asarray(dec.params["embed_tokens"]["embedding"]))


@pytest.mark.parametrize("style", STYLES)
def test_two_steps_through_main(checkpoints, style, tmp_path):
    ckpt, _ = checkpoints[style]
    cache = tmp_path / "cache"
    out = run_main([f"--config=configs/lea.py:smoke,decoder_checkpoint={ckpt}", "--config.train.num_steps=2",
                    "--config.train.eval_every=2", f"--config.lea.cache_dir={cache}"], tmp_path / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(tmp_path / "run" / "results.json"))
    assert res["steps_done"] == 2
    names = sorted(os.listdir(cache))
    assert [n[:4] for n in names] == ["aug-", "env-"], names          # nothing half-written
    info = json.load(open(cache / names[0] / "info.json"))
    assert info["decoder"] == ckpt and 0.0 <= info["reward_acc"] <= 1.0
