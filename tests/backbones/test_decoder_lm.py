"""The shared offline decoder (jaxrec.backbones.decoder_lm): exact tokenizer round trip,
padding layouts, a pretraining loss that falls, save/load bit-exact and atomic in Hugging Face
Llama layout (transformers reads the config and tokenizer; its Flax Llama on the saved weights
gives jaxrec's logits), the former layout still read, the corpus cache, parameter merging
errors, item texts, the command line."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import storage
from jaxrec.backbones import decoder_lm as dlm
from jaxrec.data.events import ItemInfo
from jaxrec.data.preferences import BOS, EOS, PAD, PieceTokenizer
from tests.numerics import assert_close_to_scale

TEXTS = ["Toy Story (1995) | genres: animation, children's, comedy",
         "GoldenEye (1995) | genres: action, adventure, thriller",
         "Four Rooms (1995) | genres: thriller"] * 4
SECTION = dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, pretrain_steps=40,
               batch_size=8, lr=1e-2, max_len=24)


@pytest.fixture(scope="module")
def decoder():
    return dlm.pretrain(TEXTS, dlm.default_section(**SECTION))


def test_tokenizer_marks_word_starts_and_decodes_exactly():
    tok = PieceTokenizer(TEXTS, 4, "##")          # the former spelling of the mark
    ids = tok.encode("GoldenEye (1995)")
    # "GoldenEye" -> ▁Gold enEy e ; "(1995)" -> ▁(199 5)  (ids as the former Gold ##enEy ##e ...)
    assert [p for i in ids for p, j in tok.vocab.items() if j == i] == ["▁Gold", "enEy", "e", "▁(199", "5)"]
    for t in TEXTS[:3]:
        assert tok.decode([BOS] + tok.encode(t) + [EOS, 17]) == t     # stops at </s>
    again = PieceTokenizer.from_json(tok.to_json())
    assert again.vocab == tok.vocab and again.mark == "▁"
    with pytest.raises(ValueError, match="must start with"):
        PieceTokenizer.from_json({"piece": 4, "vocab": ["a", "b"]})


def test_encode_batch_layouts(decoder):
    ids, mask = decoder.encode_batch(["Four Rooms (1995)"], 10)
    n = len(decoder.tokenizer.encode("Four Rooms (1995)")) + 2
    assert mask[0].tolist() == [1] * n + [0] * (10 - n)
    assert ids[0, 0] == BOS and ids[0, n - 1] == EOS and ids[0, n] == PAD
    lids, lmask = decoder.encode_batch(["Four Rooms (1995)"], 10, left_pad=True, eos=False)
    assert lmask[0].tolist() == [0] * (11 - n) + [1] * (n - 1)
    assert lids[0, -1] == decoder.tokenizer.encode("Four Rooms (1995)")[-1]
    tids, tmask = decoder.encode_batch([TEXTS[0]], 5)          # truncated, still ends with </s>
    assert tmask[0].sum() == 5 and tids[0, -1] == EOS


def test_pretraining_loss_falls(decoder):
    assert decoder.info["loss_last"] < 0.5 * decoder.info["loss_first"]
    assert decoder.config.with_lm_head and "lm_head" in decoder.params
    assert "lm_head" not in decoder.backbone_params()


def test_save_load_is_bit_exact(decoder, tmp_path):
    path = dlm.save(decoder, str(tmp_path / "dec"))
    assert sorted(os.listdir(path)) == ["config.json", "jaxrec_decoder.json", "model.safetensors",
                                        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    back = dlm.load(path)
    assert back.config == decoder.config and back.tokenizer.vocab == decoder.tokenizer.vocab
    assert isinstance(back.tokenizer, PieceTokenizer) and back.info["loss_last"] == decoder.info["loss_last"]
    for a, b in zip(jax.tree.leaves(decoder.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids, mask = decoder.encode_batch(TEXTS[:2], 16)
    a = decoder.model().apply({"params": decoder.params}, ids, mask).logits
    b = back.model().apply({"params": back.params}, ids, mask).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _flax_params_from_torch_names(tensors):
    """HF PyTorch tensor names/layouts -> the param tree of transformers' FlaxLlamaForCausalLM."""
    import flax.traverse_util
    flat = {}
    for name, a in tensors.items():
        *mods, last = name.split(".")
        assert last == "weight", name
        if mods[-1] == "embed_tokens":
            flat[(*mods, "embedding")] = a
        elif mods[-1].endswith("_proj") or mods[-1] == "lm_head":
            flat[(*mods, "kernel")] = a.T                   # torch [out, in] -> Flax [in, out]
        else:
            flat[(*mods, "weight")] = a                     # RMSNorm scale
    return flax.traverse_util.unflatten_dict(flat)


