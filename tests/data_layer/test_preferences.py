"""Preference readers (OASST1, HelpSteer2) on fixtures, malformed rows, the ET proxy, token
remapping, the feature cache and the synthetic generator (spec llm.md §2.1, §2.3, §2.6)."""
import json
import os

import numpy as np
import pytest

from jaxrec.data import preferences as prefs

RAW = os.path.join(os.path.dirname(__file__), "..", "data", "raw")


def test_oasst1_pairs_by_hand():
    p = prefs.read_oasst1(os.path.join(RAW, "oasst1", "train.jsonl"))
    # p1: rank 0 vs rank 2; p2 tied, p3 German, p5 a single ranked reply: dropped;
    # p4: rank 0 vs rank 1 (the deleted rank-2 and the unranked reply ignored).
    assert p.prompt == ["What is a cat?", "Say hi."]
    assert p.chosen == ["A small domesticated feline.", "Hello, nice to meet you."]
    assert p.rejected == ["No idea", "Hi there!"]


def test_helpsteer2_pairs_by_hand():
    p = prefs.read_helpsteer2(os.path.join(RAW, "helpsteer2", "train.jsonl"))
    # most helpful (4) vs second (3); the tied and the single-response prompts are dropped.
    assert (p.prompt, p.chosen, p.rejected) == (["Explain rain."], ["Water falls from clouds."],
                                                 ["Condensed vapour falls."])


def test_splits_validation_file_is_test():
    s = prefs.read_splits("oasst1", os.path.join(RAW, "oasst1"), val_fraction=0.5, seed=42)
    assert len(s["train"]) == 1 and len(s["validation"]) == 1
    assert s["test"].chosen == ["Because it is so."]
    assert sorted(s["train"].prompt + s["validation"].prompt) == ["Say hi.", "What is a cat?"]


@pytest.mark.parametrize("reader,line,match", [
    ("oasst1", "{not json", r"train.jsonl:2: not valid JSON"),
    ("oasst1", json.dumps({"message_id": "x", "parent_id": None, "role": "bot", "text": "t", "lang": "en"}),
     r"train.jsonl:2: field 'role' must be 'prompter' or 'assistant'"),
    ("oasst1", json.dumps({"message_id": "x", "parent_id": None, "role": "prompter", "lang": "en"}),
     r"train.jsonl:2: missing field 'text'"),
    ("oasst1", json.dumps({"message_id": "x", "parent_id": "p", "role": "assistant", "text": "t", "lang": "en",
                           "rank": "first"}), r"train.jsonl:2: field 'rank' must be int/float"),
    ("helpsteer2", json.dumps({"prompt": "p", "response": "r"}), r"train.jsonl:2: missing field 'helpfulness'"),
    ("helpsteer2", json.dumps({"prompt": "p", "response": 3, "helpfulness": 1}),
     r"train.jsonl:2: field 'response' must be str"),
    ("helpsteer2", "[1, 2]", r"train.jsonl:2: expected a JSON object"),
])
def test_malformed_rows_name_file_line_field(tmp_path, reader, line, match):
    good = {"oasst1": {"message_id": "p", "parent_id": None, "role": "prompter", "text": "q", "lang": "en"},
            "helpsteer2": {"prompt": "p", "response": "r", "helpfulness": 1}}[reader]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(prefs.PreferenceDataError, match=match):
        prefs.READERS[reader](str(path))


def test_missing_file():
    with pytest.raises(prefs.PreferenceDataError, match="file not found"):
        prefs.read_helpsteer2("/nonexistent/train.jsonl")


def test_remap_sum_split_conserves_word_sums():
    rng = np.random.default_rng(0)
    src_words = [-1, 0, 0, 1, 2, 2, 2, -1]        # ET tokens of 3 words (+ specials)
    tgt_words = [-1, -1, 0, 1, 1, 1, 2, 2, -1]    # LLM tokens of the same words
    src = rng.random((8, 5)).astype(np.float32)
    out = prefs.remap_sum_split(src, src_words, tgt_words)
    assert out.shape == (9, 5)
    for w in range(3):
        np.testing.assert_allclose(out[np.array(tgt_words) == w].sum(0), src[np.array(src_words) == w].sum(0),
                                   rtol=1e-6)
    # equal split: word 1's sum spread over its 3 target tokens
    np.testing.assert_allclose(out[3], src[3] / 3, rtol=1e-6)
    np.testing.assert_array_equal(out[[0, 1, 8]], 0.0)


