"""SMORL — scalarised multi-objective RL for accurate, diverse and novel recommendations.

Paper: D. Stamenkovic, A. Karatzoglou, I. Arapakis, X. Xin, K. Katevas, "Choosing the Best
of Both Worlds: Diverse and Novel Recommendations through Multi-Objective Reinforcement
Learning", WSDM 2022. No official code is known: the mechanics follow the third-party
reproduction (``mahavrila/my_smorl``, ``src/grusmorl.py``), rl.md §7 [2nd].

An SQN (:mod:`jaxrec.methods.sqn`) with one supervised head ``'s'`` and three Q heads
``'q_acc'``, ``'q_div'``, ``'q_nov'`` on a shared encoder; two complete networks swapped at
random every step (:mod:`jaxrec.methods.double_q`). For a transition (s, a, s′), with
(main, target) drawn by a coin and â = argmax of main's supervised head at s (its own top-1
in training mode, not the logged item):

    r_acc = r_buy / r_click (1.0 / 0.2)
    r_div = 1 − cos(e(last item of s), e(â))      e: FROZEN item embeddings [N + 1, D]
    r_nov = 1 if â is less popular (count ≤ 90th percentile of item counts) else 0
    a*    = argmax_a Σ_i w_i · Q_main,i(s′, a)                     (scalarised bootstrap)
    y_i   = r_i + γ · [not done] · Q_tgt,i(s′, a*)                  (stop-gradient)
    L     = CE(φ_s(s), a) + α · mean_B Σ_i w_i · ½ (y_i − Q_main,i(s, a))²

with i over (acc, div, nov), w = ``config.rl.smorl_weights`` (default (1, 1, 1)), α =
``config.rl.smorl_alpha`` (1), γ = ``config.rl.gamma`` (0.5). Recommendations come from the
supervised head of network 1.

The last item of s: states are right-padded with the pad N, so it is the item at position
``len_state − 1``. An empty history (t = 0, stored with ``len_state`` 1 and the pad there)
reads the pad N; with ``config.rl.smorl_div_empty='pad'`` (default, the reproduction's
``div_rl_embedding(states[i][len_states[i] − 1])``) its reward uses row N of e, the
pretrained pad embedding (the row a right-padded GRU4Rec consumes for an empty history);
``'zero'`` gives r_div = 0 there instead (nothing to diverge from).

The frozen embeddings e come from :func:`make_consts`: the item table of a finished
supervised run (GRU4Rec in the paper) loaded from the latest checkpoint of its workdir
(``config.rl.smorl_pretrained``). They are a const — never trained, never checkpointed,
rebuilt identically on resume — and are handed to the coverage evaluator (key
``'item_embeddings'``) for its diversity reward. ``config.rl.smorl_embeddings='random'``
replaces them with seeded N(0, 1) vectors: an ablation, and what smoke runs and tests use
offline without a pretrained run.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrec import config_util
from jaxrec import metrics as M
from jaxrec.data.tasks import rewards_of
from jaxrec.methods import common
from jaxrec.methods import double_q as dq

State = dq.State
Q_HEADS = ("q_acc", "q_div", "q_nov")
HEADS = ("s",) + Q_HEADS
EMBEDDINGS = ("pretrained", "random")
DIV_EMPTY = ("pad", "zero")


@struct.dataclass
class Hyper:
    gamma: float = 0.5
    r_click: float = 0.2
    r_buy: float = 1.0
    weights: tuple = (1.0, 1.0, 1.0)     # w_acc, w_div, w_nov
    alpha: float = 1.0
    div_empty: str = "pad"
    rank_head: str = "s"


def parse_weights(value) -> tuple:
    """``'1,0,1'`` (or a sequence of three numbers) -> (w_acc, w_div, w_nov) floats.

    Raises:
      ValueError: not three non-negative numbers.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        w = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        w = ()
    if len(w) != 3 or min(w) < 0:
        raise ValueError(f"config.rl.smorl_weights must be three non-negative numbers "
                         f"(w_acc, w_div, w_nov), e.g. '1,1,1'; got {value!r}")
    return w