def test_saved_directory_is_a_hugging_face_llama(decoder, tmp_path):
    """transformers reads config.json and tokenizer.json, and its own Flax Llama built from the
    saved config with the saved tensors computes jaxrec's logits."""
    import flax.traverse_util
    import transformers
    from safetensors.numpy import load_file
    path = dlm.save(decoder, str(tmp_path / "dec"))
    cfg = transformers.AutoConfig.from_pretrained(path)
    assert isinstance(cfg, transformers.LlamaConfig)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        decoder.config.vocab_size, 16, 1, 2)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (BOS, EOS, PAD)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    for t in TEXTS[:3] + ["GoldenEye (2001) | genres: spy"]:
        assert tok(t)["input_ids"] == [BOS] + decoder.tokenizer.encode(t)
    ids, _ = decoder.encode_batch(TEXTS[:1], 12)
    assert tok.decode(ids[0], skip_special_tokens=True) == decoder.tokenizer.decode(ids[0])
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD, BOS, EOS)

    model = transformers.FlaxLlamaForCausalLM(cfg, seed=0)
    params = _flax_params_from_torch_names(load_file(os.path.join(path, "model.safetensors")))
    want = {k: v.shape for k, v in flax.traverse_util.flatten_dict(model.params).items()}
    assert {k: v.shape for k, v in flax.traverse_util.flatten_dict(params).items()} == want
    ids, mask = decoder.encode_batch(TEXTS[:3], 14, eos=False)
    ids, mask = ids[:, :10], np.ones((3, 10), np.int32)            # unpadded: HF Flax numbers 0..T-1
    theirs = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask), params=params).logits
    ours = decoder.model().apply({"params": decoder.params}, ids, mask).logits
    assert_close_to_scale(ours, theirs, 1e-5)


def test_former_layout_still_loads(decoder, tmp_path):
    """A directory of the former layout (decoder.json + params.npz + jaxrec's own tokenizer
    JSON with '##' continuation marks) loads with the same ids and weights."""
    import dataclasses
    path = tmp_path / "old"
    path.mkdir()
    cfg = {k: v for k, v in dataclasses.asdict(decoder.config).items()
           if isinstance(v, (int, float, str, bool, type(None), tuple, list))}
    (path / "decoder.json").write_text(json.dumps({"format": 1, "config": cfg, "info": {"steps": 40}}))
    vocab = decoder.tokenizer.to_json()["vocab"]
    former = vocab[:6] + [p[1:] if p.startswith("▁") else "##" + p for p in vocab[6:]]
    (path / "tokenizer.json").write_text(json.dumps({"piece": 4, "mark": "##", "vocab": former}))
    storage.save_tree(str(path / "params.npz"), decoder.params)
    back = dlm.load(str(path))
    assert back.tokenizer.vocab == decoder.tokenizer.vocab and back.info["steps"] == 40
    np.testing.assert_array_equal(back.params["lm_head"]["kernel"], decoder.params["lm_head"]["kernel"])
    (path / "decoder.json").write_text(json.dumps({"format": 7, "config": cfg}))
    with pytest.raises(ValueError, match="decoder.json: format 7"):
        dlm.load(str(path))


