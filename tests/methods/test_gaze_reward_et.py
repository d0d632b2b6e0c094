"""Eye-tracking predictors read from directories (jaxrec.backbones.et_predictors):

* ET1: a BiLSTM regressor directory written by ``save_et1`` loads bit-exactly and its forward
  equals an independent float64 NumPy LSTM written from torch ``nn.LSTM``'s equations, reading
  the tensors of the file by their torch names (gate order, reverse direction over the real
  tokens only); through the task its features land in their FEATURES columns.
* ET2: a RoBERTa token-classification checkpoint written from transformers' FlaxRobertaModel
  (RoBERTa's ids: <s>=0, <pad>=1, </s>=2) equals that model + the linear head, keeps each
  word's value on its first sub-token, and blends overlapping windows linearly (by hand).
* malformed directories name the file and the field / tensor.
"""
import json
import os

import jax
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from jaxrec.configs import gaze_reward as gaze_config
from jaxrec.backbones import et_predictors as etp
from jaxrec.backbones import hf
from jaxrec.data import preferences as prefs
from tests.backbones import flax_to_torch_tensors, perturb, write_checkpoint
from tests.data_layer.test_preferences import train_bpe
from tests.methods.test_gaze_reward_hf import CORPUS, build_task
from tests.numerics import assert_close_to_scale

SENTENCE = "the unbelievable idiosyncrasies of cats are there".split()