def test_remap_first_subtoken():
    src = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = prefs.remap_first(src, [0, 0, 1, 2, 2, -1], [0, 1, 1, 1, 2, -1])
    np.testing.assert_array_equal(out, [[0, 1], [4, 5], [0, 0], [0, 0], [6, 7], [0, 0]])


def test_proxy_features_directions():
    f = prefs.proxy_features(["the", "idiosyncrasies", "cat."])
    assert f.shape == (3, 5)
    nfix, ffd, gpt, trt, prop = f.T
    # a long rare word is read longer than a short frequent one
    assert trt[1] > trt[0] and ffd[1] > ffd[0] and nfix[1] > nfix[0] and prop[1] > prop[0]
    # punctuation adds regressions: GPT - TRT = gpt_punct at "cat." only
    np.testing.assert_allclose(gpt - trt, [0, 0, prefs.PROXY_WEIGHTS["gpt_punct"]], atol=1e-6)
    assert prefs.zipf("the") > 7 > prefs.zipf("idiosyncrasies")


def test_tokenizer_word_alignment_and_cache():
    tok = prefs.PieceTokenizer(["abcdefg hi"], piece=3)
    ids, wid = tok.encode_words(["abcdefg", "hi", "zzz"], first_word=2)
    assert wid == [2, 2, 2, 3, 4]
    assert ids[-1] == prefs.UNK and ids[:3] == [6, 7, 8]
    cache = prefs.FeatureCache()
    calls = []
    for _ in range(3):
        cache.get([1, 2, 3], lambda: calls.append(1) or np.ones((3, 5)))
    cache.get([1, 2, 4], lambda: np.zeros((3, 5)))
    assert (cache.hits, cache.misses, len(calls), len(cache)) == (2, 2, 1, 2)


def test_encode_pairs_layout():
    pairs = prefs.Pairs(["hello there?"], ["fine thanks."], ["meh"])
    texts = pairs.prompt + pairs.chosen + pairs.rejected + [prefs.USER, prefs.ASSISTANT]
    llm, et = prefs.PieceTokenizer(texts, 3), prefs.PieceTokenizer(texts, 5)
    a = prefs.encode_pairs(pairs, llm, et, max_len=20, max_et_len=8)
    ids = a["chosen_ids"][0]
    assert ids[0] == prefs.BOS and a["chosen_mask"][0].sum() == list(ids).index(prefs.EOS) + 1
    # the gaze of each word on the LLM side sums to its proxy value (sum-then-split)
    words = ["hello", "there?", "fine", "thanks."]
    want = prefs.proxy_features(words).sum(0)
    np.testing.assert_allclose(a["chosen_gaze"][0].sum(0), want, rtol=1e-5)
    np.testing.assert_allclose(a["chosen_et"][0].sum(0), want, rtol=1e-5)
    assert a["rejected_et_mask"][0].sum() == 4   # hello | there ? | meh: "there?" is 2 ET pieces


def test_synthetic_pairs_gaze_signal():
    p = prefs.synthetic_pairs(300, seed=1)
    assert len(p) == 300 and p.prompt[0].endswith("?")
    trt = lambda t: prefs.proxy_features(t.split())[:, 3].mean()  # noqa: E731
    c = np.array([trt(t) for t in p.chosen])
    r = np.array([trt(t) for t in p.rejected])
    # mean reading time per word separates the sides on most pairs, but not all
    assert 0.7 < np.mean(c < r) < 0.99
    assert prefs.synthetic_pairs(5, seed=1).chosen == p.chosen[:5]


