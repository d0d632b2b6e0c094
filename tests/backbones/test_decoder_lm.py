"""The shared offline decoder (jaxrec.backbones.decoder_lm): exact tokenizer round trip,
padding layouts, a pretraining loss that falls, save/load bit-exact and atomic, the corpus
cache, parameter merging errors, item texts."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.backbones import decoder_lm as dlm
from jaxrec.data.events import ItemInfo
from jaxrec.data.preferences import BOS, EOS, PAD, PieceTokenizer

TEXTS = ["Toy Story (1995) | genres: animation, children's, comedy",
         "GoldenEye (1995) | genres: action, adventure, thriller",
         "Four Rooms (1995) | genres: thriller"] * 4
SECTION = dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, pretrain_steps=40,
               batch_size=8, lr=1e-2, max_len=24)


@pytest.fixture(scope="module")
def decoder():
    return dlm.pretrain(TEXTS, dlm.default_section(**SECTION))


def test_tokenizer_marks_continuations_and_decodes_exactly():
    tok = PieceTokenizer(TEXTS, 4, "##")
    ids = tok.encode("GoldenEye (1995)")
    # "GoldenEye" -> Gold ##enEy ##e ; "(1995)" -> (199 ##5)
    assert [p for i in ids for p, j in tok.vocab.items() if j == i] == ["Gold", "##enEy", "##e", "(199", "##5)"]
    for t in TEXTS[:3]:
        assert tok.decode([BOS] + tok.encode(t) + [EOS, 17]) == t     # stops at </s>
    again = PieceTokenizer.from_json(tok.to_json())
    assert again.vocab == tok.vocab and again.mark == "##"
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
    back = dlm.load(path)
    assert back.config == decoder.config and back.tokenizer.vocab == decoder.tokenizer.vocab
    ids, mask = decoder.encode_batch(TEXTS[:2], 16)
    a = decoder.model().apply({"params": decoder.params}, ids, mask).logits
    b = back.model().apply({"params": back.params}, ids, mask).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_failed_save_leaves_nothing(decoder, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        dlm.save(decoder, str(tmp_path / "dec"))
    assert os.listdir(tmp_path) == []                          # no half-written checkpoint


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        dlm.load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="neither decoder.json"):
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