# -------------------------------------------------------------------------------- ET1
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_bilstm(t: dict, cfg: etp.ET1Config, ids: np.ndarray) -> np.ndarray:
    """torch nn.LSTM(bidirectional) + fc1/ReLU/fc2 on one unpadded sequence, float64, from the
    file's tensors (torch names and layouts)."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    x = t["embedding.weight"][ids]
    for k in range(cfg.num_layers):
        outs = []
        for suffix, order in (("", range(len(ids))), ("_reverse", range(len(ids) - 1, -1, -1))):
            w_ih, w_hh = t[f"lstm.weight_ih_l{k}{suffix}"], t[f"lstm.weight_hh_l{k}{suffix}"]
            b = t[f"lstm.bias_ih_l{k}{suffix}"] + t[f"lstm.bias_hh_l{k}{suffix}"]
            h = c = np.zeros(cfg.hidden_size)
            out = np.zeros((len(ids), cfg.hidden_size))
            for s in order:
                i, f, g, o = np.split(w_ih @ x[s] + w_hh @ h + b, 4)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                out[s] = h
            outs.append(out)
        x = np.concatenate(outs, axis=1)
    x = np.maximum(x @ t["fc1.weight"].T + t["fc1.bias"], 0.0)
    return x @ t["fc2.weight"].T + t["fc2.bias"]


@pytest.fixture(scope="module")
def et1_dir(tmp_path_factory):
    tk, _ = train_bpe(CORPUS, "llama3", 300)
    cfg = etp.ET1Config(vocab_size=tk.get_vocab_size() + 3, embed_dim=8, hidden_size=6, num_layers=2,
                        head_size=5, features=("FFD", "TRT"))
    ids = np.zeros((1, 4), np.int32)
    params = etp.BiLSTMRegressor(cfg).init(jax.random.key(1), ids, np.ones_like(ids))["params"]
    params = perturb(params, seed=1, scale=0.3)
    path = str(tmp_path_factory.mktemp("et1") / "et1")
    etp.save_et1(path, cfg, params, tk)
    return path, cfg, params


def test_et1_directory_round_trip_and_torch_lstm_semantics(et1_dir):
    path, cfg, params = et1_dir
    cfg2, params2, tok = etp.load_et1(path)
    assert cfg2 == cfg and sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.json"]
    jax.tree.map(np.testing.assert_array_equal, params2, jax.tree.map(np.asarray, params))
    pred = etp.load_predictor(f"et1:{path}", max_len=64)    # pads to 64: the reverse pass must skip pads
    ids, wid = tok.encode_words(SENTENCE)
    assert 10 < len(ids) < 64
    got = pred(SENTENCE, ids, wid)
    want = np_bilstm(load_file(os.path.join(path, "model.safetensors")), cfg, np.asarray(ids))
    assert got.shape == (len(ids), 5)
    assert_close_to_scale(got[:, [1, 3]], want, 1e-5)       # FFD, TRT columns
    np.testing.assert_array_equal(got[:, [0, 2, 4]], 0.0)


def test_et1_features_reach_the_task(et1_dir):
    """predictor=et1:DIR: the ET tokens are the predictor's own tokenizer's, the ET features its
    outputs, and GazeAdd's remapped features conserve each word's sum (sum_split)."""
    path, cfg, _ = et1_dir
    c = gaze_config.get_config(f"smoke,predictor=et1:{path},features=fcomb2.2,variant=add")
    c.data.num_pairs = 10
    task = build_task(c)
    pred = etp.load_predictor(f"et1:{path}", int(c.data.max_et_len))
    pairs = prefs.synthetic_pairs(10, 0)
    words = pairs.prompt[0].split() + pairs.chosen[0].split()
    ids, wid = pred.tokenizer.encode_words(words)
    m = min(len(ids), int(c.data.max_et_len))
    a = task.train
    np.testing.assert_array_equal(a["chosen_et_mask"][0], np.arange(c.data.max_et_len) < m)
    want = pred(words, ids[:m], wid[:m])
    assert_close_to_scale(a["chosen_et"][0][:m], want, 1e-6)
    assert task.extras["et_vocab_size"] == pred.tokenizer.vocab_size
    # fcomb2.5 needs features the predictor does not produce
    with pytest.raises(ValueError, match=r"selects \['nFix', 'GPT', 'fixProp'\].*does not produce"):
        build_task(gaze_config.get_config(f"smoke,predictor=et1:{path}"))


def test_malformed_et1_directories(et1_dir, tmp_path):
    path, _, _ = et1_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = json.load(open(os.path.join(path, "config.json")))
    for name in ("model.safetensors", "tokenizer.json"):
        (bad / name).write_bytes(open(os.path.join(path, name), "rb").read())
    for field, value, match in (("hidden_size", None, "field 'hidden_size' must be a positive integer"),
                                ("features", ["TRT", "speed"], "field 'features'"),
                                ("model_type", "lstm", "field 'model_type'")):
        cfg = dict(raw)
        if value is None:
            del cfg[field]
        else:
            cfg[field] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match) as e:
            etp.load_et1(str(bad))
        assert str(bad / "config.json") in str(e.value)
    (bad / "config.json").write_text(json.dumps(raw))
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["lstm.weight_hh_l1_reverse"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(hf.CheckpointError, match=r"missing tensors \(1\):\s+lstm.weight_hh_l1_reverse") as e:
        etp.load_et1(str(bad))
    assert str(bad) in str(e.value)
    os.remove(bad / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        etp.load_et1(str(bad))
    with pytest.raises(ValueError, match="et1:DIR"):
        etp.parse_predictor("et1")


# -------------------------------------------------------------------------------- ET2
W_TEXT = 10     # text tokens per window of the tiny RoBERTa (14 positions - offset 2 - <s> </s>)


@pytest.fixture(scope="module")
def et2(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>")
    hfc = transformers.RobertaConfig(vocab_size=tk.get_vocab_size(), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=W_TEXT + 4,
                                     type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     id2label={0: "FFD", 1: "TRT"}, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    ref = transformers.FlaxRobertaModel(hfc, seed=0, add_pooling_layer=False)
    ref_params = perturb(ref.params, seed=2)
    rng = np.random.default_rng(0)
    head_w = rng.standard_normal((2, 16)).astype(np.float32)
    head_b = rng.standard_normal(2).astype(np.float32)
    tensors = flax_to_torch_tensors(ref_params, prefix="roberta.")
    tensors.update({"classifier.weight": head_w, "classifier.bias": head_b})
    path = tmp_path_factory.mktemp("et2")
    write_checkpoint(path, tensors, hfc.to_dict())
    fast.save_pretrained(str(path))

    def reference(chunk_ids):
        """HF Flax RoBERTa + head on ``<s> chunk </s>``, unpadded: ``[len(chunk), 2]``."""
        x = np.asarray([[0] + list(chunk_ids) + [2]], np.int32)
        h = np.asarray(ref(x, attention_mask=np.ones_like(x), params=ref_params).last_hidden_state)[0]
        return (h @ head_w.T + head_b)[1:-1]
    return str(path), tk, reference


def test_et2_matches_flax_roberta_and_keeps_first_subtokens(et2):
    path, tk, reference = et2
    pred = etp.load_et2(path, max_len=W_TEXT)
    assert pred.features == ("FFD", "TRT") and pred.first_subtoken
    assert (pred.tokenizer.bos_id, pred.tokenizer.pad_id, pred.tokenizer.eos_id) == (0, 1, 2)
    words = ["the", "cats", "there?"]
    ids, wid = pred.tokenizer.encode_words(words)
    assert tk.id_to_token(ids[-1]) == "?" and wid[-2:] == [2, 2]    # "there?": two sub-tokens
    assert len(ids) < W_TEXT                                    # one window, padded with <pad>
    want = reference(ids)
    assert_close_to_scale(pred.token_fn(np.asarray(ids)), want, 1e-4)
    got = pred(words, ids, wid)
    first = np.array([True] + [wid[j] != wid[j - 1] for j in range(1, len(wid))])
    assert not first.all()                                      # "there?" has a second sub-token
    assert_close_to_scale(got[:, [1, 3]], want * first[:, None], 1e-4)
    np.testing.assert_array_equal(got[~first], 0.0)
    np.testing.assert_array_equal(got[:, [0, 2, 4]], 0.0)


def test_et2_windows_blend_linearly(et2):
    """23 tokens through windows of 10 overlapping by 3 (starts 0, 7, 14): outside the overlaps
    each window's own prediction; inside, weights 1/4, 2/4, 3/4 on the later window."""
    path, tk, reference = et2
    pred = etp.load_et2(path, max_len=32, overlap=3)
    ids = tk.encode(" ".join(SENTENCE * 3), add_special_tokens=False).ids[:23]
    assert len(ids) == 23 and etp.window_starts(23, W_TEXT, 3) == [0, 7, 14]
    got = pred.token_fn(np.asarray(ids))
    r0, r1, r2 = reference(ids[0:10]), reference(ids[7:17]), reference(ids[14:23])
    want = np.zeros((23, 2))
    want[0:7], want[10:14], want[17:23] = r0[:7], r1[3:7], r2[3:]
    ramp = np.array([1, 2, 3])[:, None] / 4
    want[7:10] = (1 - ramp) * r0[7:10] + ramp * r1[0:3]
    want[14:17] = (1 - ramp) * r1[7:10] + ramp * r2[0:3]
    assert_close_to_scale(got, want, 1e-4)
    with pytest.raises(ValueError, match="less than twice the overlap"):
        etp.load_et2(path, max_len=32)                         # 10-token windows, overlap 50


def test_malformed_et2_directories(et2, tmp_path):
    path, _, _ = et2
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(path):
        (bad / name).write_bytes(open(os.path.join(path, name), "rb").read())
    raw = json.load(open(bad / "config.json"))
    (bad / "config.json").write_text(json.dumps(dict(raw, id2label={"0": "FFD", "1": "speed"})))
    with pytest.raises(ValueError, match="field 'id2label'") as e:
        etp.load_et2(str(bad), 8)
    assert str(bad / "config.json") in str(e.value)
    (bad / "config.json").write_text(json.dumps(dict(raw, model_type="bert")))
    with pytest.raises(ValueError, match="field 'model_type'"):
        etp.load_et2(str(bad), 8)
    (bad / "config.json").write_text(json.dumps(raw))
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["classifier.bias"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(hf.CheckpointError, match="classifier.bias") as e:
        etp.load_et2(str(bad), 8)
    assert str(bad) in str(e.value)
