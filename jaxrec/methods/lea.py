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
(``lea.train_fraction``, 10 % by default: the paper's "small subset of user data"). Stages
print progress (:func:`jaxrec.backbones.decoder_lm.fit_minibatch`) and their results are
saved under ``lea.cache_dir`` keyed by everything that changes them (:func:`get_environment`),
so a rerun — every variant of a table — reuses them. The recommender never runs the LLM:
:mod:`jaxrec.data.lea` precomputes what it needs into the task, and
:mod:`jaxrec.methods.sqn` / :mod:`jaxrec.methods.sa2c` read it through their LEA switches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrec import storage
from jaxrec.backbones import decoder_lm
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.data import examples
from jaxrec.methods.gaze_reward import bt_loss, last_real_index
from jaxrec.peft import freeze

FORMAT = 1          # bump when the saved layout changes (old caches are then retrained)
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
    Augmentation (:mod:`jaxrec.data.lea`):
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
      cache_dir: where environments and augmentations are kept ('' = $JAXREC_DATA_DIR/lea).
    """
    s = ml_collections.ConfigDict(dict(
        state="none", rewards="fixed", aug=False, aug_k=2, aug_weight=0.2, aug_q="reward",
        aug_advantage=True, aug_weighting="reward", aug_exclude_history=True, reward_transform="sigmoid",
        reward_mix=1.0,
        template="{item} is {text}", text_fields=("title", "genres"), item_max_len=32,
        lora_rank=4, lora_alpha=8.0, train_fraction=0.1, state_dim=0, temperature=1.0,
        rm_negatives=4, item_steps=200, item_lr=1e-2, state_steps=300, state_lr=3e-3,
        reward_steps=300, reward_lr=3e-3, batch_size=64, seed=0, eval_batch=1024,
        cache_dir=""))
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


def prefix_tokens(state, num_items: int, vocab_size: int, extra: int = 0,
                  bos: int = decoder_lm.BOS, pad: int = decoder_lm.PAD):
    """Replay states -> the prefix's item-token sequence ``<s> x_1 .. x_t``.

    Args:
      state: [B, L] right-padded with ``num_items`` (rl.md §1.4).
      extra: free columns appended (for the reward model's candidate).
      bos, pad: the tokenizer's ids (``tokenizer.bos_id`` / ``pad_id``).
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


def reward_inputs(state, candidates, num_items: int, vocab_size: int, bos: int = decoder_lm.BOS,
                  pad: int = decoder_lm.PAD):
    """``<s> x_1 .. x_t a``: state [B, L], candidates [B] -> (ids, mask) [B, L + 2]."""
    ids, mask, count = prefix_tokens(state, num_items, vocab_size, 1, bos, pad)
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
      params: {'state': tree, 'reward': tree} (each with the stage-(a) item tokens).
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
    """Fresh LE parameters with the pretrained decoder copied in (LoRA b = 0: no change)."""
    ids = jnp.full((2, 4), decoder_lm.BOS, jnp.int32)
    params = model.init(jax.random.key(seed), ids, jnp.ones((2, 4), jnp.int32))["params"]
    params = dict(params)
    params["decoder"] = decoder_lm.merge_params(params["decoder"], dec.params)
    return params


def fit_stage(model: LEModel, params: dict, stage: str, loss_fn, arrays: tuple, steps: int,
              lr: float, batch_size: int, seed: int, label: str = ""):
    """Adam on the ``stage``'s trainable leaves (:data:`TRAINABLE`) only; the rest is frozen
    by construction (it is not an argument of the gradient).

    ``loss_fn(variables, *batch, rng) -> []``. Returns (params, losses [steps]).
    """
    labels = freeze.param_labels(params, TRAINABLE[stage])
    train, frozen = freeze.split_trainable(params, labels)

    def loss(t, *batch):
        *b, r = batch
        return loss_fn({"params": freeze.merge(t, frozen)}, *b, r)

    train, losses = decoder_lm.fit_minibatch(loss, train, arrays, steps, batch_size, lr, seed,
                                             label=label, log_every=max(steps // 5, 1) if label else 0)
    return freeze.merge(jax.tree.map(np.asarray, train), frozen), losses


def train_item_tokens(model, params, ids, mask, loss_mask, section, label: str = ""):
    """Stage (a): only ``item_tokens`` learn to generate their item's sentence."""
    def loss_fn(v, b_ids, b_mask, b_loss, r):
        return item_token_loss(model.apply(v, b_ids, b_mask, method=LEModel.lm_logits), b_ids, b_loss)
    return fit_stage(model, params, "items", loss_fn, (ids, mask, loss_mask), int(section.item_steps),
                     float(section.item_lr), int(section.batch_size), int(section.seed), label)


def train_state_model(model, params, ids, mask, targets, section, label: str = ""):
    """Stage (b): LoRA + state head + action projection by L_sm."""
    tau = float(section.temperature)

    def loss_fn(v, b_ids, b_mask, b_tgt, r):
        s = model.apply(v, b_ids, b_mask, method=LEModel.state)
        return state_model_loss(s, model.apply(v, method=LEModel.actions), b_tgt, tau)
    return fit_stage(model, params, "state", loss_fn, (ids, mask, targets), int(section.state_steps),
                     float(section.state_lr), int(section.batch_size), int(section.seed) + 1, label)


def train_reward_model(model, params, pos_ids, pos_mask, neg_ids, neg_mask, section, label: str = ""):
    """Stage (c): LoRA + score head by Bradley–Terry on (a⁺, a⁻) pairs (one pass over 2B)."""
    def loss_fn(v, p_ids, p_mask, n_ids, n_mask, r):
        both = model.apply(v, jnp.concatenate([p_ids, n_ids]), jnp.concatenate([p_mask, n_mask]),
                           method=LEModel.reward)
        b = p_ids.shape[0]
        return bt_loss(both[:b], both[b:])
    return fit_stage(model, params, "reward", loss_fn, (pos_ids, pos_mask, neg_ids, neg_mask),
                     int(section.reward_steps), float(section.reward_lr), int(section.batch_size),
                     int(section.seed) + 2, label)


def special_ids(dec) -> dict:
    """{'bos', 'pad'} of the decoder's tokenizer (a Hugging Face one has its own ids)."""
    tok = dec.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    return {"bos": int(tok.bos_id), "pad": int(pad)}


def training_subset(sessions, fraction: float, seed: int):
    """A seeded ``fraction`` of the session rows (at least one), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"config.lea.train_fraction must be in (0, 1], got {fraction}")
    n = sessions.num_sessions
    m = max(1, int(round(fraction * n)))
    rows = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    return sessions.select(rows)


def _hash_arrays(h, *arrays):
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())


def cache_root(section) -> str:
    return storage.cache_dir("lea", section.get("cache_dir") or "")


def environment_key(dec_section, texts, sessions, state_len: int, section) -> str:
    """A hash of the decoder's corpus and settings, the training sessions, and every
    :data:`TRAIN_FIELDS` setting."""
    h = hashlib.sha256()
    h.update(decoder_lm.cache_key(texts, dec_section).encode())
    h.update(str(dec_section.get("checkpoint", "")).encode())
    _hash_arrays(h, sessions.items, sessions.offsets)
    fields = {f: (list(section[f]) if isinstance(section[f], (tuple, list)) else section[f])
              for f in TRAIN_FIELDS}
    h.update(json.dumps({**fields, "state_len": state_len, "format": FORMAT}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _save(path: str, params: dict, info: dict) -> None:
    with storage.atomic_directory(path) as tmp:
        for stage, tree in params.items():
            storage.save_tree(os.path.join(tmp, f"{stage}.npz"), tree)
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump(info, f, indent=1)


def _load(path: str) -> tuple[dict, dict]:
    params = {stage: storage.load_tree(os.path.join(path, f"{stage}.npz")) for stage in ("state", "reward")}
    with open(os.path.join(path, "info.json")) as f:
        return params, json.load(f)


def get_environment(dataset, config, progress: bool = True) -> Environment:
    """The LE of ``dataset`` under ``config.lea`` / ``config.decoder``: loaded from the cache,
    or trained (stages a, b, c) and saved there first.

    Args:
      dataset: a prepared :class:`jaxrec.data.prepare.Dataset` (items with titles/genres,
        the training split).
      config: with ``lea`` (:func:`default_section`), ``decoder``
        (:func:`jaxrec.backbones.decoder_lm.default_section`) and ``data.state_len``.
    """
    section, dec_section = config.lea, config.decoder
    n, state_len = dataset.num_items, int(config.data.state_len)
    texts = decoder_lm.item_texts(dataset.items, n, tuple(section.text_fields))
    dec = decoder_lm.get_decoder(dec_section, texts)
    seed = int(section.seed)
    subset = training_subset(dataset.splits["train"], float(section.train_fraction), seed)
    key = environment_key(dec_section, texts, subset, state_len, section)
    path = os.path.join(cache_root(section), f"env-{key}")
    model = build_model(dec, n, section)
    if os.path.exists(os.path.join(path, "info.json")):
        params, info = _load(path)
        return Environment(model, params, dec, dict(info, source=path))
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    label = (lambda s: f"LEA {s}") if progress else (lambda s: "")
    say(f"LEA environment -> {path}: {n} item tokens, {subset.num_sessions} training sessions "
        f"({float(section.train_fraction):.0%})")
    params = init_params(model, dec, seed)
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
    params = {"state": p_state, "reward": p_reward}
    _save(path, params, info)
    return Environment(model, params, dec, dict(info, source=path))
