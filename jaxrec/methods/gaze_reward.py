"""GazeReward: reward models that read predicted eye-tracking (ET) features.

Paper: Lopez-Cardona, Segura, Karatzoglou, Abadal, Arapakis, "Seeing Eye to AI: Human
Alignment via Gaze-Based Response Rewards for Large Language Models", ICLR 2025,
arXiv 2410.01532; spec ``llm.md`` §2 (§2.1 predictors, §2.2 reward model, §2.4 training,
§2.6 the CPU reproduction).

* ET predictors: the offline reading-time proxy (:func:`jaxrec.data.preferences.proxy_features`)
  and :class:`ET1BiLSTM`, a small ET1-style BiLSTM (spec §2.1: embedding -> dropout -> 2-layer
  BiLSTM -> dropout -> Linear -> ReLU -> Linear) trained here to imitate the proxy
  (:func:`train_et_bilstm`), both with the 5-feature interface (nFix, FFD, GPT, TRT, fixProp).
* :class:`ETProjector` (spec §2.2): ``Linear(F->w) -> LayerNorm -> ReLU -> Dropout(p1) ->
  Linear(w->H) -> Dropout(p2) -> LayerNorm(H)``.
* :class:`GazeRewardModel`: a Llama-family decoder (:mod:`jaxrec.backbones.llama`) with a scalar
  head pooled at the **last non-pad token** (spec §2.2: HF pools at -1, which can be a pad);
  ``variant`` ``none`` (baseline), ``concat`` (GazeConcat: ``<eye/> f(g_1..g_m) </eye>`` before
  the text, g in the ET tokenizer's space) or ``add`` (GazeAdd: ``E(x_t) + f(g~_t)`` with g
  remapped to the LLM's tokens). The two delimiter embeddings are their own parameters
  (``eye_tokens [2, H]``) rather than rows appended to the (possibly frozen) table — the same
  function as resizing the table, without touching the checkpoint's embedding.
* The decoder's starting weights (``config.model.pretrain_steps`` > 0 or
  ``config.model.decoder_checkpoint``): :func:`jaxrec.backbones.decoder_lm.get_decoder`, a
  causal-LM pretraining on the training pairs' rendered texts, cached as a checkpoint shared by
  every variant and seed (or a saved / Hugging Face decoder), standing in for the pretrained LLM.
* :func:`bt_loss`: Bradley–Terry ``-log sigmoid(r_c - r_r)`` (TRL's RewardTrainer);
  :func:`pairwise_accuracy`: ``mean[r_c > r_r]``; :class:`PairwiseEvaluator`.

Training regimes (``config.model.regime``, spec §2.4 and §3): ``lora`` (projector, eye tokens,
score head, final norm and q/v LoRA; the paper's), ``frozen`` (no LoRA), ``full``.
The data kind is ``'preferences'`` (:func:`preference_task`).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.backbones import decoder_lm
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.data import preferences as prefs
from jaxrec.data import tasks
from jaxrec.peft import freeze
from jaxrec.peft.soft_prompt import concat_blocks, wrap_block
from jaxrec.train.data import eval_batches

Array = Any
VARIANTS = ("none", "concat", "add")
SIDES = ("chosen", "rejected")
# Trainable parameters per regime (regexes over '/'-joined paths of the 'params' tree).
HEAD_PATTERNS = (r"^et_proj/", r"^eye_tokens$", r"^score/", r"^decoder/norm/")
REGIMES = {"frozen": HEAD_PATTERNS, "lora": HEAD_PATTERNS + (r"(^|/)lora_[ab]$",), "full": (r".*",)}


# ------------------------------------------------------------------------- ET predictors
class ET1BiLSTM(nn.Module):
    """ET1-style predictor (spec §2.1): ``ids [B, M], mask [B, M] -> [B, M, 5]``.

    The paper's ET1 has a frozen 512-d T5 embedding and 128 units per direction; here the
    embedding is trained with the rest (no T5 offline) and widths are config fields.
    """

    vocab_size: int
    embed_dim: int = 64
    hidden: int = 32
    num_layers: int = 2
    dropout: float = 0.2
    num_features: int = 5

    @nn.compact
    def __call__(self, ids: Array, mask: Array, deterministic: bool = True) -> Array:
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        x = nn.Embed(self.vocab_size, self.embed_dim)(ids)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        for i in range(self.num_layers):
            x = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(self.hidden)),
                                 nn.RNN(nn.OptimizedLSTMCell(self.hidden)), name=f"bilstm_{i}")(
                x, seq_lengths=lengths)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.relu(nn.Dense(2 * self.hidden)(x))
        return nn.Dense(self.num_features)(x) * mask[..., None]


def train_et_bilstm(ids: np.ndarray, mask: np.ndarray, targets: np.ndarray, vocab_size: int, *,
                    steps: int = 200, batch_size: int = 64, lr: float = 3e-3, seed: int = 0, **kw):
    """Fits :class:`ET1BiLSTM` to per-token targets (the proxy) by masked MSE.

    Args:
      ids, mask: ``[N, M]`` ET-token ids and mask; targets: ``[N, M, 5]``.

    Returns:
      ``(model, params, losses [steps])``.
    """
    model = ET1BiLSTM(vocab_size, **kw)
    params = model.init(jax.random.key(seed), jnp.asarray(ids[:2]), jnp.asarray(mask[:2]))

    def loss_fn(p, b_ids, b_mask, b_y, r):
        pred = model.apply(p, b_ids, b_mask, deterministic=False, rngs={"dropout": r})
        err = ((pred - b_y) ** 2).sum(-1) * b_mask
        return err.sum() / jnp.maximum(b_mask.sum(), 1)

    params, losses = decoder_lm.fit_minibatch(loss_fn, params, (ids, mask, targets), steps, batch_size, lr, seed)
    return model, params, losses


@functools.lru_cache(maxsize=None)
def _bilstm_apply(model: ET1BiLSTM):
    return jax.jit(model.apply)


def bilstm_predictor(model: ET1BiLSTM, params, max_et_len: int):
    """A ``predictor(words, et_ids, et_word_ids) -> [M, 5]`` for
    :func:`jaxrec.data.preferences.encode_pairs` (one padded row per call, jitted once)."""
    apply = _bilstm_apply(model)

    def predictor(words, et_ids, et_wid):
        m = len(et_ids)
        ids = np.zeros((1, max_et_len), np.int32)
        mask = np.zeros((1, max_et_len), np.int32)
        ids[0, :m], mask[0, :m] = et_ids, 1
        return np.asarray(apply(params, ids, mask))[0, :m]
    return predictor


# ---------------------------------------------------------------------------- model
class ETProjector(nn.Module):
    """``g [..., F] -> [..., H]`` (spec §2.2)."""

    hidden: int
    width: int = 128
    p1: float = 0.1
    p2: float = 0.3

    @nn.compact
    def __call__(self, g: Array, deterministic: bool = True) -> Array:
        x = nn.Dense(self.width)(g)
        x = nn.relu(nn.LayerNorm()(x))
        x = nn.Dropout(self.p1)(x, deterministic=deterministic)
        x = nn.Dense(self.hidden)(x)
        x = nn.Dropout(self.p2)(x, deterministic=deterministic)
        return nn.LayerNorm()(x)


def last_real_index(mask: Array) -> Array:
    """``[B, T]`` mask -> ``[B]`` index of each row's last 1 (padding anywhere before it)."""
    t = mask.shape[1]
    return t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)


