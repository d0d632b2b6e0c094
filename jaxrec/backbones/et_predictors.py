"""Eye-tracking (ET) feature predictors for GazeReward, built in or read from a directory.

Paper: Lopez-Cardona, Segura, Karatzoglou, Abadal, Arapakis, "Seeing Eye to AI", ICLR 2025,
arXiv 2410.01532 (method section): the reward model reads reading-time
features that a frozen predictor assigns to every token of the text; ET1 (Huang & Hollenstein
2023) is a BiLSTM over T5 tokens predicting total reading time (TRT), ET2 (Li & Rudzicz 2021)
a RoBERTa encoder with a per-token linear head predicting five features, kept on each word's
first sub-token.

Every predictor is a :class:`Predictor`: a word-aligned tokenizer (``encode_words``) and
``predictor(words, et_ids, et_word_ids) -> [M, 5]`` over the columns
:data:`jaxrec.data.preferences.FEATURES` (nFix, FFD, GPT, TRT, fixProp); columns a predictor
does not produce are 0 (:attr:`Predictor.features` lists the ones it does).
:func:`load_predictor` reads ``config.data.predictor``:

* ``proxy`` — :func:`jaxrec.data.preferences.proxy_features` (no model; handled by the caller);
* ``bilstm`` — a :class:`BiLSTMRegressor` fitted to the proxy here (:func:`train_et_bilstm`);
* ``et1:DIR`` — an ET1-style BiLSTM regressor saved in the format below (:func:`save_et1`);
* ``et2:DIR`` — an ET2-style Hugging Face ``RobertaForTokenClassification`` checkpoint.

**ET1 directory** (format version 1, written by :func:`save_et1`)::

    config.json        {"model_type": "jaxrec_et1_bilstm", "format_version": 1,
                        "vocab_size": V, "embed_dim": E, "hidden_size": H, "num_layers": L,
                        "head_size": K, "features": ["TRT"]}
    model.safetensors  PyTorch names and layouts (a torch ``nn.LSTM(E, H, L,
                        bidirectional=True, batch_first=True)`` named ``lstm`` saves exactly these):
                          embedding.weight                        [V, E]
                          lstm.weight_ih_l{k}, lstm.weight_hh_l{k} [4H, in], [4H, H]  (gates i, f, g, o)
                          lstm.bias_ih_l{k}, lstm.bias_hh_l{k}     [4H]
                          the same with the suffix _reverse        (the backward direction)
                          fc1.weight [K, 2H], fc1.bias [K], fc2.weight [F, K], fc2.bias [F]
    tokenizer.json     the predictor's own tokenizer (``tokenizers`` library; T5's in the paper)

``in`` is E for layer 0 and 2H above; F = ``len(features)``, names from ``FEATURES``.
Forward: embedding -> dropout -> L BiLSTM layers (each direction sees only the real tokens) ->
dropout -> fc1 -> ReLU -> fc2, per token.

**ET2 directory**: a Hugging Face RoBERTa / XLM-R token-classification checkpoint —
``config.json`` (``model_type`` roberta or xlm-roberta; ``id2label`` names the F outputs from
``FEATURES``, or F = 5 generic labels mean ``FEATURES`` in order), ``model.safetensors`` with
the encoder (``roberta.*``) and the head ``classifier.weight [F, D]``, ``classifier.bias [F]``,
and the tokenizer files (``tokenizer.json`` + ``tokenizer_config.json``). The encoder is
:class:`jaxrec.backbones.bert.BertEncoder`, which numbers RoBERTa positions from
``pad_token_id + 1`` and uses its single token type. The text is read as
``<s> tokens </s>``; texts longer than the position table are cut into overlapping windows
(``ET2_OVERLAP`` tokens, 50 as in the authors' code) whose overlaps are blended linearly.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import storage
from jaxrec.backbones import hf
from jaxrec.backbones.tokenizers import ET_FEATURES, TextTokenizer

Array = Any
ET1_TYPE = "jaxrec_et1_bilstm"
ET1_VERSION = 1
ET2_TYPES = ("roberta", "xlm-roberta")
ET2_OVERLAP = 50
KINDS = ("proxy", "bilstm", "et1", "et2")


# ------------------------------------------------------------------------------- BiLSTM
@dataclasses.dataclass(frozen=True)
class ET1Config:
    """Shape of :class:`BiLSTMRegressor` (paper's ET1: E = 512 frozen T5 embedding, H = 128 per
    direction, 2 layers, K = 128, one output: TRT)."""

    vocab_size: int
    embed_dim: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    head_size: int = 128
    features: tuple = ("TRT",)
    dropout: float = 0.2

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        bad = [f for f in self.features if f not in ET_FEATURES]
        if bad or not self.features:
            raise ValueError(f"ET1Config.features must name some of {ET_FEATURES}, got {list(self.features)}")


def _reversal(lengths: Array, m: int) -> Array:
    """``[B, M]`` gather index that reverses each row's first ``lengths[b]`` entries in place
    (the padding after them stays); it is its own inverse."""
    t = jnp.arange(m)[None, :]
    return jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)


class LSTMDirection(nn.Module):
    """One direction of one LSTM layer with torch ``nn.LSTM``'s parameters and gate order.

    ``__call__(x [B, M, in], lengths [B], reverse) -> [B, M, H]``;
    ``gates = x W_ih^T + b_ih + h W_hh^T + b_hh`` split into i, f, g, o;
    ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``. ``reverse`` runs each row backwards
    from its last real token (what a packed torch sequence does), so padding never reaches
    the real tokens.
    """

    hidden: int

    @nn.compact
    def __call__(self, x: Array, lengths: Array, reverse: bool = False) -> Array:
        h = self.hidden
        bound = 1.0 / np.sqrt(h)
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)  # noqa: E731  (torch's)
        w_ih = self.param("weight_ih", init, (4 * h, x.shape[-1]))
        w_hh = self.param("weight_hh", init, (4 * h, h))
        b = self.param("bias_ih", init, (4 * h,)) + self.param("bias_hh", init, (4 * h,))
        if reverse:
            idx = _reversal(lengths, x.shape[1])
            x = jnp.take_along_axis(x, idx[..., None], axis=1)
        xs = (x @ w_ih.T + b).swapaxes(0, 1)          # [M, B, 4H]: the input part, all steps at once

        def step(carry, xt):
            hp, cp = carry
            i, f, g, o = jnp.split(xt + hp @ w_hh.T, 4, axis=-1)
            c = jax.nn.sigmoid(f) * cp + jax.nn.sigmoid(i) * jnp.tanh(g)
            hn = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (hn, c), hn

        zeros = jnp.zeros((x.shape[0], h), xs.dtype)
        _, ys = jax.lax.scan(step, (zeros, zeros), xs)
        ys = ys.swapaxes(0, 1)
        if reverse:
            ys = jnp.take_along_axis(ys, idx[..., None], axis=1)
        return ys


class BiLSTMRegressor(nn.Module):
    """ET1-style predictor: ``ids [B, M], mask [B, M] -> [B, M, F]`` (0 at padding).

    Parameter tree: ``embedding/embedding``, ``lstm_l{k}`` and ``lstm_l{k}_reverse``
    (:class:`LSTMDirection`), ``fc1``, ``fc2`` (Dense).
    """

    config: ET1Config

    @nn.compact
    def __call__(self, ids: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        x = nn.Embed(cfg.vocab_size, cfg.embed_dim, name="embedding")(ids)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        for k in range(cfg.num_layers):
            fwd = LSTMDirection(cfg.hidden_size, name=f"lstm_l{k}")(x, lengths)
            bwd = LSTMDirection(cfg.hidden_size, name=f"lstm_l{k}_reverse")(x, lengths, True)
            x = jnp.concatenate([fwd, bwd], axis=-1)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = nn.relu(nn.Dense(cfg.head_size, name="fc1")(x))
        return nn.Dense(len(cfg.features), name="fc2")(x) * mask[..., None]


def et1_param_mapping(cfg: ET1Config) -> dict:
    """Our :class:`BiLSTMRegressor` paths -> (tensor name, transform) of the ET1 format."""
    m = {("embedding", "embedding"): ("embedding.weight", None)}
    for k in range(cfg.num_layers):
        for suffix in ("", "_reverse"):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                m[(f"lstm_l{k}{suffix}", w)] = (f"lstm.{w}_l{k}{suffix}", None)
    m.update(hf.dense_entries(("fc1",), "fc1"))
    m.update(hf.dense_entries(("fc2",), "fc2"))
    return m


def _example(cfg: ET1Config):
    return jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)


def save_et1(path: str, cfg: ET1Config, params: dict, tokenizer) -> str:
    """Writes an ET1 directory (format above) atomically.

    Args:
      cfg: the model's shape; params: its ``'params'`` tree; tokenizer: a
        ``tokenizers.Tokenizer`` (or a :class:`~jaxrec.backbones.tokenizers.TextTokenizer`).
    """
    from safetensors.numpy import save_file
    backend = getattr(tokenizer, "backend", tokenizer)
    tensors = {}
    fp = {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(v, np.float32)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    for ours, (name, transform) in et1_param_mapping(cfg).items():
        v = fp[ours]
        tensors[name] = np.ascontiguousarray(v.T if transform is not None else v)
    meta = {"model_type": ET1_TYPE, "format_version": ET1_VERSION, "vocab_size": cfg.vocab_size,
            "embed_dim": cfg.embed_dim, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
            "head_size": cfg.head_size, "features": list(cfg.features)}
    with storage.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(meta, f, indent=1)
        save_file(tensors, os.path.join(tmp, "model.safetensors"))
        backend.save(os.path.join(tmp, "tokenizer.json"))
    return path


def _int_field(cfg: dict, name: str, where: str) -> int:
    v = cfg.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{where}: field {name!r} must be a positive integer, got {v!r}")
    return v


def read_et1_config(path: str) -> ET1Config:
    """The :class:`ET1Config` of an ET1 directory; errors name the file and the field."""
    raw = hf.read_config(path)
    where = os.path.join(path, "config.json")
    if raw.get("model_type") != ET1_TYPE:
        raise ValueError(f"{where}: field 'model_type' must be {ET1_TYPE!r} for an ET1 predictor, "
                         f"got {raw.get('model_type')!r}")
    if raw.get("format_version") != ET1_VERSION:
        raise ValueError(f"{where}: field 'format_version' must be {ET1_VERSION}, got {raw.get('format_version')!r}")
    feats = raw.get("features")
    if not isinstance(feats, list) or not feats or any(f not in ET_FEATURES for f in feats):
        raise ValueError(f"{where}: field 'features' must be a non-empty list of {list(ET_FEATURES)}, got {feats!r}")
    fields = {f: _int_field(raw, f, where) for f in ("vocab_size", "embed_dim", "hidden_size", "num_layers",
                                                     "head_size")}
    return ET1Config(features=tuple(feats), **fields)


def load_et1(path: str) -> tuple[ET1Config, dict, TextTokenizer]:
    """``(config, params, tokenizer)`` of an ET1 directory.

    Raises:
      ValueError (:class:`~jaxrec.backbones.hf.CheckpointError` for the weights): a missing or
        malformed file or field, tensors that do not fit (all listed), a tokenizer with more
        ids than the embedding has rows.
    """
    cfg = read_et1_config(path)
    tok = TextTokenizer.from_dir(path, "ET1 predictor")
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"ET1 predictor {path!r}: tokenizer.json has {tok.vocab_size} ids but config.json "
                         f"'vocab_size' is {cfg.vocab_size}")
    tensors = hf.read_safetensors(path)
    template = jax.eval_shape(lambda: BiLSTMRegressor(cfg).init(jax.random.key(0), *_example(cfg)))["params"]
    params = hf.assign_params(template, et1_param_mapping(cfg), tensors, path)
    return cfg, params, tok


# ------------------------------------------------------------------------------ Predictor
@dataclasses.dataclass
class Predictor:
    """A frozen ET predictor over its own tokens.

    Attributes:
      name: e.g. ``et1:/path``.
      tokenizer: word-aligned (``encode_words(words) -> (ids, word ids)``, ``vocab_size``).
      features: the :data:`~jaxrec.data.preferences.FEATURES` it produces, in output order.
      token_fn: ``ids [M] -> [M, len(features)]`` (numpy).
      first_subtoken: keep each word's value on its first token only, 0 on the others
        (ET2's rule in the authors' code).
    """

    name: str
    tokenizer: Any
    features: tuple
    token_fn: Callable[[np.ndarray], np.ndarray]
    first_subtoken: bool = False

    def __call__(self, words: Sequence[str], et_ids: Sequence[int], et_wid: Sequence[int]) -> np.ndarray:
        """``[M, 5]`` features of the ``M`` ET tokens (``words`` unused: the model reads ids)."""
        m = len(et_ids)
        out = np.zeros((m, len(ET_FEATURES)), np.float32)
        if m == 0:
            return out
        y = np.asarray(self.token_fn(np.asarray(et_ids, np.int32)), np.float32)
        if self.first_subtoken:
            wid = np.asarray(et_wid)
            first = (wid >= 0) & np.concatenate([[True], wid[1:] != wid[:-1]])
            y = y * first[:, None]
        for j, f in enumerate(self.features):
            out[:, ET_FEATURES.index(f)] = y[:, j]
        return out


def _padded(fn, params, max_len: int, fill: int = 0):
    """``ids [m <= max_len] -> fn(params, ids [1, max_len], mask [1, max_len])[0, :m]`` (ids
    padded with ``fill``): one
    shape, so the jitted ``fn`` compiles once; ``params`` stay a jit argument (closing over
    them would bake every weight into the compiled program as a constant)."""
    jitted = jax.jit(fn)

    def run(ids):
        m = len(ids)
        if m > max_len:
            raise ValueError(f"ET predictor: {m} tokens, more than its max length {max_len}")
        b_ids = np.full((1, max_len), fill, np.int32)
        mask = np.zeros((1, max_len), np.int32)
        b_ids[0, :m], mask[0, :m] = ids, 1
        return np.asarray(jitted(params, b_ids, mask))[0, :m]
    return run


def bilstm_predictor(cfg: ET1Config, params, tokenizer, max_len: int, name: str = "bilstm") -> Predictor:
    """A :class:`Predictor` running :class:`BiLSTMRegressor` on up to ``max_len`` tokens."""
    model = BiLSTMRegressor(cfg)
    fn = _padded(lambda p, ids, mask: model.apply({"params": p}, ids, mask), params, max_len)
    return Predictor(name, tokenizer, cfg.features, fn)


def train_et_bilstm(ids: np.ndarray, mask: np.ndarray, targets: np.ndarray, vocab_size: int, *,
                    steps: int = 200, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                    embed_dim: int = 64, hidden_size: int = 32, num_layers: int = 2):
    """Fits a 5-output :class:`BiLSTMRegressor` to per-token targets (the proxy) by masked MSE.

    Args:
      ids, mask: ``[N, M]`` ET-token ids and mask; targets: ``[N, M, 5]`` (``FEATURES`` order).

    Returns:
      ``(config, params, losses [steps])``.
    """
    from jaxrec.backbones.decoder_lm import fit_minibatch   # decoder_lm imports this package's data side
    cfg = ET1Config(vocab_size, embed_dim, hidden_size, num_layers, 2 * hidden_size, ET_FEATURES)
    model = BiLSTMRegressor(cfg)
    params = model.init(jax.random.key(seed), jnp.asarray(ids[:2]), jnp.asarray(mask[:2]))["params"]

    def loss_fn(p, b_ids, b_mask, b_y, r):
        pred = model.apply({"params": p}, b_ids, b_mask, deterministic=False, rngs={"dropout": r})
        err = ((pred - b_y) ** 2).sum(-1) * b_mask
        return err.sum() / jnp.maximum(b_mask.sum(), 1)

    params, losses = fit_minibatch(loss_fn, params, (ids, mask, targets), steps, batch_size, lr, seed)
    return cfg, params, losses


# ---------------------------------------------------------------------------------- ET2
def _et2_features(raw: dict, where: str) -> tuple:
    labels = raw.get("id2label")
    if isinstance(labels, dict) and labels:
        try:
            names = [labels[k] for k in sorted(labels, key=int)]
        except ValueError:
            raise ValueError(f"{where}: field 'id2label' must map integer ids to names, got {labels!r}") from None
    else:
        n = raw.get("num_labels")
        names = [f"LABEL_{i}" for i in range(n)] if isinstance(n, int) else []
    if names and all(n in ET_FEATURES for n in names) and len(set(names)) == len(names):
        return tuple(names)
    if len(names) == len(ET_FEATURES) and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return ET_FEATURES
    raise ValueError(f"{where}: field 'id2label' must name the head's outputs from {list(ET_FEATURES)} "
                     f"(or be 5 generic labels, meaning that order), got {names!r}")


def window_starts(n: int, width: int, overlap: int) -> list:
    """Start offsets of windows of at most ``width`` tokens over ``n`` tokens, each sharing
    ``overlap`` tokens with the next (the last one may be shorter). ``width >= 2 * overlap``, so
    only neighbouring windows overlap."""
    if width < 2 * overlap or width <= 0:
        raise ValueError(f"windows of {width} tokens cannot overlap by {overlap} (need width >= 2 * overlap)")
    starts = [0]
    while starts[-1] + width < n:
        starts.append(starts[-1] + width - overlap)
    return starts


def blend_windows(preds: Sequence[np.ndarray], starts: Sequence[int], n: int) -> np.ndarray:
    """Per-window predictions ``[w_i, F]`` starting at ``starts`` -> ``[n, F]``: where two windows
    overlap, a linear cross-fade (the earlier window's weight falls from 1 to 0 across the
    overlap, the later one's rises); elsewhere the single window's value."""
    f = preds[0].shape[-1]
    acc = np.zeros((n, f), np.float64)
    wsum = np.zeros(n, np.float64)
    for i, (p, s) in enumerate(zip(preds, starts)):
        e = s + len(p)
        w = np.ones(len(p))
        if i > 0:            # overlap with the previous window: ramp up
            ov = starts[i - 1] + len(preds[i - 1]) - s
            w[:ov] = np.minimum(w[:ov], np.arange(1, ov + 1) / (ov + 1))
        if i + 1 < len(preds):   # overlap with the next window: ramp down
            ov = e - starts[i + 1]
            w[len(p) - ov:] = np.minimum(w[len(p) - ov:], np.arange(ov, 0, -1) / (ov + 1))
        acc[s:e] += w[:, None] * p
        wsum[s:e] += w
    return (acc / wsum[:, None]).astype(np.float32)


def load_et2(path: str, max_len: int, overlap: int = ET2_OVERLAP) -> Predictor:
    """The ET2 :class:`Predictor` of a RoBERTa token-classification directory (format above),
    for texts of up to ``max_len`` tokens.

    Raises:
      ValueError (CheckpointError for the weights): wrong ``model_type``, unusable ``id2label``,
        missing ``classifier`` tensors, a head of the wrong shape, a tokenizer without
        ``<s>`` / ``</s>`` or with more ids than the embedding.
    """
    from jaxrec.backbones.bert import BertEncoder, load_bert
    raw = hf.read_config(path)
    where = os.path.join(path, "config.json")
    if raw.get("model_type") not in ET2_TYPES:
        raise ValueError(f"{where}: field 'model_type' must be one of {list(ET2_TYPES)} for an ET2 predictor, "
                         f"got {raw.get('model_type')!r}")
    features = _et2_features(raw, where)
    tok = TextTokenizer.from_dir(path, "ET2 predictor")
    cfg, enc_params = load_bert(path)
    if tok.bos_id is None or tok.eos_id is None:
        raise ValueError(f"ET2 predictor {path!r}: the tokenizer has no <s>/</s> (bos/cls, eos/sep) token")
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"ET2 predictor {path!r}: the tokenizer has {tok.vocab_size} ids but config.json "
                         f"'vocab_size' is {cfg.vocab_size}")
    head = hf.read_safetensors(path, ["classifier.weight", "classifier.bias"])
    w, b = np.asarray(head["classifier.weight"], np.float32), np.asarray(head["classifier.bias"], np.float32)
    if w.shape != (len(features), cfg.hidden_size) or b.shape != (len(features),):
        raise ValueError(f"ET2 predictor {path!r}: classifier.weight/bias have shapes {w.shape}/{b.shape}, "
                         f"expected ({len(features)}, {cfg.hidden_size})/({len(features)},) for id2label {features}")
    width = cfg.max_position_embeddings - cfg.position_offset - 2     # tokens of text per window
    if max_len > width and width < 2 * overlap:    # texts of max_len tokens need windows
        raise ValueError(f"{where}: max_position_embeddings {cfg.max_position_embeddings} leaves windows of "
                         f"{width} tokens, less than twice the overlap {overlap}")
    encoder = BertEncoder(cfg)
    params = {"encoder": enc_params, "head": {"w": jnp.asarray(w), "b": jnp.asarray(b)}}

    def fn(p, ids, mask):
        h = encoder.apply({"params": p["encoder"]}, ids, mask).last_hidden_state
        return h @ p["head"]["w"].T + p["head"]["b"]

    win = min(width, max_len)
    # Padding carries the checkpoint's pad id: RoBERTa numbers the positions of non-pad ids.
    run = _padded(fn, params, win + 2, fill=int(cfg.pad_token_id))
    bos, eos = int(tok.bos_id), int(tok.eos_id)

    def token_fn(ids):
        starts = window_starts(len(ids), width, overlap) if len(ids) > width else [0]
        preds = []
        for s in starts:
            chunk = [bos] + list(ids[s:s + width]) + [eos]
            preds.append(run(np.asarray(chunk, np.int32))[1:-1])
        return blend_windows(preds, starts, len(ids))

    return Predictor(f"et2:{path}", tok, features, token_fn, first_subtoken=True)


# -------------------------------------------------------------------------------- entry
def parse_predictor(value: str) -> tuple[str, str]:
    """``'proxy' | 'bilstm' | 'et1:DIR' | 'et2:DIR'`` -> ``(kind, DIR or '')``."""
    kind, sep, path = str(value).partition(":")
    if kind not in KINDS or (kind in ("et1", "et2")) != bool(sep and path):
        raise ValueError(f"config.data.predictor must be proxy, bilstm, et1:DIR or et2:DIR, got {value!r}")
    return kind, path


def load_predictor(value: str, max_len: int) -> Predictor:
    """The :class:`Predictor` of an ``et1:DIR`` / ``et2:DIR`` value, for up to ``max_len`` ET tokens."""
    kind, path = parse_predictor(value)
    if kind not in ("et1", "et2"):
        raise ValueError(f"load_predictor reads et1:DIR / et2:DIR, got {value!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{kind.upper()} predictor directory {path!r} does not exist")
    if kind == "et1":
        cfg, params, tok = load_et1(path)
        return bilstm_predictor(cfg, jax.device_put(params), tok, max_len, name=value)
    return load_et2(path, max_len)