def hyper(config) -> Hyper:
    """SMORL's settings from ``config.rl``; rewards from ``config.data``."""
    rl = config.rl
    r_click, r_buy = rewards_of(config)
    div_empty = config_util.choice(rl, "rl.smorl_div_empty", DIV_EMPTY, "pad")
    rank_head = str(rl.get("rank_head", "s"))
    if rank_head not in HEADS:
        raise ValueError(f"config.rl.rank_head must be one of {HEADS} for SMORL, got "
                         f"{rank_head!r}")
    return Hyper(gamma=float(rl.gamma), r_click=r_click, r_buy=r_buy,
                 weights=parse_weights(rl.get("smorl_weights", (1.0, 1.0, 1.0))),
                 alpha=float(rl.get("smorl_alpha", 1.0)), div_empty=div_empty,
                 rank_head=rank_head)


# ------------------------------------------------------------------ frozen embeddings
def load_item_embeddings(workdir: str, num_items: int, dataset: str | None = None
                         ) -> np.ndarray:
    """The item table of a finished run in ``workdir``, from its latest checkpoint.

    Reads ``params.params.encoder.item_embed.embedding`` (every encoder owns one) of the
    saved state without rebuilding the run's model. A stacked ``[2, N + 1, D]`` table (an
    SQN-family run) gives network 1's. Left-padded runs (leave-one-out, pad row 0) are
    reordered so that row i is item i and row N the pad.

    Args:
      workdir: the run directory (holds ``checkpoints/`` and ``config.json``).
      num_items: N of the task that will use the table.
      dataset: the dataset name of the run that will use it: a pretrained run on another
        dataset (or not a GRU4Rec, the paper's choice) is logged as a warning.
    Returns:
      ``[N + 1, D]`` float32; row N is the pad.
    Raises:
      ValueError: no finished checkpoint, no item table, or a table of another catalogue.
    """
    from jaxrec.runs import latest_saved_state

    where = f"config.rl.smorl_pretrained={workdir!r}"
    try:
        step, saved = latest_saved_state(workdir, where)
    except ValueError as e:
        raise ValueError(f"{e}; give the workdir of a finished supervised GRU4Rec run "
                         "(configs/supervised.py)") from None
    try:
        table = np.asarray(saved["params"]["params"]["encoder"]["item_embed"]["embedding"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: the checkpoint at step {step} has no "
                         f"params.params.encoder.item_embed.embedding (missing {e})") from e
    if table.ndim == 3:                       # a stacked [2, ...] pair: network 1
        table = table[0]
    saved_cfg = {}
    cfg_path = os.path.join(workdir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved_cfg = json.load(f)
    padding = saved_cfg.get("data", {}).get("padding", "right")
    encoder = saved_cfg.get("model", {}).get("encoder", "gru4rec")
    other = saved_cfg.get("dataset", {}).get("name", dataset)
    if encoder != "gru4rec" or (dataset is not None and other != dataset):
        logging.warning("%s: item embeddings of a %s run on %r (the paper uses a GRU4Rec "
                        "pretrained on the same dataset, here %r)", where, encoder, other,
                        dataset)
    if padding == "left":                     # ids were item + 1 with the pad 0
        table = np.concatenate([table[1:], table[:1]])
    if table.ndim != 2 or table.shape[0] != num_items + 1:
        raise ValueError(f"{where}: its item table has shape {table.shape}, but this task "
                         f"has N={num_items} items (+1 pad row expected); was it trained "
                         f"on the same dataset?")
    return table.astype(np.float32)


def make_consts(config, task) -> dict:
    """Frozen arrays: ``'item_embeddings'`` [N + 1, D] float32 (e of r_div, row N the pad)
    and ``'less_popular'`` [N] bool (r_nov's items).

    ``config.rl.smorl_embeddings``: ``'pretrained'`` (default) loads the table from
    ``config.rl.smorl_pretrained`` (:func:`load_item_embeddings`); ``'random'`` draws
    seeded N(0, 1) rows of width ``config.model.embed_dim`` (seed ``config.seed``) — an
    ablation without a pretrained model, and the offline smoke/test setting.

    Raises:
      ValueError: 'pretrained' without ``config.rl.smorl_pretrained``, or an unknown source.
    """
    rl, n = config.rl, task.num_items
    source = str(rl.get("smorl_embeddings", "pretrained"))
    if source == "random":
        rng = np.random.default_rng(int(config.seed))
        table = rng.standard_normal((n + 1, int(config.model.embed_dim))).astype(np.float32)
    elif source == "pretrained":
        path = str(rl.get("smorl_pretrained", "") or "")
        if not path:
            raise ValueError(
                "SMORL's diversity reward needs frozen item embeddings: set "
                "config.rl.smorl_pretrained to the workdir of a finished supervised GRU4Rec "
                "run (python -m jaxrec.main --config=configs/supervised.py:encoder=gru4rec "
                "--workdir=DIR; then configs/smorl.py:pretrained=DIR), or "
                "config.rl.smorl_embeddings='random' for the random-embedding ablation")
        table = load_item_embeddings(path, n, str(config.dataset.name))
    else:
        raise ValueError(f"config.rl.smorl_embeddings must be one of {EMBEDDINGS}, got "
                         f"{source!r}")
    less_popular = M.less_popular_items(task.item_freq,
                                        float(rl.get("smorl_novel_percentile", 90.0)))
    return {"item_embeddings": jnp.asarray(table), "less_popular": jnp.asarray(less_popular)}


# ------------------------------------------------------------------ training
def init(rng, task, config) -> State:
    return dq.init_state(rng, task, config, heads=HEADS, hp=hyper(config))


def smorl_rewards(s_logits, batch, consts, hp: Hyper):
    """The three rewards of a batch of transitions, ``[B]`` each (rl.md §7).

    Args:
      s_logits: [B, N] main's supervised head at s (â is its argmax).
      batch: ``state`` [B, L] (right-padded with N), ``len_state`` [B], ``is_buy`` [B].
      consts: :func:`make_consts`'s dict.
      hp: the hyperparameters (rewards, ``div_empty``).
    Returns:
      (r_acc, r_div, r_nov), float32, under stop-gradient.
    """
    n = s_logits.shape[-1]
    a_hat = jnp.argmax(s_logits, axis=-1)
    last = M.last_items(batch["state"], batch["len_state"], n)
    r_div = M.diversity_reward(consts["item_embeddings"], last, a_hat)
    if hp.div_empty == "zero":
        r_div = jnp.where(last == n, 0.0, r_div)
    r_nov = M.novelty_reward(consts["less_popular"], a_hat)
    r_acc = dq.rewards(batch["is_buy"], hp.r_click, hp.r_buy)
    return jax.tree.map(jax.lax.stop_gradient, (r_acc, r_div, r_nov))


def loss_fn(main, target, state: State, batch, rng, consts):
    """SMORL loss of the main network; returns (loss, metrics)."""
    net, hp = state.net, state.hp
    k_s, k_next, k_tgt = jax.random.split(rng, 3)
    out = net.apply(main, batch["state"], batch["len_state"], train=True,
                    rngs={"dropout": k_s})
    sel_next, tgt_next = dq.apply_pair_on(net, main, target, batch["next_state"],
                                          batch["len_next_state"],
                                          jnp.stack([k_next, k_tgt]), head=None)
    # The bootstrap action maximises the weighted sum of main's Q heads at s′.
    q_sel = sum(w * sel_next[h] for w, h in zip(hp.weights, Q_HEADS))
    rewards = smorl_rewards(out["s"], batch, consts, hp)
    smorl, metrics = 0.0, {}
    for w, h, r in zip(hp.weights, Q_HEADS, rewards):
        y = dq.double_q_target(tgt_next[h], q_sel, r, batch["is_done"], hp.gamma)
        td = 0.5 * jnp.square(y - common.take_action(out[h], batch["action"]))
        smorl = smorl + w * td
        metrics[f"td_{h[2:]}"] = td.mean()
    smorl = smorl.mean()
    ce, _ = common.cross_entropy(out["s"], batch["action"])
    loss = ce + hp.alpha * smorl
    return loss, {"loss": loss, "ce_loss": ce, "smorl_loss": smorl, **metrics,
                  "r_div": rewards[1].mean(), "r_nov": rewards[2].mean()}


def train_step(state: State, batch, rng, consts):
    """One SMORL step: a coin picks the main network; only it is updated."""
    return dq.double_q_step(state, batch, rng, functools.partial(loss_fn, consts=consts))


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` (default 's')."""
    del consts
    return dq.predict_head(state, batch, state.hp.rank_head)