class GazeRewardModel(nn.Module):
    """Decoder + optional gaze input + scalar head.

    ``__call__(ids [B, T], mask [B, T], gaze [B, T, 5] | None, et [B, M, 5] | None,
    et_mask [B, M] | None) -> reward [B]``. ``features`` selects the columns of the 5 used
    (a feature combination, :data:`jaxrec.data.preferences.FCOMBS`).
    """

    config: LlamaConfig
    variant: str = "none"
    features: tuple = (1, 1, 1, 1, 1)
    proj_width: int = 128
    p1: float = 0.1
    p2: float = 0.3

    def setup(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        self.decoder = LlamaModel(self.config)
        if self.variant != "none":
            self.et_proj = ETProjector(self.config.hidden_size, self.proj_width, self.p1, self.p2)
        if self.variant == "concat":
            self.eye_tokens = self.param("eye_tokens", nn.initializers.normal(self.config.initializer_range),
                                         (2, self.config.hidden_size))
        self.score = nn.Dense(1)

    def _select(self, g):
        cols = np.nonzero(np.asarray(self.features))[0]
        if cols.size == 0:
            raise ValueError("GazeRewardModel.features selects no feature")
        return g[..., cols]

    def inputs(self, ids, mask, gaze=None, et=None, et_mask=None, deterministic=True):
        """The decoder input ``(inputs_embeds [B, T', H], mask [B, T'])`` of the variant
        (``T' = T`` for none/add, ``M + 2 + T`` for concat)."""
        emb = self.decoder.embed(ids)
        if self.variant == "add":
            emb = emb + self.et_proj(self._select(gaze), deterministic) * mask[..., None].astype(emb.dtype)
        elif self.variant == "concat":
            f = self.et_proj(self._select(et), deterministic)
            prefix, pmask = wrap_block(self.eye_tokens[0], f, et_mask, self.eye_tokens[1])
            return concat_blocks([(prefix, pmask), (emb, mask)])
        return emb, jnp.asarray(mask).astype(jnp.int32)

    def __call__(self, ids, mask, gaze=None, et=None, et_mask=None, deterministic=True):
        emb, m = self.inputs(ids, mask, gaze, et, et_mask, deterministic)
        h = self.decoder(inputs_embeds=emb, attention_mask=m, deterministic=deterministic,
                         return_logits=False).last_hidden
        pooled = h[jnp.arange(h.shape[0]), last_real_index(m)]
        return self.score(pooled.astype(jnp.float32))[:, 0]


# ---------------------------------------------------------------------- loss, metric
def bt_loss(r_chosen: Array, r_rejected: Array) -> Array:
    """Bradley–Terry loss ``mean(-log sigmoid(r_c - r_r))``; ``[B], [B] -> []``."""
    return -jnp.mean(jax.nn.log_sigmoid(r_chosen - r_rejected))


def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """``mean[r_c > r_r]`` (ties count as wrong, as TRL's accuracy does); ``[B], [B] -> float``."""
    r_c, r_r = np.asarray(r_chosen), np.asarray(r_rejected)
    return float(np.mean(r_c > r_r)) if r_c.size else float("nan")


# ---------------------------------------------------------------------------- state
@flax.struct.dataclass
class State:
    params: Any
    opt_state: Any
    step: Array
    model: GazeRewardModel = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def _decoder_config(config, vocab_size: int) -> LlamaConfig:
    m = config.model
    return LlamaConfig(vocab_size=vocab_size, hidden_size=int(m.hidden_size),
                       intermediate_size=int(m.intermediate_size), num_layers=int(m.num_layers),
                       num_heads=int(m.num_heads), max_position_embeddings=int(m.max_position_embeddings),
                       with_lm_head=False,
                       lora_rank=int(m.lora_rank) if m.regime == "lora" else 0,
                       lora_alpha=float(m.lora_alpha), lora_dropout=float(m.lora_dropout))


def build_model(config, vocab_size: int) -> GazeRewardModel:
    """The :class:`GazeRewardModel` of ``config.model`` over a vocabulary of ``vocab_size``."""
    m = config.model
    fc = m.features
    features = prefs.FCOMBS[fc] if isinstance(fc, str) else tuple(int(x) for x in fc)
    return GazeRewardModel(_decoder_config(config, vocab_size), m.variant, features,
                           int(m.proj_width), float(m.p1), float(m.p2))


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
    """AdamW with cosine decay after a linear warm-up, floored at ``min_lr_ratio * lr`` (spec §2.4)."""
    o = config.optim
    lr = float(o.lr)
    warm = max(int(float(o.warmup_fraction) * num_steps), 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(num_steps, warm + 1),
                                               end_value=float(o.min_lr_ratio) * lr)
    return optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=float(o.weight_decay))


