"""LEA: a parameter-efficient LLM as the environment (LE) of RL recommenders.

Paper: J. Wang, A. Karatzoglou, I. Arapakis, J. M. Jose, "Large Language Model driven Policy
Exploration for Recommender Systems" / "LLM as environment", SIGIR 2024, arXiv 2403.16948;
abstract and Fig. 2 only (spec ``rl.md`` §8). Every detail below beyond the abstract is
[inferred] and a field of ``config.lea`` (:func:`default_section`).

The environment is a small Llama-family decoder (:mod:`jaxrec.backbones.decoder_lm`,
pretrained here on the dataset's item texts — it stands in for the paper's LLM) with:

(a) **Item tokens** (Fig. 2a): one new embedding row per item, ``item_tokens [N, D]``. Only
    these rows train (the decoder is frozen), by next-token cross-entropy on a sentence
    template describing the item (``lea.template``, e.g. ``"<item_i> is toy story | genres:
    animation"``): the item token must make the decoder generate its own text.
(b) **State model** (Fig. 2b): the item-token sequence of a session prefix ``<s> x_1 .. x_t``
    -> the last real token's hidden state -> ``state_head`` -> s^e_t [Ds]. Actions are the
    item tokens through ``action_proj`` [N, Ds]; the loss is the softmax over state–action
    similarities against the next item, L_sm = CE(s^e_t · A^T / τ, a_{t+1}).
(c) **Reward model** (Fig. 2c): ``<s> x_1 .. x_t a`` -> the hidden state at the candidate a ->
    ``score`` -> r(s, a); L_rm = Bradley–Terry −log σ(r(s, a⁺) − r(s, a⁻)) of the logged next
    item a⁺ against an item a⁻ drawn uniformly from those the session never touches.

(b) and (c) each train their own LoRA on the decoder (``lea.lora_rank``) plus their heads,
with the item tokens and the decoder frozen, on a seeded subset of the training sessions
(``lea.train_fraction``, 10 % by default: the paper's "small subset of user data").

The decoder (``config.decoder``, :func:`jaxrec.backbones.frozen_decoder.load`) may be a Hugging
Face Llama / Mistral / Gemma directory (``decoder_checkpoint=DIR`` in ``configs/lea.py``); its
tokenizer's own bos / pad ids build every input, and its weights stay frozen in
``config.decoder.frozen_dtype``. In every stage the frozen leaves are an *argument* of the
jitted step (:func:`stage_step`), never closed over: a closed-over 8B decoder would become
~16–30 GB of constants inside the compiled program.

**The LEA stage** (:func:`build_artefact`, also ``python -m jaxrec.methods.lea
--config=configs/lea.py:...``) trains the environment (cached under ``lea.cache_dir`` as
``env-<key>``: the trained leaves only, the decoder is re-read from its checkpoint), runs it
over the replay task and writes an **artefact directory** ``aug-<key>`` (atomically,
:func:`jaxrec.storage.atomic_directory`; a failed build leaves nothing) with ``arrays.npz``
(the precomputed arrays of :mod:`jaxrec.data.lea`) and ``info.json`` (losses, the environment's
held-out quality, a fingerprint of the replay data it was computed on). Both are keyed by
everything that changes them, so a rerun — every variant of a table — reuses them. The data
kind ``'lea'`` only reads the directory; the recommender never runs the LLM, and
:mod:`jaxrec.methods.sqn` / :mod:`jaxrec.methods.sa2c` read the arrays through their LEA switches.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrec import config_util, storage
from jaxrec.backbones import decoder_lm, frozen_decoder
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.data import examples, tasks
from jaxrec.data import lea as lea_data
from jaxrec.methods.gaze_reward import bt_loss, last_real_index
from jaxrec.peft import freeze

FORMAT = 2          # bump when the saved layout changes (old caches are then retrained)
STAGES = ("items", "state", "reward")
LORA = r"(^|/)lora_[ab]$"
# Trainable parameters of each stage (regexes over '/'-joined paths of the 'params' tree).
TRAINABLE = {"items": (r"^item_tokens$",),
             "state": (LORA, r"^state_head/", r"^action_proj/"),
             "reward": (LORA, r"^score/")}
# lea.* fields that change what the three stages learn (the cache key).
TRAIN_FIELDS = ("template", "text_fields", "item_max_len", "lora_rank", "lora_alpha",
                "train_fraction", "state_dim", "temperature", "rm_negatives", "item_steps",
                "item_lr", "state_steps", "state_lr", "reward_steps", "reward_lr",
                "batch_size", "seed")
# lea.* fields that change the precomputed arrays given an environment.
AUG_FIELDS = ("aug_k", "aug_weighting", "aug_exclude_history", "reward_transform", "reward_mix",
              "eval_batch")
TRANSFORMS = ("sigmoid", "raw")
WEIGHTINGS = ("reward", "uniform")


def default_section(**overrides) -> ml_collections.ConfigDict:
    """``config.lea``: every [inferred] LEA setting (rl.md §8 UNVERIFIED list), defaults the
    spec's suggestions or CPU-sized.

    Recommender switches (read by :mod:`jaxrec.methods.sqn` / :mod:`~jaxrec.methods.common`):
      state: 'none' | 'concat' | 'replace' — how s^e_t meets the encoder state.
      rewards: 'fixed' (r_click / r_buy) | 'reward_model'.
      aug: add the augmented positives' CE and Q terms; aug_k of them per state, weighted by
        aug_weight × their per-action weights; aug_q: their Q target, 'reward' (y = r),
        'logged_next' (y = r + γ·V(s′) of the logged next state) or 'none'; aug_advantage:
        in SA2C's phase 2, weight each augmented CE by that action's own advantage (as the
        logged one's); off: by its fixed weight only.
    Augmentation (precomputed by :func:`build_artefact`, read by :mod:`jaxrec.data.lea`):
      aug_weighting: per-action weights 'reward' (σ of the reward-model score) | 'uniform' (1).
      aug_exclude_history: never propose an item already in the state window.
      reward_transform: 'sigmoid' (σ(r) ∈ (0, 1), the range of 0.2 / 1.0) | 'raw';
      reward_mix: r = (1 − mix)·fixed + mix·model (1: the model's reward replaces the fixed).
    Environment (this module):
      template: the item sentence; '{item}' is the new item token, '{text}' the item's text
        (``text_fields`` of :func:`jaxrec.backbones.decoder_lm.item_text`); item_max_len its
        tokens.
      lora_rank, lora_alpha: the adapters of the state and reward models (q/v projections).
      train_fraction: share of the training sessions the LE learns from (seeded by ``seed``).
      state_dim: Ds (0: the decoder width); temperature: τ of L_sm.
      rm_negatives: unseen items drawn per transition for L_rm.
      item_steps / state_steps / reward_steps, *_lr, batch_size: the three stages' Adam runs.
      eval_batch: rows per jitted pass when precomputing.
      cache_dir: where environments and artefact directories are kept ('' = $JAXREC_DATA_DIR/lea).
    The stage (read by :mod:`jaxrec.data.lea`):
      artefact: an artefact directory written by :func:`build_artefact` to read as is ('' =
        build or reuse the cached one through ``build``).
      build: the stage that writes the artefact directory, as ``module.function`` taking
        ``(dataset, config)`` and returning the directory.
    """
    s = ml_collections.ConfigDict(dict(
        state="none", rewards="fixed", aug=False, aug_k=2, aug_weight=0.2, aug_q="reward",
        aug_advantage=True, aug_weighting="reward", aug_exclude_history=True, reward_transform="sigmoid",
        reward_mix=1.0,
        template="{item} is {text}", text_fields=("title", "genres"), item_max_len=32,
        lora_rank=4, lora_alpha=8.0, train_fraction=0.1, state_dim=0, temperature=1.0,
        rm_negatives=4, item_steps=200, item_lr=1e-2, state_steps=300, state_lr=3e-3,
        reward_steps=300, reward_lr=3e-3, batch_size=64, seed=0, eval_batch=1024,
        cache_dir="", artefact="", build="jaxrec.methods.lea.build_artefact"))
    for k, v in overrides.items():
        if k not in s:
            raise KeyError(f"config.lea has no field {k!r}; fields: {', '.join(sorted(s))}")
        s[k] = v
    return s


# ---------------------------------------------------------------------------- the model
class LEModel(nn.Module):
    """The decoder with item tokens and the state / action / score heads.

    Token ids ``< V`` are the decoder's text vocabulary; ``V + i`` is item i's new token.
    ``__call__`` touches every parameter (for ``init``).
    """

    config: LlamaConfig          # with_lm_head=True; lora_rank > 0 for stages (b), (c)
    num_items: int
    state_dim: int

    def setup(self):
        cfg = self.config
        self.decoder = LlamaModel(cfg)
        self.item_tokens = self.param("item_tokens", nn.initializers.normal(cfg.initializer_range),
                                      (self.num_items, cfg.hidden_size))
        self.state_head = nn.Dense(self.state_dim)
        self.action_proj = nn.Dense(self.state_dim)
        self.score = nn.Dense(1)

    def embed(self, ids):
        """ids [B, T] in [0, V + N) -> [B, T, D]: text rows of the decoder's table, item rows
        of ``item_tokens``."""
        v = self.config.vocab_size
        text = self.decoder.embed(jnp.clip(ids, 0, v - 1))
        item = jnp.asarray(self.item_tokens)[jnp.clip(ids - v, 0, self.num_items - 1)].astype(text.dtype)
        return jnp.where((ids >= v)[..., None], item, text)

    def _run(self, ids, mask, logits: bool, deterministic: bool = True):
        return self.decoder(inputs_embeds=self.embed(ids), attention_mask=mask,
                            deterministic=deterministic, return_logits=logits)

    def lm_logits(self, ids, mask):
        """[B, T] -> [B, T, V] next-token logits over the text vocabulary."""
        return self._run(ids, mask, True).logits

    def _pooled(self, ids, mask):
        h = self._run(ids, mask, False).last_hidden
        return h[jnp.arange(h.shape[0]), last_real_index(mask)].astype(jnp.float32)

    def state(self, ids, mask):
        """[B, T] -> s^e [B, Ds] at the last real token."""
        return self.state_head(self._pooled(ids, mask))

    def actions(self):
        """[N, Ds] action embeddings (item tokens through ``action_proj``)."""
        return self.action_proj(jnp.asarray(self.item_tokens, jnp.float32))

    def reward(self, ids, mask):
        """[B, T] (candidate last) -> r [B] at the last real token."""
        return self.score(self._pooled(ids, mask))[:, 0]

    def __call__(self, ids, mask):
        return self.lm_logits(ids, mask), self.state(ids, mask), self.actions(), self.reward(ids, mask)


# ---------------------------------------------------------------------------- losses
def state_model_loss(s, actions, targets, temperature: float = 1.0):
    """L_sm: softmax over state–action similarity against the next item.

    Args:
      s: [B, Ds] states; actions: [N, Ds] action embeddings; targets: [B] next items.
    Returns:
      [] mean_B −log softmax(s · actionsᵀ / τ)[target].
    """
    logits = s @ actions.T / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def item_token_loss(logits, ids, loss_mask):
    """Next-token CE of the item sentence: ``logits [B, T, V]``, ``ids [B, T]``, ``loss_mask
    [B, T]`` = 1 where the token is predicted (the text after the item token)."""
    tgt = jnp.clip(ids[:, 1:], 0, logits.shape[-1] - 1)
    m = loss_mask[:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), tgt)
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


# ---------------------------------------------------------------------------- inputs
def item_sentences(dec: decoder_lm.DecoderLM, texts, template: str, max_len: int):
    """The item-token stage's rows: ``<s> before <item_i> after </s>`` per item.

    Args:
      dec: the decoder (its tokenizer; item i's token id is ``config.vocab_size + i``).
      texts: [N] item texts; template: with '{item}' and optionally '{text}'.
    Returns:
      (ids [N, T], mask [N, T], loss_mask [N, T]: 1 on tokens after the item token).
    """
    if template.count("{item}") != 1:
        raise ValueError(f"config.lea.template={template!r} must contain '{{item}}' exactly once")
    v, tok = dec.config.vocab_size, dec.tokenizer
    ids = np.full((len(texts), max_len), tok.pad_id, np.int32)
    mask = np.zeros_like(ids)
    loss = np.zeros_like(ids)
    for i, t in enumerate(texts):
        before, after = template.replace("{text}", t).split("{item}")
        pre = [tok.bos_id] + (list(tok.encode(before.strip())) if before.strip() else [])
        row = pre + [v + i] + list(tok.encode(after.strip())) + [tok.eos_id]
        row = row[:max_len]
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
        loss[i, len(pre) + 1:len(row)] = 1
    return ids, mask, loss


def prefix_tokens(state, num_items: int, vocab_size: int, extra: int = 0, *, bos: int, pad: int):
    """Replay states -> the prefix's item-token sequence ``<bos> x_1 .. x_t``.

    Args:
      state: [B, L] right-padded with ``num_items`` (rl.md §1.4).
      extra: free columns appended (for the reward model's candidate).
      bos, pad: the tokenizer's ids (:func:`special_ids`).
    Returns:
      (ids [B, 1 + L + extra], mask [B, 1 + L + extra], count [B] real items).
    """
    state = np.asarray(state)
    real = state < num_items
    b, l = state.shape
    ids = np.full((b, 1 + l + extra), pad, np.int32)
    mask = np.zeros_like(ids)
    ids[:, 0], mask[:, 0] = bos, 1
    ids[:, 1:1 + l] = np.where(real, vocab_size + state, pad)
    mask[:, 1:1 + l] = real
    return ids, mask, real.sum(1)


def reward_inputs(state, candidates, num_items: int, vocab_size: int, *, bos: int, pad: int):
    """``<bos> x_1 .. x_t a``: state [B, L], candidates [B] -> (ids, mask) [B, L + 2]."""
    ids, mask, count = prefix_tokens(state, num_items, vocab_size, 1, bos=bos, pad=pad)
    rows = np.arange(len(ids))
    ids[rows, count + 1] = vocab_size + np.asarray(candidates)
    mask[rows, count + 1] = 1
    return ids, mask


def sample_unseen(rng: np.random.Generator, sessions_items: list, session_of: np.ndarray,
                  num_items: int, k: int) -> np.ndarray:
    """[T, k] items drawn uniformly among those the row's session never touches.

    Args:
      sessions_items: per session row, its item set (sorted array); session_of: [T] rows.
    """
    out = rng.integers(0, num_items, (len(session_of), k))
    for _ in range(100):
        bad = np.zeros(out.shape, bool)
        for s in np.unique(session_of):
            rows = session_of == s
            bad[rows] = np.isin(out[rows], sessions_items[s])
        if not bad.any():
            return out.astype(np.int32)
        out[bad] = rng.integers(0, num_items, int(bad.sum()))
    raise ValueError("sample_unseen: a session covers (almost) every item; no unseen negative")


# ---------------------------------------------------------------------------- environment
@dataclasses.dataclass
class Environment:
    """A trained LE: the model, its decoder, and one ``'params'`` tree per stage.

    Attributes:
      model: :class:`LEModel`.
      params: {'state': tree, 'reward': tree} (each with the stage-(a) item tokens and the
        frozen decoder).
      decoder: the :class:`~jaxrec.backbones.decoder_lm.DecoderLM`.
      info: losses per stage (first / last tenth), sizes, cache path.
    """

    model: LEModel
    params: dict
    decoder: Any
    info: dict


def build_model(dec, num_items: int, section) -> LEModel:
    rank = int(section.lora_rank)
    if rank <= 0:
        raise ValueError(f"config.lea.lora_rank must be > 0 (the state and reward models are "
                         f"adapted with LoRA), got {rank}")
    cfg = dataclasses.replace(dec.config, lora_rank=rank, lora_alpha=float(section.lora_alpha),
                              with_lm_head=True)
    return LEModel(cfg, int(num_items), int(section.state_dim) or cfg.hidden_size)


def init_params(model: LEModel, dec, seed: int) -> dict:
    """Fresh LE parameters with the pretrained decoder's leaves put in as they are (their
    dtype kept: the frozen decoder stays in ``config.decoder.frozen_dtype``; LoRA b = 0, so
    the adapted decoder starts as the pretrained one). Only the leaves the decoder lacks are
    drawn: under jit the random init of the others is dropped, so no second copy of a large
    decoder is made.

    Raises:
      ValueError: a decoder leaf's shape differs from the model's.
    """
    ids = jnp.zeros((2, 4), jnp.int32)
    init = lambda: flax.traverse_util.flatten_dict(model.init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"])
    shapes = jax.eval_shape(init)
    given = {}
    for k, v in flax.traverse_util.flatten_dict({"decoder": dec.params}).items():
        if k not in shapes:
            continue           # e.g. a leaf of another head layout
        if tuple(shapes[k].shape) != tuple(np.shape(v)):
            raise ValueError(f"pretrained decoder leaf {'/'.join(k[1:])} has shape {tuple(np.shape(v))}, "
                             f"the model expects {tuple(shapes[k].shape)}")
        given[k] = jnp.asarray(v)
    made = jax.jit(lambda: {k: v for k, v in init().items() if k not in given})()
    return flax.traverse_util.unflatten_dict({**made, **given})


def stage_step(loss_fn, tx: optax.GradientTransformation):
    """The jitted Adam step of a stage: ``step(train, opt, frozen, batch, rng) -> (train, opt,
    loss)``, with ``loss_fn(variables, *batch, rng) -> []`` and ``variables = {'params':
    merge(train, frozen)}``.

    ``frozen`` (the decoder's weights: most of the model) is an argument, so the compiled
    program holds no weights and its size does not depend on the decoder's; only ``train``
    is differentiated.
    """
    def step(train, opt, frozen, batch, rng):
        loss, g = jax.value_and_grad(lambda t: loss_fn({"params": freeze.merge(t, frozen)}, *batch, rng))(train)
        upd, opt = tx.update(g, opt, train)
        return optax.apply_updates(train, upd), opt, loss
    return jax.jit(step)


def fit_stage(model: LEModel, params: dict, stage: str, loss_fn, arrays: tuple, steps: int,
              lr: float, batch_size: int, seed: int, label: str = ""):
    """Adam on the ``stage``'s trainable leaves (:data:`TRAINABLE`) only, over ``steps``
    random minibatches of ``arrays`` (each ``[N, ...]``; minibatch ``s`` draws
    ``default_rng(seed).integers(0, N, batch_size)`` in turn); the rest is frozen by
    construction (it is not differentiated) and passed to the step as an argument.

    ``loss_fn(variables, *batch, rng) -> []``. ``label`` prints progress to stderr.
    Returns (params, losses [steps] float64).
    """
    labels = freeze.param_labels(params, TRAINABLE[stage])
    train, frozen = freeze.split_trainable(params, labels)
    tx = optax.adam(lr)
    frozen = jax.device_put(frozen)                 # on the device once, not per step
    opt = tx.init(train)
    step = stage_step(loss_fn, tx)
    rng, np_rng = jax.random.key(seed), np.random.default_rng(seed)
    losses = np.zeros(steps, np.float64)
    log_every, t0 = max(steps // 5, 1), time.time()
    for s in range(steps):
        idx = np_rng.integers(0, len(arrays[0]), batch_size)
        train, opt, loss = step(train, opt, frozen, tuple(a[idx] for a in arrays), jax.random.fold_in(rng, s))
        losses[s] = float(loss)
        if label and ((s + 1) % log_every == 0 or s + 1 == steps):
            print(f"[{label}] step {s + 1}/{steps} loss {losses[s]:.4f} "
                  f"({(s + 1) / max(time.time() - t0, 1e-9):.1f} steps/s)", file=sys.stderr, flush=True)
    return freeze.merge(train, frozen), losses


def train_item_tokens(model, params, ids, mask, loss_mask, section, label: str = ""):
    """Stage (a): only ``item_tokens`` learn to generate their item's sentence."""
    return fit_stage(model, params, "items", _item_loss(model), (ids, mask, loss_mask), int(section.item_steps),
                     float(section.item_lr), int(section.batch_size), int(section.seed), label)


def train_state_model(model, params, ids, mask, targets, section, label: str = ""):
    """Stage (b): LoRA + state head + action projection by L_sm."""
    return fit_stage(model, params, "state", _state_loss(model, float(section.temperature)), (ids, mask, targets),
                     int(section.state_steps), float(section.state_lr), int(section.batch_size),
                     int(section.seed) + 1, label)


def train_reward_model(model, params, pos_ids, pos_mask, neg_ids, neg_mask, section, label: str = ""):
    """Stage (c): LoRA + score head by Bradley–Terry on (a⁺, a⁻) pairs (one pass over 2B)."""
    return fit_stage(model, params, "reward", _reward_loss(model), (pos_ids, pos_mask, neg_ids, neg_mask),
                     int(section.reward_steps), float(section.reward_lr), int(section.batch_size),
                     int(section.seed) + 2, label)


# The stage losses are built once per model (hashable: a frozen linen module), so repeated
# fits of one model reuse one compiled step per stage shape.
@functools.lru_cache(maxsize=16)
def _item_loss(model):
    def loss_fn(v, b_ids, b_mask, b_loss, r):
        return item_token_loss(model.apply(v, b_ids, b_mask, method=LEModel.lm_logits), b_ids, b_loss)
    return loss_fn


@functools.lru_cache(maxsize=16)
def _state_loss(model, tau: float):
    def loss_fn(v, b_ids, b_mask, b_tgt, r):
        s = model.apply(v, b_ids, b_mask, method=LEModel.state)
        return state_model_loss(s, model.apply(v, method=LEModel.actions), b_tgt, tau)
    return loss_fn


@functools.lru_cache(maxsize=16)
def _reward_loss(model):
    def loss_fn(v, p_ids, p_mask, n_ids, n_mask, r):
        both = model.apply(v, jnp.concatenate([p_ids, n_ids]), jnp.concatenate([p_mask, n_mask]),
                           method=LEModel.reward)
        b = p_ids.shape[0]
        return bt_loss(both[:b], both[b:])
    return loss_fn


def special_ids(dec) -> dict:
    """{'bos', 'pad'} of the decoder's tokenizer (its own ids; pad = eos when it has none)."""
    sp = frozen_decoder.special_ids(dec.tokenizer, str(dec.info.get("source", "")))
    return {"bos": sp.bos, "pad": sp.pad}


def training_subset(sessions, fraction: float, seed: int):
    """A seeded ``fraction`` of the session rows (at least one), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"config.lea.train_fraction must be in (0, 1], got {fraction}")
    n = sessions.num_sessions
    m = max(1, int(round(fraction * n)))
    rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    return sessions.select(rows)


def cache_root(section) -> str:
    return storage.cache_dir("lea", section.get("cache_dir") or "")


def environment_key(dec_section, texts, sessions, state_len: int, section) -> str:
    """A hash of the decoder's corpus and settings (checkpoint, frozen dtype), the training
    sessions, and every :data:`TRAIN_FIELDS` setting."""
    h = hashlib.sha256()
    h.update(decoder_lm.cache_key(texts, dec_section).encode())
    h.update(str(dec_section.get("checkpoint", "")).encode())
    h.update(str(dec_section.get("frozen_dtype", "float32")).encode())
    lea_data.hash_arrays(h, sessions.items, sessions.offsets)
    fields = {f: (list(section[f]) if isinstance(section[f], (tuple, list)) else section[f])
              for f in TRAIN_FIELDS}
    h.update(json.dumps({**fields, "state_len": state_len, "format": FORMAT}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _trained(params: dict, stage: str) -> dict:
    """The leaves a stage trains (what the environment cache keeps)."""
    return freeze.split_trainable(params, freeze.param_labels(params, TRAINABLE[stage]))[0]


def _save(path: str, trained: dict, info: dict) -> None:
    with storage.atomic_directory(path) as tmp:
        for stage, tree in trained.items():
            storage.save_tree(os.path.join(tmp, f"{stage}.npz"), tree)
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=1)


def _assemble(base: dict, trained: dict) -> dict:
    """{'state', 'reward'} full trees: ``base`` with the item tokens and each stage's leaves."""
    def put(tree, leaves):
        flat = flax.traverse_util.flatten_dict(tree)
        flat.update({k: jnp.asarray(v) for k, v in flax.traverse_util.flatten_dict(leaves).items()})
        return flax.traverse_util.unflatten_dict(flat)
    with_items = put(base, trained["items"])
    return {stage: put(with_items, trained[stage]) for stage in ("state", "reward")}


def _environment_inputs(dataset, config) -> tuple[list, Any, str]:
    """(item texts, the seeded training subset, the environment's cache directory)."""
    section = config.lea
    texts = decoder_lm.item_texts(dataset.items, dataset.num_items, tuple(section.text_fields))
    subset = training_subset(dataset.splits["train"], float(section.train_fraction), int(section.seed))
    key = environment_key(config.decoder, texts, subset, int(config.data.state_len), section)
    return texts, subset, os.path.join(cache_root(section), f"env-{key}")


def get_environment(dataset, config, progress: bool = True) -> Environment:
    """The LE of ``dataset`` under ``config.lea`` / ``config.decoder``: loaded from the cache,
    or trained (stages a, b, c) and saved there first (the trained leaves only: the item
    tokens, each model's LoRA and heads; the decoder is re-read from its checkpoint).

    Args:
      dataset: a prepared :class:`jaxrec.data.prepare.Dataset` (items with titles/genres,
        the training split).
      config: with ``lea`` (:func:`default_section`), ``decoder``
        (:func:`jaxrec.backbones.decoder_lm.default_section` + ``frozen_dtype``) and
        ``data.state_len``.
    """
    section = config.lea
    n, state_len, seed = dataset.num_items, int(config.data.state_len), int(config.lea.seed)
    texts, subset, path = _environment_inputs(dataset, config)
    dec = frozen_decoder.load(config.decoder, texts)
    model = build_model(dec, n, section)
    params = init_params(model, dec, seed)
    if os.path.exists(os.path.join(path, "info.json")):
        trained = {stage: storage.load_tree(os.path.join(path, f"{stage}.npz")) for stage in STAGES}
        with open(os.path.join(path, "info.json")) as f:
            info = json.load(f)
        return Environment(model, _assemble(params, trained), dec, dict(info, source=path))
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    label = (lambda s: f"LEA {s}") if progress else (lambda s: "")
    say(f"LEA environment -> {path}: {n} item tokens, {subset.num_sessions} training sessions "
        f"({float(section.train_fraction):.0%})")
    v, sp = model.config.vocab_size, special_ids(dec)

    # (a) item tokens on their sentences.
    ids, mask, loss_mask = item_sentences(dec, texts, str(section.template), int(section.item_max_len))
    params, l_items = train_item_tokens(model, params, ids, mask, loss_mask, section, label("item tokens"))

    # (b) state model on the subset's transitions (the next item is the action).
    tr = examples.replay_transitions(subset, state_len, pad_id=n)
    s_ids, s_mask, _ = prefix_tokens(tr["state"], n, v, **sp)
    p_state, l_state = train_state_model(model, params, s_ids, s_mask, tr["action"], section,
                                         label("state model"))

    # (c) reward model: a⁺ = the logged next item, a⁻ unseen in the session.
    k = int(section.rm_negatives)
    rows = subset.event_session()
    seen = [np.unique(subset.sequence(s)) for s in range(subset.num_sessions)]
    neg = sample_unseen(np.random.default_rng(seed + 3), seen, rows, n, k)
    rep = lambda a: np.repeat(a, k, axis=0)
    pos_ids, pos_mask = reward_inputs(rep(tr["state"]), rep(tr["action"]), n, v, **sp)
    neg_ids, neg_mask = reward_inputs(rep(tr["state"]), neg.reshape(-1), n, v, **sp)
    p_reward, l_reward = train_reward_model(model, params, pos_ids, pos_mask, neg_ids, neg_mask,
                                            section, label("reward model"))

    tenth = lambda l: (float(l[:max(len(l) // 10, 1)].mean()), float(l[-max(len(l) // 10, 1):].mean()))
    info = {"items": n, "sessions": subset.num_sessions, "transitions": int(len(tr["action"])),
            "loss_items": tenth(l_items), "loss_state": tenth(l_state), "loss_reward": tenth(l_reward),
            "decoder": dec.info.get("source", "")}
    _save(path, {"items": _trained(params, "items"), "state": _trained(p_state, "state"),
                 "reward": _trained(p_reward, "reward")}, info)
    return Environment(model, {"state": p_state, "reward": p_reward}, dec, dict(info, source=path))


# ------------------------------------------------------------------ precomputation (the stage)
@functools.partial(jax.jit, static_argnums=0)
def _states(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask, method=LEModel.state)


@functools.partial(jax.jit, static_argnums=0)
def _scores(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask, method=LEModel.reward)


@functools.partial(jax.jit, static_argnums=3)
def _top_k(s, actions, exclude, k: int):
    """s [b, Ds], actions [N, Ds], exclude [b, N] bool -> top-k item ids [b, k]."""
    sim = jnp.where(exclude, -jnp.inf, s @ actions.T)
    return jax.lax.top_k(sim, k)[1].astype(jnp.int32)


def _batched(fn, arrays: tuple, batch: int, desc: str = ""):
    """``fn(*rows)`` over ``[M, ...]`` arrays in fixed-size batches (the last padded with
    row 0, so one compile), concatenated to ``[M, ...]``."""
    m = len(arrays[0])
    out = []
    it = range(0, m, batch)
    if desc and m > 4 * batch:
        from tqdm import tqdm
        it = tqdm(it, desc=desc, unit="batch", mininterval=5.0)
    for a in it:
        rows = [x[a:a + batch] for x in arrays]
        fill = batch - len(rows[0])
        if fill:
            rows = [np.concatenate([r, np.repeat(r[:1], fill, axis=0)]) for r in rows]
        out.append(np.asarray(fn(*rows))[:batch - fill])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def state_vectors(env: Environment, state: np.ndarray, batch: int, desc: str = "") -> np.ndarray:
    """s^e [M, Ds] float32 of replay states [M, L] (unique windows computed once)."""
    uniq, inv = np.unique(np.asarray(state), axis=0, return_inverse=True)
    ids, mask, _ = prefix_tokens(uniq, env.model.num_items, env.model.config.vocab_size, **special_ids(env.decoder))
    out = _batched(lambda i, m: _states(env.model, env.params["state"], i, m), (ids, mask), batch, desc)
    return out[np.asarray(inv).reshape(-1)].astype(np.float32)


def reward_scores(env: Environment, state: np.ndarray, candidates: np.ndarray, batch: int,
                  desc: str = "") -> np.ndarray:
    """Raw reward-model scores [M] of (state [M, L], candidate [M])."""
    ids, mask = reward_inputs(state, candidates, env.model.num_items, env.model.config.vocab_size,
                              **special_ids(env.decoder))
    return _batched(lambda i, m: _scores(env.model, env.params["reward"], i, m), (ids, mask), batch,
                    desc).astype(np.float32)


def transform(scores: np.ndarray, how: str) -> np.ndarray:
    """Reward-model scores -> rewards: 'sigmoid' σ(x) (the (0, 1) range of 0.2 / 1.0) or 'raw'."""
    if how == "sigmoid":
        return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
    return scores.astype(np.float32)


def augment(env: Environment, train: dict, config, progress: bool = True) -> dict:
    """The training arrays of :mod:`jaxrec.data.lea` (``TRAIN_KEYS``) for replay arrays ``train``."""
    s = config.lea
    how = config_util.choice(s, "lea.reward_transform", TRANSFORMS)
    weighting = config_util.choice(s, "lea.aug_weighting", WEIGHTINGS)
    mix, k, bs = float(s.reward_mix), int(s.aug_k), int(s.eval_batch)
    n = env.model.num_items
    if not 1 <= k < n:
        raise ValueError(f"config.lea.aug_k must be in [1, {n - 1}], got {k}")
    r_click, r_buy = tasks.rewards_of(config)
    d = (lambda x: f"LEA {x}") if progress else (lambda x: "")
    t = len(train["action"])
    both = state_vectors(env, np.concatenate([train["state"], train["next_state"]]), bs, d("states"))
    le_state, le_next = both[:t], both[t:]
    fixed = np.where(train["is_buy"] > 0, r_buy, r_click).astype(np.float32)
    model_r = transform(reward_scores(env, train["state"], train["action"], bs, d("rewards")), how)
    actions = np.asarray(env.model.apply({"params": env.params["state"]}, method=LEModel.actions))
    exclude_hist = bool(s.aug_exclude_history)

    def top(sv, st, act):
        ex = jax.nn.one_hot(act, n, dtype=bool)
        if exclude_hist:       # pad id n falls outside the one-hot (all zeros)
            ex = ex | jax.nn.one_hot(st, n, dtype=bool).any(1)
        return _top_k(sv, actions, ex, k)

    aug = _batched(top, (le_state, train["state"], train["action"]), bs, d("augmented actions"))
    aug_scores = reward_scores(env, np.repeat(train["state"], k, axis=0), aug.reshape(-1), bs,
                               d("augmented rewards")).reshape(t, k)
    aug_r = transform(aug_scores, how)
    weights = transform(aug_scores, "sigmoid") if weighting == "reward" else np.ones_like(aug_r)
    return {"le_state": le_state, "le_next_state": le_next,
            "le_reward": ((1 - mix) * fixed + mix * model_r).astype(np.float32),
            "aug_actions": aug.astype(np.int32),
            "aug_reward": ((1 - mix) * r_click + mix * aug_r).astype(np.float32),
            "aug_weights": weights.astype(np.float32)}


def diagnostics(env: Environment, evalset: tasks.EvalSet, le_state: np.ndarray, batch: int,
                seed: int, k: int = 10) -> dict:
    """How good the environment is on held-out queries (for reading a table, not training):

    * ``state_hr@k``: share of queries whose target is among the state model's top k of
      s^e · A^T (its own next-item ranking, no exclusions);
    * ``reward_acc``: share of queries where r(s, target) > r(s, a⁻), a⁻ drawn uniformly
      among the items that are neither the target nor in the state window (seeded).
    """
    n = env.model.num_items
    target, state = evalset.arrays["target"], evalset.arrays["state"]
    actions = np.asarray(env.model.apply({"params": env.params["state"]}, method=LEModel.actions))
    none = np.zeros((batch, n), bool)
    top = _batched(lambda sv: _top_k(sv, actions, none[:len(sv)], k), (le_state,), batch)
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, n, len(target))
    for _ in range(100):
        bad = (neg == target) | (neg[:, None] == state).any(1)
        if not bad.any():
            break
        neg[bad] = rng.integers(0, n, int(bad.sum()))
    r_pos = reward_scores(env, state, target, batch)
    r_neg = reward_scores(env, state, neg, batch)
    return {f"state_hr@{k}": float((top == target[:, None]).any(1).mean()),
            "reward_acc": float((r_pos > r_neg).mean())}


def artefact_key(env_path: str, fingerprint: str, config) -> str:
    """A hash of the environment, the replay data and every :data:`AUG_FIELDS` setting."""
    h = hashlib.sha256()
    h.update(os.path.basename(env_path).encode())
    h.update(fingerprint.encode())
    h.update(json.dumps({f: config.lea[f] for f in AUG_FIELDS}, sort_keys=True).encode())
    h.update(json.dumps(tasks.rewards_of(config)).encode())
    h.update(str(FORMAT).encode())
    return h.hexdigest()[:16]


def build_artefact(dataset, config, progress: bool = True) -> str:
    """The LEA stage: the artefact directory of ``config`` (:mod:`jaxrec.data.lea`'s format),
    reused when complete, else built — environment (:func:`get_environment`), augmentation of
    the replay task's transitions, evaluation states, diagnostics — and written atomically.

    Returns:
      the directory, ``<lea.cache_dir>/aug-<key>``.
    """
    parts = tasks.replay_task(dataset, config)
    fp = lea_data.fingerprint(parts)
    env_path = _environment_inputs(dataset, config)[2]
    path = os.path.join(cache_root(config.lea), f"aug-{artefact_key(env_path, fp, config)}")
    if os.path.exists(os.path.join(path, lea_data.INFO_FILE)):
        return path          # reused without loading the decoder
    env = get_environment(dataset, config, progress)
    bs = int(config.lea.eval_batch)
    arrays = augment(env, parts.train, config, progress)
    arrays["val_le_state"] = state_vectors(env, parts.validation.arrays["state"], bs)
    arrays["test_le_state"] = state_vectors(env, parts.test.arrays["state"], bs)
    diag = diagnostics(env, parts.validation, arrays["val_le_state"], bs, int(config.lea.seed))
    info = {**{k: v for k, v in env.info.items() if k != "source"}, **diag, "fingerprint": fp,
            "environment": str(env.info["source"])}
    with storage.atomic_directory(path) as tmp:
        np.savez(os.path.join(tmp, lea_data.ARRAYS_FILE), **arrays)
        with open(os.path.join(tmp, lea_data.INFO_FILE), "w") as f:
            json.dump(info, f, indent=1)
    if progress:
        print(f"LEA artefact -> {path}", file=sys.stderr, flush=True)
    return path


# ------------------------------------------------------------------------------------ CLI
def _stage_main(argv) -> None:
    """``python -m jaxrec.methods.lea --config=configs/lea.py:<args> [--config.x=y]``: runs the
    LEA stage and prints the artefact directory (pass it to the training run as
    ``--config.lea.artefact=DIR``, or let the run find it in the cache)."""
    del argv
    from absl import flags, logging
    logging.set_verbosity(logging.ERROR)
    config = flags.FLAGS.config
    print(build_artefact(tasks.load_dataset(config), config))


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from jaxrec import cli
    config_flags.DEFINE_config_file("config", None, "configs/lea.py:<args>", lock_config=True)
    flags.mark_flags_as_required(["config"])
    cli.run(_stage_main)