# ------------------------------------------------------- Hugging Face tokenizers (offsets)
def train_bpe(corpus, style="llama3", vocab_size=300):
    """A BPE tokenizer trained on ``corpus`` whose special ids are not jaxrec's 0/1/2:

    * ``llama3``: byte-level BPE, ``<|begin_of_text|>`` / ``<|end_of_text|>`` appended after the
      merges, **no pad token** (as Llama 3);
    * ``gemma``: SentencePiece-style (Metaspace ``▁``) BPE with ``<unk>`` first and ``<pad>``,
      ``<eos>``, ``<bos>`` appended.

    Returns ``(tokenizers.Tokenizer, transformers.PreTrainedTokenizerFast)``; save the latter
    with ``save_pretrained`` to get tokenizer.json + tokenizer_config.json.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if style == "llama3":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tk.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
        specials = dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    else:
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.decoder = decoders.Metaspace()
        tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"],
                                                           show_progress=False))
        tk.add_special_tokens(["<pad>", "<eos>", "<bos>"])
        specials = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    return tk, transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **specials)


CORPUS = ["the cat sat on the mat.", "the dog sat there?", "user: assistant: the cats"] * 5


def test_text_tokenizer_aligns_words_by_offsets():
    """Byte-level BPE: "there?" is one whitespace word but two pre-tokenizer words; offsets put
    both tokens on it. A lone "Ġ" (a space the BPE could not merge) belongs to no word."""
    tk, _ = train_bpe(CORPUS)
    tok = prefs.TextTokenizer(tk)
    ids, wid = tok.encode_words(["the", "cats", "sat", "there?"], first_word=3)
    assert [tk.id_to_token(i) for i in ids] == ["the", "Ġcats", "Ġsat", "Ġthere", "?"]
    assert wid == [3, 4, 5, 6, 6]
    ids, wid = tok.encode_words(["sat", "?", "zq"])
    assert [tk.id_to_token(i) for i in ids] == ["sat", "Ġ", "?", "Ġ", "z", "q"]
    assert wid == [0, -1, 1, -1, 2, 2]
    assert tok.vocab_size == tk.get_vocab_size() and (tok.pad_id, tok.bos_id) == (None, None)


def test_text_tokenizer_from_dir_reads_special_ids(tmp_path):
    _, fast = train_bpe(CORPUS)
    fast.save_pretrained(str(tmp_path / "l3"))
    tok = prefs.TextTokenizer.from_dir(str(tmp_path / "l3"))
    n = tok.vocab_size
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (n - 2, n - 1, None)   # Llama 3: no pad
    assert tok.fill_id == n - 1
    _, fast = train_bpe(CORPUS, "gemma", 200)
    fast.save_pretrained(str(tmp_path / "g"))
    g = prefs.TextTokenizer.from_dir(str(tmp_path / "g"))
    m = g.vocab_size
    assert (g.pad_id, g.eos_id, g.bos_id, g.fill_id) == (m - 3, m - 2, m - 1, m - 3)
    ids, wid = g.encode_words(["the", "cats"])     # "▁" word prefixes: the space belongs to no word
    assert wid == [0] * (len(wid) - len(g.encode(" cats"))) + [1] * len(g.encode(" cats"))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        prefs.TextTokenizer.from_dir(str(tmp_path))


@pytest.mark.parametrize("remap", ["sum_split", "first"])
def test_encode_pairs_with_a_bpe_tokenizer_by_hand(remap):
    """The LLM side is one BPE text with the tokenizer's own bos/eos (no pad: padded with eos);
    ET features (token j of the ET tokenizer gets j + 1) reach the LLM tokens through words."""
    tk, _ = train_bpe(CORPUS)
    n = tk.get_vocab_size()
    llm = prefs.TextTokenizer(tk, bos_id=n - 2, eos_id=n - 1)
    pairs = prefs.Pairs(["the dog sat?"], ["the cats sat there?"], ["mat"])
    et = prefs.PieceTokenizer(pairs.prompt + pairs.chosen + pairs.rejected, 2)

    def predictor(words, et_ids, et_wid):
        return np.repeat(np.arange(1, len(et_ids) + 1, dtype=np.float32)[:, None], 5, 1)

    a = prefs.encode_pairs(pairs, llm, et, max_len=18, max_et_len=20, predictor=predictor, remap=remap)
    toks = [tk.id_to_token(int(i)) for i in a["chosen_ids"][0][:15]]
    assert toks == ["<|begin_of_text|>", "user", ":", "Ġthe", "Ġdog", "Ġsat", "?", "Ġassistant", ":", "Ġthe",
                    "Ġcats", "Ġsat", "Ġthere", "?", "<|end_of_text|>"]
    assert a["chosen_mask"][0].tolist() == [1] * 15 + [0] * 3
    assert a["chosen_ids"][0][15:].tolist() == [n - 1] * 3
    # ET pieces of 2: th|e do|g sa|t? th|e ca|ts sa|t th|er|e? -> values 1..15; word sums
    # 3, 7, 11, 15, 19, 23, 42; first-token values 1, 3, 5, 7, 9, 11, 13.
    if remap == "sum_split":
        want = [0, 0, 0, 3, 7, 5.5, 5.5, 0, 0, 15, 19, 23, 21, 21, 0, 0, 0, 0]
    else:
        want = [0, 0, 0, 1, 3, 5, 0, 0, 0, 7, 9, 11, 13, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(a["chosen_gaze"][0][:, 3], want)
    np.testing.assert_allclose(a["chosen_et"][0][:15, 0], np.arange(1, 16))