def _side(batch, side):
    return (batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_gaze"], batch[f"{side}_et"],
            batch[f"{side}_et_mask"])


def _both(batch):
    """Chosen and rejected stacked along the batch: ``[2B, ...]`` arrays."""
    return tuple(jnp.concatenate([jnp.asarray(c), jnp.asarray(r)])
                 for c, r in zip(_side(batch, "chosen"), _side(batch, "rejected")))


def rewards(model: GazeRewardModel, params, batch: dict, deterministic: bool = True, rng=None) -> tuple:
    """``(r_chosen [B], r_rejected [B])`` in one forward pass over ``2B`` rows."""
    kw = {} if deterministic else {"rngs": {"dropout": rng}}
    r = model.apply(params, *_both(batch), deterministic=deterministic, **kw)
    b = r.shape[0] // 2
    return r[:b], r[b:]


def init(rng, task, config) -> State:
    """Parameters of the reward model and a masked AdamW (regime ``config.model.regime``)."""
    if config.model.regime not in REGIMES:
        raise ValueError(f"config.model.regime must be one of {sorted(REGIMES)}, got {config.model.regime!r}")
    model = build_model(config, int(task.extras["vocab_size"]))
    batch = task.example_batch(2)
    params = model.init(rng, *_both(batch))
    pre = task.extras.get("pretrained_decoder")
    if pre is not None:
        # Pretrained weights replace the random ones; LoRA leaves (absent from ``pre``) stay.
        params = {"params": dict(params["params"], decoder=decoder_lm.merge_params(
            params["params"]["decoder"], pre, "decoder"))}
    num_steps = int(config.train.get("num_steps", 0) or 0) or task.steps_per_epoch * int(config.train.get("num_epochs", 1))
    # Only the patterns of modules this variant has (masked_optimizer rejects unmatched ones).
    absent = {"none": ("et_proj", "eye_tokens"), "add": ("eye_tokens",), "concat": ()}[model.variant]
    patterns = tuple(p for p in REGIMES[config.model.regime] if not any(a in p for a in absent))
    tx = freeze.masked_optimizer(make_optimizer(config, num_steps), params["params"], patterns)
    # The masked transform sees the inner 'params' tree (its path patterns start there).
    return State(params, tx.init(params["params"]), jnp.zeros((), jnp.int32), model, tx)


