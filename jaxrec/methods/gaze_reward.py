"""GazeReward: reward models that read predicted eye-tracking (ET) features.

Paper: Lopez-Cardona, Segura, Karatzoglou, Abadal, Arapakis, "Seeing Eye to AI: Human
Alignment via Gaze-Based Response Rewards for Large Language Models", ICLR 2025,
arXiv 2410.01532 (method: ET predictors, GazeConcat / GazeAdd reward models; experiments: training).

* ET predictors (:mod:`jaxrec.backbones.et_predictors`, ``config.data.predictor``): the offline
  reading-time proxy (:func:`jaxrec.data.preferences.proxy_features`), a BiLSTM fitted to it
  here, or an ET1-style BiLSTM / ET2-style RoBERTa regressor read from a directory, all with
  the 5-feature interface (nFix, FFD, GPT, TRT, fixProp).
* :class:`ETProjector`: ``Linear(F->w) -> LayerNorm -> ReLU -> Dropout(p1) ->
  Linear(w->H) -> Dropout(p2) -> LayerNorm(H)``.
* :class:`GazeRewardModel`: a Llama-family decoder (:mod:`jaxrec.backbones.llama`) with a scalar
  head pooled at the **last non-pad token** (HF pools at -1, which can be a pad under right
  padding); ``variant`` ``none`` (baseline), ``concat`` (GazeConcat: ``<eye/> f(g_1..g_m) </eye>``
  before the text, g in the ET tokenizer's space) or ``add`` (GazeAdd: ``E(x_t) + f(g~_t)`` with g
  remapped to the LLM's tokens through the words). The two delimiter embeddings are their own
  parameters (``eye_tokens [2, H]``) rather than rows appended to the (possibly frozen) table —
  the same function as resizing the table, without touching the checkpoint's embedding.
* The decoder (:func:`load_decoder`): a Hugging Face Llama / Mistral / Gemma checkpoint
  (``config.model.decoder_checkpoint``; its ``config.json`` fixes the shape, its tokenizer the
  ids), a decoder pretrained here on the pairs' texts (``config.model.pretrain_steps`` > 0,
  cached and shared by every variant and seed), or a random one of ``config.model``'s sizes.
* :func:`bt_loss`: Bradley–Terry ``-log sigmoid(r_c - r_r)`` (TRL's RewardTrainer);
  :func:`pairwise_accuracy`: ``mean[r_c > r_r]``; :class:`PairwiseEvaluator`.

Training regimes (``config.model.regime``): ``lora`` (projector, eye tokens, score head, final
norm and q/v LoRA; the paper's), ``frozen`` (no LoRA), ``full``. The state holds only the
trainable leaves; the frozen ones (the pretrained weights) are :func:`make_consts`, an argument
of the jitted step rather than a closure constant, so the compiled program does not grow with
the model. The data kind is ``'preferences'`` (:func:`preference_task`).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.backbones import decoder_lm, et_predictors, hf
from jaxrec.backbones.llama import LlamaConfig, LlamaModel, load_llama
from jaxrec.data import preferences as prefs
from jaxrec.data import tasks
from jaxrec.peft import freeze
from jaxrec.peft.soft_prompt import concat_blocks, wrap_block
from jaxrec.runs import eval_batches

Array = Any
VARIANTS = ("none", "concat", "add")
SIDES = ("chosen", "rejected")
# Trainable parameters per regime (regexes over '/'-joined paths of the 'params' tree).
HEAD_PATTERNS = (r"^et_proj/", r"^eye_tokens$", r"^score/", r"^decoder/norm/")
REGIMES = {"frozen": HEAD_PATTERNS, "lora": HEAD_PATTERNS + (r"(^|/)lora_[ab]$",), "full": (r".*",)}
# Leaves no pretrained decoder holds: initialised from the rng even when one is loaded.
NEW_LEAVES = (r"^(et_proj|eye_tokens|score)(/|$)", r"(^|/)lora_[ab]$")


# ---------------------------------------------------------------------------- model
class ETProjector(nn.Module):
    """``g [..., F] -> [..., H]`` (the paper's ET projector)."""

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
    params: Any                       # the trainable leaves of the 'params' tree only
    opt_state: Any
    step: Array
    model: GazeRewardModel = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def decoder_config(config, task) -> LlamaConfig:
    """The reward model's decoder: the checkpoint's shape (``task.extras['decoder_config']``,
    from its ``config.json`` / ``decoder.json``) when there is one, else ``config.model``'s
    fields over the task's vocabulary; no LM head; q/v LoRA in the ``lora`` regime."""
    m = config.model
    lora = dict(lora_rank=int(m.lora_rank) if m.regime == "lora" else 0, lora_alpha=float(m.lora_alpha),
                lora_dropout=float(m.lora_dropout), with_lm_head=False)
    base = task.extras.get("decoder_config")
    if base is not None:
        return dataclasses.replace(base, **lora)
    return LlamaConfig(vocab_size=int(task.extras["vocab_size"]), hidden_size=int(m.hidden_size),
                       intermediate_size=int(m.intermediate_size), num_layers=int(m.num_layers),
                       num_heads=int(m.num_heads), max_position_embeddings=int(m.max_position_embeddings), **lora)


def build_model(config, task) -> GazeRewardModel:
    """The :class:`GazeRewardModel` of ``config.model`` around :func:`decoder_config`."""
    m = config.model
    if m.regime not in REGIMES:
        raise ValueError(f"config.model.regime must be one of {sorted(REGIMES)}, got {m.regime!r}")
    return GazeRewardModel(decoder_config(config, task), m.variant, feature_mask(config),
                           int(m.proj_width), float(m.p1), float(m.p2))


def feature_mask(config) -> tuple:
    """``config.model.features`` (a name of :data:`~jaxrec.data.preferences.FCOMBS` or 5 flags)."""
    fc = config.model.features
    if isinstance(fc, str):
        if fc not in prefs.FCOMBS:
            raise ValueError(f"config.model.features must be one of {sorted(prefs.FCOMBS)} or 5 flags, got {fc!r}")
        return prefs.FCOMBS[fc]
    return tuple(int(x) for x in fc)


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
    """AdamW with cosine decay after a linear warm-up, floored at ``min_lr_ratio * lr`` (the authors' training script)."""
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


def _patterns(model: GazeRewardModel, regime: str) -> tuple:
    """The regime's trainable patterns, less those of modules this variant lacks (an unmatched
    pattern is an error in :func:`jaxrec.peft.freeze.param_labels`)."""
    absent = {"none": ("et_proj", "eye_tokens"), "add": ("eye_tokens",), "concat": ()}[model.variant]
    return tuple(p for p in REGIMES[regime] if not any(a in p for a in absent))


def _initial_params(model: GazeRewardModel, task, config, rng) -> dict:
    """The full ``'params'`` tree before training.

    With a pretrained decoder (``task.extras['pretrained_decoder']``) its leaves are copied in
    and only the new leaves (:data:`NEW_LEAVES`) are initialised from ``rng`` — the decoder's
    random init is never materialised. Without one, the decoder is random: from ``rng`` in the
    ``full`` regime; otherwise (frozen leaves) from a key of ``config.seed`` alone, so that
    :func:`make_consts`, which has no ``rng``, rebuilds the same frozen leaves.
    """
    ex = _both(task.example_batch(2))
    pre = task.extras.get("pretrained_decoder")
    if pre is None:
        params = hf.template_params(model, ex, rng)
        if config.model.regime != "full":
            seeded = hf.template_params(model, ex, jax.random.fold_in(jax.random.key(int(config.seed)), 1))
            params = dict(params, decoder=seeded["decoder"])
        return params
    params = hf.template_params(model, ex, rng, concrete=NEW_LEAVES)
    dec = decoder_lm.merge_params(params["decoder"], pre, "decoder")
    left = [hf.path_str(p) for p, v in jax.tree_util.tree_flatten_with_path(dec)[0]
            if isinstance(v, jax.ShapeDtypeStruct)]
    if left:
        raise ValueError(f"the pretrained decoder has no value for decoder leaves {left[:5]} "
                         f"({task.extras.get('decoder_source', '')})")
    return dict(params, decoder=dec)


def _split(model, task, config, rng) -> tuple:
    params = _initial_params(model, task, config, rng)
    labels = freeze.param_labels(params, _patterns(model, config.model.regime))
    return freeze.split_trainable(params, labels)


def init(rng, task, config) -> State:
    """The trainable leaves of the reward model (regime ``config.model.regime``) and their
    AdamW state; the frozen ones are :func:`make_consts`'."""
    model = build_model(config, task)
    trainable, _ = _split(model, task, config, rng)
    num_steps = int(config.train.get("num_steps", 0) or 0) or task.steps_per_epoch * int(config.train.get("num_epochs", 1))
    tx = make_optimizer(config, num_steps)
    return State(trainable, tx.init(trainable), jnp.zeros((), jnp.int32), model, tx)


def make_consts(config, task) -> dict:
    """``{'frozen': the frozen leaves}`` (the pretrained decoder's weights outside the
    regime's trainable set): a jit argument of every step — never closed over, which would
    compile them into the program as constants — and never checkpointed."""
    model = build_model(config, task)
    _, frozen = _split(model, task, config, jax.random.key(0))   # the rng only draws new, trainable leaves
    return {"frozen": jax.tree.map(jnp.asarray, frozen)}


def full_params(state: State, consts) -> dict:
    """The complete ``{'params': ...}`` variables: trainable state leaves + frozen consts."""
    return {"params": freeze.merge(state.params, consts["frozen"] if consts else {})}


def train_step(state: State, batch, rng, consts):
    """One Bradley–Terry step; metrics ``loss``, ``accuracy`` (training batch), ``margin``."""
    frozen = consts["frozen"] if consts else {}

    def loss_fn(p):
        r_c, r_r = rewards(state.model, {"params": freeze.merge(p, frozen)}, batch, deterministic=False, rng=rng)
        return bt_loss(r_c, r_r), (r_c, r_r)
    (loss, (r_c, r_r)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt = state.tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    metrics = {"loss": loss, "accuracy": jnp.mean(r_c > r_r), "margin": jnp.mean(r_c - r_r)}
    return state.replace(params=params, opt_state=opt, step=state.step + 1), metrics


def predict(state: State, batch, consts) -> Array:
    """Rewards ``[B, 2]``: column 0 the chosen response, column 1 the rejected one."""
    r_c, r_r = rewards(state.model, full_params(state, consts), batch)
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
    (``dataset`` is None); preference pairs come from :func:`load_pairs`.

    * LLM side (:func:`load_decoder`): a Hugging Face checkpoint's own tokenizer and shape
      (``config.model.decoder_checkpoint``), a decoder pretrained here, or a
      :class:`~jaxrec.data.preferences.PieceTokenizer` of ``llm_piece`` characters built on the
      training texts for a random decoder.
    * ET side (``config.data.predictor``, :mod:`jaxrec.backbones.et_predictors`): the proxy
      (ET pieces of ``et_piece`` characters), a BiLSTM fitted to the proxy, or an ET1 / ET2
      predictor directory with its own tokenizer. Features are cached by token-id hash and
      remapped to the LLM's tokens with ``config.data.remap``.

    ``extras``: ``vocab_size``, ``et_vocab_size``, ``cache_size``, ``predictor``; with a
    pretrained decoder ``decoder_config``, ``pretrained_decoder`` (its ``'params'`` without a
    head), ``decoder_source``; ``pretrain_loss`` / ``bilstm_loss`` when trained here.
    """
    d = config.data
    splits = load_pairs(config)
    tr = splits["train"]
    if len(tr) == 0:
        raise ValueError("preference task: the training split has no pairs")
    texts = tr.prompt + tr.chosen + tr.rejected
    dec = load_decoder(config, tr)
    extras = {"name": f"preferences/{d.source}", "predictor": str(d.predictor)}
    if dec is None:
        llm_tok = prefs.PieceTokenizer(texts + [prefs.USER, prefs.ASSISTANT], int(d.llm_piece))
    else:
        llm_tok = dec["tokenizer"]
        extras.update(decoder_config=dec["config"], pretrained_decoder=dec["params"], decoder_source=dec["source"])
        if "pretrain_loss" in dec:
            extras["pretrain_loss"] = dec["pretrain_loss"]
    _check_lengths(config, extras.get("decoder_config"))
    kind, _ = et_predictors.parse_predictor(d.predictor)
    predictor = None
    if kind in ("et1", "et2"):
        predictor = et_predictors.load_predictor(str(d.predictor), int(d.max_et_len))
        et_tok = predictor.tokenizer
        _check_features(config, predictor)
    else:
        et_tok = prefs.PieceTokenizer(texts, int(d.et_piece))
        if kind == "bilstm":
            predictor, extras["bilstm_loss"] = _fit_bilstm(texts, et_tok, int(d.max_et_len), int(d.bilstm_steps),
                                                           int(d.data_seed))
    cache = prefs.FeatureCache()
    extras.update(vocab_size=llm_tok.vocab_size, et_vocab_size=et_tok.vocab_size)
    enc = functools.partial(prefs.encode_pairs, llm_tok=llm_tok, et_tok=et_tok, max_len=int(d.max_len),
                            max_et_len=int(d.max_et_len), predictor=predictor, remap=d.remap, cache=cache)
    arrays = {k: enc(v) for k, v in splits.items()}
    extras["cache_size"] = len(cache)
    return tasks.TaskParts(train=arrays["train"], validation=_eval_set(arrays["validation"]),
                           test=_eval_set(arrays["test"]), extras=extras)


def _check_lengths(config, dec_cfg) -> None:
    """The longest decoder input (``max_len``, plus ``max_et_len + 2`` for GazeConcat) must fit
    the decoder's position table."""
    d, m = config.data, config.model
    longest = int(d.max_len) + (int(d.max_et_len) + 2 if m.variant == "concat" else 0)
    limit = dec_cfg.max_position_embeddings if dec_cfg is not None else int(m.max_position_embeddings)
    if longest > limit:
        raise ValueError(f"config.data.max_len={d.max_len}" + (f" + max_et_len={d.max_et_len} + 2" if m.variant ==
                         "concat" else "") + f" = {longest} tokens exceed the decoder's max_position_embeddings {limit}")


def _check_features(config, predictor) -> None:
    """Every feature the reward model selects must be one the predictor produces."""
    want = [f for f, on in zip(prefs.FEATURES, feature_mask(config)) if on]
    missing = [f for f in want if f not in predictor.features]
    if missing:
        raise ValueError(f"config.model.features={config.model.features!r} selects {missing}, which the predictor "
                         f"{predictor.name!r} does not produce (it gives {list(predictor.features)}); "
                         "choose a feature combination within them, e.g. fcomb1 for TRT")


def load_decoder(config, train_pairs) -> dict | None:
    """The decoder the reward model starts from, or None (random init).

    ``config.model.decoder_checkpoint`` names either a Hugging Face Llama / Mistral / Gemma
    directory (``config.json`` + safetensors + ``tokenizer.json``: the shape comes from its
    ``config.json``, the special ids from its tokenizer) or a jaxrec decoder
    (:func:`jaxrec.backbones.decoder_lm.save`, ``decoder.json``). Otherwise, with
    ``config.model.pretrain_steps`` > 0, the decoder pretrained on the training pairs' texts as
    the reward model reads them (``user: <prompt> assistant: <response>``, both responses),
    cached under a key of those texts and the settings (:func:`decoder_lm.get_decoder`), so every
    variant and seed starts from the same weights.

    Returns:
      ``{'config': LlamaConfig, 'params': 'params' tree without lm_head, 'tokenizer', 'source'}``
      (+ ``pretrain_loss``), or None.

    Raises:
      FileNotFoundError / ValueError (CheckpointError): the message names the directory and the
      file or field (no config.json, a tokenizer with ids beyond the model's vocabulary, ...).
    """
    m, d = config.model, config.data
    ckpt = str(m.get("decoder_checkpoint", "") or "")
    if ckpt:
        if not os.path.isdir(ckpt):
            raise FileNotFoundError(f"config.model.decoder_checkpoint {ckpt!r} is not a directory")
        if not os.path.isfile(os.path.join(ckpt, "decoder.json")):
            return _hf_decoder(ckpt)
        dec = decoder_lm.load(ckpt)
        return {"config": dec.config, "params": dec.backbone_params(), "tokenizer": dec.tokenizer, "source": ckpt}
    steps = int(m.get("pretrain_steps", 0) or 0)
    if steps <= 0:
        return None
    section = decoder_lm.default_section(
        piece=int(d.llm_piece), mark="", pretrain_steps=steps, max_len=int(d.max_len),
        seed=int(d.data_seed), **{f: int(m[f]) for f in decoder_lm.ARCH_FIELDS})
    texts = [f"{prefs.USER} {p} {prefs.ASSISTANT} {r}"
             for side in (train_pairs.chosen, train_pairs.rejected) for p, r in zip(train_pairs.prompt, side)]
    dec = decoder_lm.get_decoder(section, texts)
    return {"config": dec.config, "params": dec.backbone_params(), "tokenizer": dec.tokenizer,
            "source": dec.info.get("source", "pretrained"),
            "pretrain_loss": (dec.info.get("loss_first"), dec.info.get("loss_last"))}


def _hf_decoder(path: str) -> dict:
    """A Hugging Face decoder directory: weights without the LM head (:func:`load_llama`) and
    its own tokenizer; the tokenizer's ids must all be rows of the embedding."""
    if not os.path.isfile(os.path.join(path, hf.CONFIG_FILE)):
        raise FileNotFoundError(f"config.model.decoder_checkpoint {path!r}: no config.json (a Hugging Face "
                                "checkpoint) and no decoder.json (a jaxrec decoder)")
    cfg_json = hf.read_config(path)
    if "vocab_size" not in cfg_json:
        raise ValueError(f"{os.path.join(path, hf.CONFIG_FILE)}: missing field 'vocab_size'")
    tok = prefs.TextTokenizer.from_dir(path, "config.model.decoder_checkpoint")
    if tok.vocab_size > int(cfg_json["vocab_size"]):
        raise ValueError(f"config.model.decoder_checkpoint {path!r}: tokenizer.json has {tok.vocab_size} ids but "
                         f"config.json 'vocab_size' is {cfg_json['vocab_size']}: the tokenizer does not belong to "
                         "this model")
    cfg, params = load_llama(path, with_lm_head=False)
    return {"config": cfg, "params": params, "tokenizer": tok, "source": path}


def _fit_bilstm(texts, et_tok, max_et_len: int, steps: int, seed: int):
    """Fits a :class:`~jaxrec.backbones.et_predictors.BiLSTMRegressor` to the proxy on
    ``texts``; returns ``(predictor, final loss)``."""
    ids = np.zeros((len(texts), max_et_len), np.int32)
    mask = np.zeros_like(ids)
    y = np.zeros((len(texts), max_et_len, 5), np.float32)
    for i, t in enumerate(texts):
        words = t.split()
        e_ids, e_wid = et_tok.encode_words(words)
        e_ids, e_wid = e_ids[:max_et_len], e_wid[:max_et_len]
        ids[i, :len(e_ids)], mask[i, :len(e_ids)] = e_ids, 1
        y[i, :len(e_ids)] = prefs.words_to_tokens(prefs.proxy_features(words), e_wid)
    cfg, params, losses = et_predictors.train_et_bilstm(ids, mask, y, et_tok.vocab_size, steps=steps, seed=seed)
    return et_predictors.bilstm_predictor(cfg, params, et_tok, max_et_len), float(np.mean(losses[-10:]))
