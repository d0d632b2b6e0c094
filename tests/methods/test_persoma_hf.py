"""PERSOMA on Hugging Face decoder checkpoints whose tokenizers have their own special ids
(a Llama-3-style one without pad, bos/eos after the vocabulary; a Gemma-style one with pad 0,
eos 1, bos 2): prompts start with the tokenizer's bos, targets end with its eos, padding uses
its pad (eos without one), generation stops at its eos (hand-checked on a bigram decoder), the
frozen weights are bfloat16; two training steps through ``jaxrec.main``; a tokenizer that does
not fit the model is one ``error:`` line. Item embeddings from a BERT directory equal the
mean-pooled transformers FlaxBertModel."""

import json

import jax
import numpy as np
import pytest

from jaxrec.data import persoma as pdata
from jaxrec.data import tasks
from jaxrec.methods import persoma
from tests.methods.hf_decoder import train_tokenizer, write_decoder
from tests.train.helpers import get_config, run_main

STYLES = ("llama3", "gemma")
A, B = 100, 101             # two ordinary byte-level tokens of the bigram table


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """style -> (directory, tokenizer, bigram); the decoder maps prompt end -> A -> eos -> B."""
    out = {}
    for style in STYLES:
        tok = train_tokenizer(style)
        last = tok.encode(pdata.PROMPT, add_special_tokens=False)[-1]
        eos = tok.eos_token_id
        assert len({last, A, B, eos, tok.bos_token_id}) == 5
        bigram = {last: A, A: eos, eos: B}
        d = tmp_path_factory.mktemp(style)
        write_decoder(d, style, bigram=bigram)
        out[style] = (str(d), tok, bigram)
    return out


def _arg(ckpt):
    return f"smoke,encoder=hash,n=12,decoder_checkpoint={ckpt}"


@pytest.mark.parametrize("style", STYLES)
def test_special_ids_come_from_the_tokenizer(checkpoints, style, tmp_path):
    ckpt, tok, _ = checkpoints[style]
    config = get_config("persoma.py", _arg(ckpt))
    config.data.emb_cache_dir = str(tmp_path)
    task = tasks.build_task(config)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos        # Llama 3: none -> eos
    assert (bos, eos, pad) == {"llama3": (320, 321, 321), "gemma": (2, 1, 0)}[style]
    assert task.extras["eos_id"] == eos
    prompt = [bos] + tok.encode(pdata.PROMPT, add_special_tokens=False)
    for split in ("train", "validation"):
        a = task.train if split == "train" else task.validation.arrays
        ids, mask = a["prompt_ids"], a["prompt_mask"]
        for i in range(len(ids)):
            np.testing.assert_array_equal(ids[i][mask[i] == 1], prompt)
            assert (ids[i][mask[i] == 0] == pad).all()
            t_ids, t_mask = a["target_ids"][i], a["target_mask"][i]
            real = t_ids[t_mask == 1]
            assert real[-1] == eos and eos not in real[:-1]
            assert (t_ids[t_mask == 0] == pad).all()
            text = pdata.target_text(a["target_genres"][i], task.extras["genre_names"])
            full = tok.encode(text, add_special_tokens=False)          # truncated to T - 1 + eos
            np.testing.assert_array_equal(real[:-1], full[:len(t_ids) - 1])


@pytest.mark.parametrize("style", STYLES)
def test_frozen_bf16_and_generation_stops_at_the_tokenizers_eos(checkpoints, style, tmp_path):
    """With the bigram decoder, greedy decoding after ``<bos> genres:`` is A, eos, and then
    eos again only if generation stops at the tokenizer's eos (the table would continue B)."""
    ckpt, tok, bigram = checkpoints[style]
    config = get_config("persoma.py", _arg(ckpt))
    config.data.emb_cache_dir = str(tmp_path)
    task = tasks.build_task(config)
    state = persoma.init(jax.random.key(0), task, config)
    consts = persoma.make_consts(config, task)
    leaves = jax.tree.leaves(consts["frozen"])
    assert leaves and all(x.dtype == np.dtype("bfloat16") for x in leaves)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    batch = {k: v[:4] for k, v in task.validation.arrays.items()}
    toks = np.asarray(persoma.predict(state, batch, consts))
    eos, t = tok.eos_token_id, batch["target_ids"].shape[1]
    assert bigram[eos] == B
    np.testing.assert_array_equal(toks, np.tile([A] + [eos] * (t - 1), (4, 1)))
    assert task.extras["tokenizer"].decode(toks[0]) == tok.decode([A])


@pytest.mark.parametrize("style,regime", [("llama3", "frozen"), ("gemma", "lora")])
def test_two_steps_through_main(checkpoints, style, regime, tmp_path):
    ckpt, _, _ = checkpoints[style]
    out = run_main([f"--config=configs/persoma.py:{_arg(ckpt)},regime={regime}", "--config.train.num_steps=2",
                    "--config.train.eval_every=2", f"--config.data.emb_cache_dir={tmp_path / 'emb'}"],
                   tmp_path / "run")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(tmp_path / "run" / "results.json"))
    assert res["steps_done"] == 2 and 0.0 <= res["test"]["f1"] <= 1.0


def test_tokenizer_that_does_not_fit_the_model_is_one_error_line(tmp_path):
    d = tmp_path / "ckpt"
    tok = write_decoder(d, "llama3", vocab_size=300)             # 322 ids, 300 embedding rows
    assert len(tok) == 322
    out = run_main([f"--config=configs/persoma.py:{_arg(d)}", "--config.train.num_steps=2",
                    f"--config.data.emb_cache_dir={tmp_path / 'emb'}"], tmp_path / "run")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"{d}/tokenizer.json" in errors[0] and "322" in errors[0] and "300" in errors[0], errors[0]


def test_item_embeddings_mean_pool_a_bert_directory(tmp_path):
    """``config.data.encoder`` = a BERT directory: the embedding of a text is the L2-normalised
    mean over its real tokens of FlaxBertModel's last hidden states; cached after the first call."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from tests.backbones import flax_to_torch_tensors, perturb, write_checkpoint
    texts = ["toy story | genres: animation", "heat | genres: crime, thriller", "a very long title " * 6]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk.train_from_iterator(texts * 3, trainers.WordPieceTrainer(vocab_size=80, special_tokens=specials,
                                                                show_progress=False))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tk.token_to_id(s)) for s in ("[CLS]", "[SEP]")])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    hfc = transformers.BertConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    ref = transformers.FlaxBertModel(hfc, seed=0)
    params = perturb(ref.params, seed=1)
    d = write_checkpoint(tmp_path / "bert", flax_to_torch_tensors(params), hfc.to_dict())
    fast.save_pretrained(str(d))
    got = pdata.item_embeddings(texts, str(d), max_len=12, cache_dir=str(tmp_path / "cache"))
    enc = fast(texts, max_length=12, padding="max_length", truncation=True, return_tensors="np")
    h = np.asarray(ref(enc["input_ids"], attention_mask=enc["attention_mask"], params=params).last_hidden_state,
                   np.float64)
    m = enc["attention_mask"][..., None]
    want = (h * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert got.shape == (3, 16) and enc["attention_mask"][2].all() and not enc["attention_mask"][0].all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    again = pdata.item_embeddings(texts, str(d), max_len=12, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again, got)
    with pytest.raises(ValueError, match="config.data.encoder"):
        pdata.item_embeddings(texts, str(tmp_path / "nowhere"))