def train_step(state: State, batch, rng, consts=None):
    """One Bradley–Terry step; metrics ``loss``, ``accuracy`` (training batch), ``margin``."""
    def loss_fn(p):
        r_c, r_r = rewards(state.model, {"params": p}, batch, deterministic=False, rng=rng)
        return bt_loss(r_c, r_r), (r_c, r_r)
    (loss, (r_c, r_r)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params["params"])
    upd, opt = state.tx.update(g, state.opt_state, state.params["params"])
    params = {"params": optax.apply_updates(state.params["params"], upd)}
    metrics = {"loss": loss, "accuracy": jnp.mean(r_c > r_r), "margin": jnp.mean(r_c - r_r)}
    return state.replace(params=params, opt_state=opt, step=state.step + 1), metrics


def predict(state: State, batch, consts=None) -> Array:
    """Rewards ``[B, 2]``: column 0 the chosen response, column 1 the rejected one."""
    r_c, r_r = rewards(state.model, state.params, batch)
    return jnp.stack([r_c, r_r], axis=1)


class PairwiseEvaluator:
    """``accuracy`` = mean[r_c > r_r] and ``bt_loss`` over a split's pairs (``predict`` -> ``[B, 2]``).

    Keys are unprefixed; the core adds ``options.prefix``.
    """

    lower_is_better = ("bt_loss",)

    def __init__(self, method, task, config, options):
        self.task, self.options = task, options
        self.batch_size = int(options.get("batch_size", config.eval.batch_size))
        self._predict = jax.jit(method.predict)

    def metric_names(self, split: str) -> list:
        return ["accuracy", "bt_loss"]

    def run(self, state, consts, split: str) -> dict:
        rs = []
        for batch, n in eval_batches(self.task.split(split).arrays, self.batch_size):
            batch = {k: v for k, v in batch.items() if k != "target"}
            rs.append(np.asarray(self._predict(state, batch, consts))[:n])
        r = np.concatenate(rs)
        loss = float(np.mean(np.logaddexp(0.0, -(r[:, 0] - r[:, 1]))))
        return {"accuracy": pairwise_accuracy(r[:, 0], r[:, 1]), "bt_loss": loss}


