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