def test_save_refuses_what_a_llama_directory_cannot_hold(decoder, tmp_path):
    import dataclasses
    lora = dlm.DecoderLM(dataclasses.replace(decoder.config, lora_rank=2), decoder.params, decoder.tokenizer)
    with pytest.raises(ValueError, match="peft_io"):
        dlm.save(lora, str(tmp_path / "x"))
    extra = dict(decoder.params, extra={"w": np.zeros(2)})
    with pytest.raises(ValueError, match="outside the Llama layout"):
        dlm.save(dlm.DecoderLM(decoder.config, extra, decoder.tokenizer), str(tmp_path / "x"))
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_nothing(decoder, tmp_path, monkeypatch):
    from safetensors import numpy as st_numpy

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(st_numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        dlm.save(decoder, str(tmp_path / "dec"))
    assert os.listdir(tmp_path) == []                          # no half-written checkpoint


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        dlm.load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        dlm.load(str(tmp_path))


def test_get_decoder_pretrains_once_then_loads(tmp_path, monkeypatch):
    sec = dlm.default_section(**dict(SECTION, pretrain_steps=5), cache_dir=str(tmp_path))
    first = dlm.get_decoder(sec, TEXTS)
    assert len(os.listdir(tmp_path)) == 1
    monkeypatch.setattr(dlm, "pretrain", lambda *a, **k: pytest.fail("pretrained twice"))
    second = dlm.get_decoder(sec, TEXTS)
    np.testing.assert_array_equal(first.params["norm"]["weight"], second.params["norm"]["weight"])
    # Another corpus or setting is another key.
    assert dlm.cache_key(TEXTS[:3], sec) != dlm.cache_key(TEXTS, sec)
    assert dlm.cache_key(TEXTS, dlm.default_section(**dict(SECTION, pretrain_steps=6))) != dlm.cache_key(TEXTS, sec)
    # A cache of the former layout has another key (it is never misread as this one).
    key = dlm.cache_key(TEXTS, sec)
    monkeypatch.setattr(dlm, "FORMAT", 1)
    assert dlm.cache_key(TEXTS, sec) != key
    # A checkpoint field loads that directory instead.
    sec.checkpoint = second.info["source"]
    assert dlm.get_decoder(sec, ["unused"]).tokenizer.vocab == first.tokenizer.vocab


def test_merge_params_keeps_new_leaves_and_rejects_other_sizes(decoder):
    model = decoder.model(lora_rank=2, with_lm_head=False)
    ids, mask = decoder.encode_batch(TEXTS[:1], 8)
    tmpl = model.init(jax.random.key(1), jnp.asarray(ids))["params"]
    merged = dlm.merge_params(tmpl, decoder.params)
    q = merged["layers_0"]["self_attn"]["q_proj"]
    np.testing.assert_array_equal(q["kernel"], decoder.params["layers_0"]["self_attn"]["q_proj"]["kernel"])
    np.testing.assert_array_equal(q["lora_a"], tmpl["layers_0"]["self_attn"]["q_proj"]["lora_a"])
    assert "lm_head" not in merged
    small = dlm.pretrain(TEXTS[:3], dlm.default_section(**dict(SECTION, hidden_size=8, pretrain_steps=1)))
    with pytest.raises(ValueError, match="embed_tokens/embedding has shape"):
        dlm.merge_params(tmpl, small.params)


def test_item_texts():
    items = ItemInfo(titles=["A (1990)", "B"], genres=[["Drama", "War"], []])
    assert dlm.item_texts(items) == ["A (1990) | genres: drama, war", "B"]
    assert dlm.item_texts(ItemInfo(genres=[["x"]]), fields=("title",)) == ["item 0"]
    with pytest.raises(ValueError, match="unknown field"):
        dlm.item_text(items, 0, ("year",))


def test_hugging_face_directory_loads_with_its_tokenizer(tmp_path):
    """``checkpoint`` may name a Hugging Face Llama directory: weights through load_llama,
    text through its own tokenizer (a word-level tokenizer.json written here)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tests.backbones.test_llama import _hf_config, _write_checkpoint
    # Specials placed after the words, so ids that differ from PieceTokenizer's are caught.
    words = ["genres:", "toy", "story", "comedy", "<pad>", "<s>", "</s>", "<unk>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    hf_cfg = _hf_config("llama")
    _write_checkpoint(transformers.FlaxLlamaForCausalLM(hf_cfg, seed=0), hf_cfg, tmp_path, seed=1)
    fast.save_pretrained(str(tmp_path))
    dec = dlm.get_decoder(dlm.default_section(checkpoint=str(tmp_path)), [])
    assert dec.tokenizer.encode("toy story") == [1, 2]
    assert dec.tokenizer.decode([1, 3, 6, 2]) == "toy comedy"        # stops at </s>
    assert dec.info["special_ids"] == {"pad": 4, "bos": 5, "eos": 6}
    assert (dec.tokenizer.pad_id, dec.tokenizer.bos_id, dec.tokenizer.eos_id) == (4, 5, 6)
    ids, mask = dec.encode_batch(["toy story"], 5)
    assert ids[0].tolist() == [5, 1, 2, 6, 4] and mask[0].tolist() == [1, 1, 1, 1, 0]
    logits = dec.model().apply({"params": dec.params}, jnp.asarray(ids)).logits
    assert logits.shape == (1, 5, hf_cfg.vocab_size)


# ------------------------------------------------------------------------------------ CLI
CLI_FLAGS = ["--hidden_size=16", "--intermediate_size=32", "--num_layers=1", "--num_heads=2",
             "--batch_size=4", "--max_len=16"]


def test_read_texts_lines_and_jsonl(tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("first text\r\n\n  second one \n")
    assert dlm.read_texts(str(lines)) == ["first text", "  second one "]
    jl = tmp_path / "texts.jsonl"
    jl.write_text(json.dumps({"text": "a b", "id": 1}) + "\n\n" + json.dumps({"text": "c"}) + "\n")
    assert dlm.read_texts(str(jl), "text") == ["a b", "c"]
    with pytest.raises(ValueError, match=r"texts.jsonl:1: no field 'body'"):
        dlm.read_texts(str(jl), "body")
    with pytest.raises(ValueError, match=r"texts.txt:1: not valid JSON"):
        dlm.read_texts(str(lines), "text")
    jl.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(ValueError, match=r"texts.jsonl:1: field 'text' must be a string"):
        dlm.read_texts(str(jl), "text")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.txt: no texts"):
        dlm.read_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        dlm.read_texts(str(tmp_path / "missing.txt"))


def test_cli_pretrains_on_a_jsonl_field_and_reports_user_errors(tmp_path, capsys):
    jl = tmp_path / "items.jsonl"
    jl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "dec"
    assert dlm.main(["--texts", str(jl), "--field=text", f"--out={out}", "--pretrain_steps=3"] + CLI_FLAGS) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["corpus"] == len(TEXTS) and info["steps"] == 3 and info["out"] == str(out)
    dec = dlm.load(str(out))
    assert dec.tokenizer.decode(dec.tokenizer.encode(TEXTS[1])) == TEXTS[1]
    assert dec.config.hidden_size == 16 and dec.info["steps"] == 3
    with pytest.raises(SystemExit) as e:
        dlm.main(["--texts", str(jl), "--field=body", f"--out={tmp_path / 'x'}"] + CLI_FLAGS)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "items.jsonl:1: no field 'body'" in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_command_of_the_docstring_runs(tmp_path):
    """``python -m jaxrec.backbones.decoder_lm --texts=texts.txt --out=... --pretrain_steps=N``
    as the docstring writes it (with a tiny architecture)."""
    doc = dlm.main.__doc__
    cmd = next(line.strip() for line in doc.splitlines() if line.strip().startswith("python -m"))
    args = cmd.split()[3:]
    assert [a.split("=")[0] for a in args] == ["--texts", "--out", "--pretrain_steps"]
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    args = ["--texts=texts.txt", "--out=runs/decoder", "--pretrain_steps=2"] + CLI_FLAGS
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxrec.backbones.decoder_lm", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2
    assert dlm.load(str(tmp_path / "runs" / "decoder")).info["corpus"] == len(TEXTS)