EVALUATORS = {"pairwise": PairwiseEvaluator}


# ------------------------------------------------------------------------------ task
def _eval_set(arrays: dict) -> tasks.EvalSet:
    n = len(arrays["chosen_ids"])
    return tasks.EvalSet(arrays=dict(arrays, target=np.zeros(n, np.int32)), protocol="pairs", groups=("all",))


def load_pairs(config) -> dict:
    """``{train, validation, test}`` :class:`~jaxrec.data.preferences.Pairs` of ``config.data``:
    ``source`` synthetic (``num_pairs`` split 70/15/15 with ``config.seed``-independent data
    seed ``data_seed``) or oasst1 / helpsteer2 read from ``data_dir``."""
    d = config.data
    if d.source == "synthetic":
        n = int(d.num_pairs)
        pairs = prefs.synthetic_pairs(n, int(d.data_seed), rare_chosen=float(d.rare_chosen),
                                      rare_rejected=float(d.rare_rejected),
                                      truncate_rejected=float(d.truncate_rejected))
        a, b = int(0.7 * n), int(0.85 * n)
        return {"train": pairs.take(range(a)), "validation": pairs.take(range(a, b)),
                "test": pairs.take(range(b, n))}
    if not d.get("data_dir"):
        raise ValueError(f"config.data.source={d.source!r} needs config.data.data_dir (train.jsonl, validation.jsonl)")
    return prefs.read_splits(d.source, d.data_dir, float(d.val_fraction), int(d.split_seed))


@tasks.without_dataset
def preference_task(dataset, config) -> tasks.TaskParts:
    """Data kind for reward models (``config.data.kind = 'jaxrec.methods.gaze_reward.preference_task'``).

    Marked :func:`~jaxrec.data.tasks.without_dataset`: no interaction dataset is loaded
    (``dataset`` is None); preference pairs come from :func:`load_pairs`. Tokenizers are built on the training texts (LLM pieces of
    ``llm_piece`` characters, ET pieces of ``et_piece``); ET features come from the proxy or
    from an :class:`ET1BiLSTM` fitted to the proxy on the training texts
    (``config.data.predictor``), cached by token-id hash, and remapped with
    ``config.data.remap``. ``extras``: ``vocab_size``, ``et_vocab_size``, ``cache_size`` and,
    for the BiLSTM, its final imitation loss.
    """
    d = config.data
    splits = load_pairs(config)
    tr = splits["train"]
    if len(tr) == 0:
        raise ValueError("preference task: the training split has no pairs")
    texts = tr.prompt + tr.chosen + tr.rejected
    dec = _pretrained_decoder(config, tr)
    llm_tok = dec.tokenizer if dec is not None else prefs.PieceTokenizer(
        texts + [prefs.USER, prefs.ASSISTANT], int(d.llm_piece))
    et_tok = prefs.PieceTokenizer(texts, int(d.et_piece))
    cache = prefs.FeatureCache()
    extras = {"vocab_size": llm_tok.vocab_size, "et_vocab_size": et_tok.vocab_size,
              "name": f"preferences/{d.source}"}
    predictor = None
    if d.predictor == "bilstm":
        predictor, extras["bilstm_loss"] = _fit_bilstm(texts, et_tok, int(d.max_et_len), int(d.bilstm_steps),
                                                       int(d.data_seed))
    elif d.predictor != "proxy":
        raise ValueError(f"config.data.predictor must be 'proxy' or 'bilstm', got {d.predictor!r}")
    enc = functools.partial(prefs.encode_pairs, llm_tok=llm_tok, et_tok=et_tok, max_len=int(d.max_len),
                            max_et_len=int(d.max_et_len), predictor=predictor, remap=d.remap, cache=cache)
    arrays = {k: enc(v) for k, v in splits.items()}
    extras["cache_size"] = len(cache)
    if dec is not None:
        extras["pretrained_decoder"] = dec.backbone_params()
        extras["pretrain_loss"] = (dec.info.get("loss_first"), dec.info.get("loss_last"))
    return tasks.TaskParts(train=arrays["train"], validation=_eval_set(arrays["validation"]),
                           test=_eval_set(arrays["test"]), extras=extras)


def _pretrained_decoder(config, train_pairs):
    """The decoder the reward model starts from, or None (random init).

    ``config.model.decoder_checkpoint`` names a saved / Hugging Face decoder; otherwise, with
    ``config.model.pretrain_steps`` > 0, the decoder pretrained on the training pairs' texts as
    the reward model reads them (``user: <prompt> assistant: <response>``, both responses),
    cached under a key of those texts and the settings (:func:`decoder_lm.get_decoder`), so every
    variant and seed starts from the same weights.
    """
    m, d = config.model, config.data
    ckpt = str(m.get("decoder_checkpoint", "") or "")
    steps = int(m.get("pretrain_steps", 0) or 0)
    if not ckpt and steps <= 0:
        return None
    section = decoder_lm.default_section(
        checkpoint=ckpt, piece=int(d.llm_piece), mark="", pretrain_steps=steps, max_len=int(d.max_len),
        seed=int(d.data_seed), **{f: int(m[f]) for f in decoder_lm.ARCH_FIELDS})
    texts = [f"{prefs.USER} {p} {prefs.ASSISTANT} {r}"
             for side in (train_pairs.chosen, train_pairs.rejected) for p, r in zip(train_pairs.prompt, side)]
    dec = decoder_lm.get_decoder(section, texts)
    if not hasattr(dec.tokenizer, "encode_words"):
        raise ValueError(f"config.model.decoder_checkpoint={ckpt!r}: GazeReward aligns gaze features to words "
                         "and needs a jaxrec decoder (PieceTokenizer); this tokenizer has no word alignment")
    return dec


def _fit_bilstm(texts, et_tok, max_et_len: int, steps: int, seed: int):
    """Fits :class:`ET1BiLSTM` to the proxy on ``texts``; returns ``(predictor, final loss)``."""
    ids = np.zeros((len(texts), max_et_len), np.int32)
    mask = np.zeros_like(ids)
    y = np.zeros((len(texts), max_et_len, 5), np.float32)
    for i, t in enumerate(texts):
        words = t.split()
        e_ids, e_wid = et_tok.encode_words(words)
        e_ids, e_wid = e_ids[:max_et_len], e_wid[:max_et_len]
        ids[i, :len(e_ids)], mask[i, :len(e_ids)] = e_ids, 1
        y[i, :len(e_ids)] = prefs.words_to_tokens(prefs.proxy_features(words), e_wid)
    model, params, losses = train_et_bilstm(ids, mask, y, et_tok.vocab_size, steps=steps, seed=seed)
    return bilstm_predictor(model, params, max_et_len), float(np.mean(losses[-10:]))
