"""PCRec: two peer networks that rejuvenate each other's unimportant weights.

Paper: Yang Sun, Fajie Yuan, Min Yang, Alexandros Karatzoglou, Shen Li, Xiaoyan Zhao,
"Enhancing Top-N Item Recommendations by Peer Collaboration", SIGIR 2022 (arXiv
2111.00429; specs/intent_pcrec.md §2). Semantics follow the authors' code
(``anonymouskdd2021/PeerCollaboration``, ``SASRec_LW.py`` / ``_PW.py`` / ``_Noise.py`` and
the BPR / YoutubeDNN twins) where the paper is silent.

Peers. ``P`` copies of one base model (SASRec, YouTube-DNN or BPR) live stacked on a
leading ``[P, ...]`` axis and train in lockstep under ``jax.vmap``: the same step updates
every peer from its own batch, dropout key and learning rate. Peer ``i`` (1-based) gets
``lr·(1 + cos(π(P − i)/P))/2`` (0.5× and 1× for two peers, §2.4 ``--difflr``), times the
per-step cosine annealing over the whole run (``--cos``), and its own fixed shuffle of
the training examples (seeds 10 and 11; one permutation for the run, as the reference's
``np.random.permutation`` before training). A peer's identity is its shuffle seed: its
initialisation and dropout keys are folded from the seed, so a one-peer run with seed 11
and learning-rate scale 1 is exactly the served peer of a two-peer run without
cooperation — the "base model alone" row.

Cooperation, at every epoch end (§2.3/2.4), each peer from the *pre-cooperation* weights
of its partner (peer k's partner is k − 1 mod P, the reference's ``ckpt{i-1}``):

- ``lw`` (layer-wise): per tensor ``μ = b·sigmoid(a·Δ)``, ``W ← μ·W + (1 − μ)·W_peer``, with
  Δ the difference of 10-bin entropies (``criterion='entropy'``) or the normalised L1
  contrast (``'l1'``). μ is computed for every selected tensor — the reference reuses the
  previous tensor's μ for biases and the FFN LayerNorm (§2.3 quirk, not reproduced).
- ``pw`` (parameter-wise): in each tensor with ndim > 1, entries with
  ``|w| <= percentile(|W|, p)`` are replaced by the partner's.
- ``noise``: entries with ``|w| < percentile(|W|, p)`` get ``N(0, rate^(⌊epoch/T⌋+1))``
  noise (std), no partner needed.
- ``none``: independent peers.

The trainer has no epoch-end hook, so the cooperation runs at the *start* of the first
step of each new epoch (``step % steps_per_epoch == 0``, ``step > 0``) under ``lax.cond``.
That is the reference's order — train epoch e, evaluate, save, transplant, train e + 1 —
since the trainer evaluates after the epoch's last step, before this step runs.

Evaluation serves one peer (``pcrec.serve_peer``, default the last: the 1× learning rate,
seed 11), as each reference process reports its own network.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrec import config_util
from jaxrec.data import pcrec as _pcrec_data  # noqa: F401  (registers 'pcrec_*' kinds)
from jaxrec.encoders.bpr import BPRMF, sample_negatives
from jaxrec.methods import common

BASES = ("sasrec", "youtube_dnn", "bpr")
VARIANTS = ("lw", "pw", "noise", "none")
CRITERIA = ("entropy", "l1")
# The reference's --cooperation_type ablations as parameter-path patterns (§2.3).
COOPERATION_PATTERNS = {
    "alllayer": "",                                     # every tensor
    "onlyembed": r"embed",
    "onlymiddle": r"block_|fc_|ffn",
    "onlyfinal": r"head_s",
}


# ------------------------------------------------------------------ criteria (pure)
def entropy(x: jax.Array, bins: int = 10, include_max: bool = False) -> jax.Array:
    """Histogram entropy of a tensor's values (§2.2): ``-Σ_{p_k>0} p_k ln p_k``.

    ``bins`` equal-width bins over [min, max); ``p_k = count_k / numel``. With
    ``include_max=False`` (the reference's ``entropy()``) bin k holds
    ``min + k·s <= x < min + (k+1)·s`` with ``s = (max − min)/bins``, so the maximum falls
    outside every bin but still counts in numel; ``include_max=True`` closes the last bin
    (NumPy's ``histogram``). A constant tensor has entropy 0 either way.

    Whether ``min + bins·s`` rounds above or below the maximum depends on how the
    arithmetic is compiled (XLA may fuse it into a multiply-add under jit), so the two
    ends are decided explicitly: values ``>= max`` are dropped (or, with ``include_max``,
    put in the last bin) and every other value lands in a bin.

    Args:
      x: any shape; flattened.
    Returns:
      scalar float32.
    """
    x = jnp.ravel(x).astype(jnp.float32)
    lo, hi = x.min(), x.max()
    scale = (hi - lo) / bins
    edges = lo + jnp.arange(bins + 1, dtype=jnp.float32) * scale
    # searchsorted(side='right') - 1 = the k with edges[k] <= x < edges[k+1]: the same
    # comparisons as the reference, without a [bins, numel] mask.
    idx = jnp.minimum(jnp.searchsorted(edges, x, side="right") - 1, bins - 1)
    idx = jnp.where(x >= hi, bins - 1 if include_max else bins, idx)
    counts = jnp.bincount(jnp.clip(idx, 0, bins), length=bins + 1)[:bins]
    p = counts / x.size
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def l1_contrast(w_self: jax.Array, w_peer: jax.Array) -> jax.Array:
    """``(‖W¹‖₁ − ‖W²‖₁) / (‖W¹‖₁ + ‖W²‖₁)`` (0 when both are zero); scalar."""
    a, b = jnp.abs(w_self).sum(), jnp.abs(w_peer).sum()
    return jnp.where(a + b > 0, (a - b) / jnp.where(a + b > 0, a + b, 1.0), 0.0)


def importance_gap(w_self, w_peer, criterion: str = "entropy", bins: int = 10,
                   include_max: bool = False) -> jax.Array:
    """Δ of one tensor from its own side: entropy difference or L1 contrast; scalar."""
    if criterion == "entropy":
        return entropy(w_self, bins, include_max) - entropy(w_peer, bins, include_max)
    if criterion == "l1":
        return l1_contrast(w_self, w_peer)
    raise ValueError(f"config.pcrec.criterion must be one of {CRITERIA}, got {criterion!r}")


def tree_entropies(params: Any, bins: int = 10, include_max: bool = False) -> dict:
    """``{'/'-joined path: entropy}`` of every leaf (for plots and logs)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_str(p): entropy(x, bins, include_max) for p, x in flat}


def path_str(path) -> str:
    """A key path as 'params/encoder/item_embed/embedding'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _selector(pattern: str) -> Callable[[str], bool]:
    rx = re.compile(pattern) if pattern else None
    return lambda path: True if rx is None else bool(rx.search(path))


# ------------------------------------------------------------------ transplant operators
def layerwise(p_self: Any, p_peer: Any, criterion: str = "entropy", a: float = 1.0,
              b: float = 1.0, select: str = "", bins: int = 10,
              include_max: bool = False) -> tuple[Any, Any]:
    """Layer-wise cooperation (§2.3) of one network with its peer.

    For every leaf whose path matches ``select`` (regex; '' = all):
    ``μ = b / (1 + exp(−a·Δ))``, new ``= μ·W_self + (1 − μ)·W_peer``; other leaves unchanged.

    Args:
      p_self, p_peer: pytrees of one structure (one network each, unstacked).
    Returns:
      (new params, pytree of μ per leaf: scalars, NaN where not selected).
    """
    sel = _selector(select)

    def one(path, w, v):
        if not sel(path_str(path)):
            return w, jnp.float32(jnp.nan)
        mu = b * jax.nn.sigmoid(a * importance_gap(w, v, criterion, bins, include_max))
        return (mu * w + (1.0 - mu) * v).astype(w.dtype), mu

    out = jax.tree_util.tree_map_with_path(one, p_self, p_peer)
    new = jax.tree.map(lambda o: o[0], out, is_leaf=lambda o: isinstance(o, tuple))
    mus = jax.tree.map(lambda o: o[1], out, is_leaf=lambda o: isinstance(o, tuple))
    return new, mus


def low_magnitude_mask(w: jax.Array, percent: float, strict: bool) -> jax.Array:
    """Entries at or below (``strict``: below) the ``percent``-th percentile of ``|w|``
    (NumPy's linear interpolation, as ``np.percentile``); same shape as ``w``."""
    tau = jnp.percentile(jnp.abs(w).astype(jnp.float32), percent)
    return jnp.abs(w) < tau if strict else jnp.abs(w) <= tau


def parameterwise(p_self: Any, p_peer: Any, percent: float = 50.0,
                  select: str = "") -> Any:
    """Parameter-wise cooperation (§2.4): in each selected leaf with ndim > 1, entries
    with ``|w| <= percentile(|W|, percent)`` take the peer's value at the same position."""
    sel = _selector(select)

    def one(path, w, v):
        if w.ndim <= 1 or not sel(path_str(path)):
            return w
        return jnp.where(low_magnitude_mask(w, percent, strict=False), v, w)

    return jax.tree_util.tree_map_with_path(one, p_self, p_peer)


def add_noise(params: Any, rng: jax.Array, epoch, rate: float = 0.05, period: int = 30,
              percent: float = 50.0, select: str = "") -> Any:
    """The noise baseline (§2.4): entries of ndim > 1 leaves with ``|w|`` below the
    ``percent``-th percentile get ``N(0, std²)``, ``std = rate ** (epoch // period + 1)``."""
    sel = _selector(select)
    std = jnp.power(jnp.float32(rate), (epoch // period + 1).astype(jnp.float32))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(rng, len(flat))
    out = []
    for (path, w), k in zip(flat, keys):
        if w.ndim <= 1 or not sel(path_str(path)):
            out.append(w)
            continue
        noise = std * jax.random.normal(k, w.shape, jnp.float32)
        out.append(w + (noise * low_magnitude_mask(w, percent, strict=True)).astype(w.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


# ------------------------------------------------------------------ schedule (pure)
def peer_lr_scales(num_peers: int) -> np.ndarray:
    """``[P]`` the reference's ``--difflr`` factors ``(1 + cos(π(P − i)/P))/2``, i = 1..P."""
    i = np.arange(1, num_peers + 1)
    return (1.0 + np.cos(np.pi * (num_peers - i) / num_peers)) / 2.0


def peer_learning_rates(step, base_lr: float, scales, total_steps: int,
                        cosine: bool = True) -> jax.Array:
    """``[P]`` learning rates at ``step``: ``base_lr · scales · c(step)``, with
    ``c = (1 + cos(π·min(step, T)/T))/2`` (PyTorch ``CosineAnnealingLR`` stepped once per
    batch over the run, eta_min 0) when ``cosine``, else 1."""
    scales = jnp.asarray(scales, jnp.float32)
    if not cosine:
        return base_lr * scales
    t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
    return base_lr * scales * (1.0 + jnp.cos(jnp.pi * t / max(total_steps, 1))) / 2.0


# ------------------------------------------------------------------ the method
@dataclasses.dataclass(frozen=True)
class Hyper:
    """Static settings of a run (hashable; see ``configs/pcrec.py`` for each field)."""

    base: str
    variant: str
    num_peers: int
    seeds: tuple
    lr_scales: tuple
    lr: float
    cosine: bool
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    shuffle: str
    criterion: str
    a: float
    b: float
    select: str
    bins: int
    include_max: bool
    percent: float
    noise_rate: float
    noise_period: int
    serve_peer: int
    l2: float
    num_items: int
    neg_tries: int


@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any            # [P, ...] per leaf
    opt_state: Any         # [P, ...] Adam moments
    net: Any = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Hyper = struct.field(pytree_node=False)


def hyper(config, task) -> Hyper:
    """Reads and checks ``config.pcrec`` (errors name the field)."""
    from jaxrec.runs import schedule     # pure step arithmetic; no trainer state
    pc = config.pcrec
    base = str(config.model.encoder)
    if base not in BASES:
        raise ValueError(f"config.model.encoder={base!r}: PCRec's bases are {BASES}")
    variant = config_util.choice(pc, "pcrec.variant", VARIANTS)
    p = int(pc.num_peers)
    if p < 1 or (variant in ("lw", "pw") and p < 2):
        raise ValueError(f"config.pcrec.num_peers={p}: variant {variant!r} needs "
                         f"{'at least 2 peers' if variant in ('lw', 'pw') else '>= 1'}")
    seeds = tuple(int(s) for s in (pc.shuffle_seeds or ())) or tuple(range(12 - p, 12))
    scales = tuple(float(s) for s in (pc.lr_scales or ()))
    if not scales:
        scales = tuple(float(x) for x in peer_lr_scales(p)) if pc.difflr else (1.0,) * p
    for name, v in (("shuffle_seeds", seeds), ("lr_scales", scales)):
        if len(v) != p:
            raise ValueError(f"config.pcrec.{name} has {len(v)} entries for {p} peers")
    if len(set(seeds)) != p:
        raise ValueError(f"config.pcrec.shuffle_seeds={seeds}: peers need distinct seeds")
    if str(pc.criterion) not in CRITERIA:
        raise ValueError(f"config.pcrec.criterion must be one of {CRITERIA}, got "
                         f"{pc.criterion!r}")
    coop = str(pc.cooperation)
    if coop not in COOPERATION_PATTERNS:
        raise ValueError(f"config.pcrec.cooperation must be one of "
                         f"{tuple(COOPERATION_PATTERNS)}, got {coop!r}")
    select = str(pc.get("select", "") or "") or COOPERATION_PATTERNS[coop]
    shuffle = str(pc.shuffle)
    if shuffle not in ("per_peer", "shared"):
        raise ValueError(f"config.pcrec.shuffle must be 'per_peer' or 'shared', got "
                         f"{shuffle!r}")
    serve = int(pc.serve_peer)
    if not -p <= serve < p:
        raise ValueError(f"config.pcrec.serve_peer={serve} is not a peer index (P={p})")
    if not 0.0 <= float(pc.percent) <= 100.0:
        raise ValueError(f"config.pcrec.percent must be in [0, 100], got {pc.percent}")
    if base == "bpr" and config.data.kind != "pcrec_bpr":
        raise ValueError("config.data.kind must be 'pcrec_bpr' for the BPR base")
    plan = schedule(config, task)
    return Hyper(base=base, variant=variant, num_peers=p, seeds=seeds, lr_scales=scales,
                 lr=float(config.optim.lr), cosine=bool(pc.cosine),
                 total_steps=int(plan["num_steps"]), steps_per_epoch=task.steps_per_epoch,
                 batch_size=task.batch_size, shuffle=shuffle, criterion=str(pc.criterion),
                 a=float(pc.a), b=float(pc.b), select=select, bins=int(pc.bins),
                 include_max=bool(pc.include_max), percent=float(pc.percent),
                 noise_rate=float(pc.noise_rate), noise_period=int(pc.noise_period),
                 serve_peer=serve % p, l2=float(pc.l2), num_items=task.num_items,
                 neg_tries=int(pc.get("neg_tries", 8)))


def make_network(config, task):
    """The base network: a :class:`common.RecNet` (SASRec / YouTube-DNN + a Dense head
    over the N items) or :class:`BPRMF`."""
    if config.model.encoder == "bpr":
        return BPRMF(num_users=int(task.extras["num_users"]), num_items=task.num_items,
                     embed_dim=int(config.model.embed_dim))
    return common.make_net(config, task.num_items, heads=("s",))


def init_peer(net, hp: Hyper, rng, example: dict):
    """Parameters of one network (``rng`` already folded with the peer's seed)."""
    if hp.base == "bpr":
        z = jnp.zeros((1,), jnp.int32)
        return net.init(rng, z, z, z)
    return net.init({"params": rng, "dropout": rng}, example["state"][:1],
                    example["len_state"][:1], train=False)


def init(rng, task, config) -> State:
    hp = hyper(config, task)
    net = make_network(config, task)
    ex = task.example_batch(1)
    params = common.stack_trees(*[init_peer(net, hp, jax.random.fold_in(rng, s), ex)
                                  for s in hp.seeds])
    optim = config.optim
    tx = optax.scale_by_adam(b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999),
                             eps=optim.get("eps", 1e-8))
    return State(step=jnp.zeros((), jnp.int32), params=params,
                 opt_state=jax.vmap(tx.init)(params), net=net, tx=tx, hp=hp)


def make_consts(config, task) -> dict:
    """The training arrays and one fixed permutation per peer (``per_peer`` shuffling),
    plus BPR's per-user training items for negative sampling."""
    hp = hyper(config, task)
    out = {}
    if hp.shuffle == "per_peer":
        n = task.num_train
        used = hp.steps_per_epoch * hp.batch_size
        out["train"] = {k: jnp.asarray(v) for k, v in task.train.items()}
        out["perm"] = jnp.asarray(np.stack(
            [np.random.RandomState(s).permutation(n)[:used] for s in hp.seeds]
        ).astype(np.int32))
    if hp.base == "bpr":
        out["history"] = jnp.asarray(task.extras["history"])
    return out


def peer_loss(params, net, hp: Hyper, batch: dict, rng, history=None):
    """Training loss of one network on its batch.

    sasrec: mean CE at every position (``targets [B, L]``, −1 = none) or of ``action [B]``;
    youtube_dnn: CE of the window's last target (``targets[:, -1]``, the reference's
    ``batch[:, -1]``) or of ``action``; bpr: summed BPR loss with one negative per pair
    avoiding the user's training items (``history [U, H]``).
    """
    if hp.base == "bpr":
        neg = sample_negatives(rng, history[batch["user"]], hp.num_items, hp.neg_tries)
        loss, _ = net.apply(params, batch["user"], batch["item"], neg, hp.l2)
        return loss
    items, lengths = batch["state"], batch["len_state"]
    if hp.base == "sasrec" and "targets" in batch:
        logits = net.apply(params, items, lengths, train=True, rngs={"dropout": rng},
                           method=common.RecNet.per_position)
        return common.cross_entropy(logits, batch["targets"])[0]
    labels = batch["targets"][:, -1] if "targets" in batch else batch["action"]
    logits = net.apply(params, items, lengths, train=True, rngs={"dropout": rng})["s"]
    return common.cross_entropy(logits, labels)[0]


def peer_update(params, opt_state, net, tx, hp: Hyper, batch, rng, lr, history=None):
    """One Adam step of one network at learning rate ``lr``; returns (params, opt, loss)."""
    loss, grads = jax.value_and_grad(peer_loss)(params, net, hp, batch, rng, history)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state, loss


def cooperate(params: Any, hp: Hyper, epoch, rng) -> Any:
    """The ``hp.variant`` operator on stacked ``[P, ...]`` params; every peer reads its
    partner (k − 1 mod P) before anyone changes."""
    if hp.variant == "none":
        return params
    if hp.variant == "noise":
        keys = jax.vmap(lambda s: jax.random.fold_in(rng, s))(jnp.asarray(hp.seeds))
        return jax.vmap(lambda p, k: add_noise(p, k, epoch, hp.noise_rate, hp.noise_period,
                                               hp.percent, hp.select))(params, keys)
    partner = jax.tree.map(lambda x: jnp.roll(x, 1, axis=0), params)
    if hp.variant == "lw":
        fn = lambda p, q: layerwise(p, q, hp.criterion, hp.a, hp.b, hp.select, hp.bins,
                                    hp.include_max)[0]
    else:
        fn = lambda p, q: parameterwise(p, q, hp.percent, hp.select)
    return jax.vmap(fn)(params, partner)


def peer_batches(hp: Hyper, step, batch: dict, consts) -> dict:
    """``[P, B, ...]`` batches: each peer's own fixed permutation (``per_peer``) or the
    trainer's batch for all (``shared``)."""
    if hp.shuffle == "shared":
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (hp.num_peers,) + x.shape), batch)
    pos = (step % hp.steps_per_epoch) * hp.batch_size
    idx = jax.lax.dynamic_slice_in_dim(consts["perm"], pos, hp.batch_size, axis=1)  # [P, B]
    return {k: v[idx] for k, v in consts["train"].items()}


def train_step(state: State, batch, rng, consts=None):
    hp = state.hp
    step = state.step
    params = state.params
    if hp.variant != "none":
        boundary = (step > 0) & (step % hp.steps_per_epoch == 0)
        epoch = step // hp.steps_per_epoch - 1            # the epoch that just ended
        params = jax.lax.cond(boundary,
                              lambda p: cooperate(p, hp, epoch, jax.random.fold_in(rng, 1)),
                              lambda p: p, params)
    lrs = peer_learning_rates(step, hp.lr, hp.lr_scales, hp.total_steps, hp.cosine)
    rngs = jax.vmap(lambda s: jax.random.fold_in(rng, s))(jnp.asarray(hp.seeds))
    history = consts.get("history") if consts else None
    batches = peer_batches(hp, step, batch, consts)
    params, opt_state, losses = jax.vmap(
        lambda p, o, b, r, lr: peer_update(p, o, state.net, state.tx, hp, b, r, lr, history)
    )(params, state.opt_state, batches, rngs, lrs)
    metrics = {"loss": losses.mean()}
    for k in range(hp.num_peers):
        metrics[f"loss/peer{k}"] = losses[k]
        metrics[f"lr/peer{k}"] = lrs[k]
    return state.replace(step=step + 1, params=params, opt_state=opt_state), metrics


def peer_scores(net, hp: Hyper, params, batch) -> jax.Array:
    """Scores ``[B, N]`` of one network (dropout off)."""
    if hp.base == "bpr":
        return net.apply(params, batch["user"], method=BPRMF.scores)
    return net.apply(params, batch["state"], batch["len_state"], train=False)["s"]


def predict(state: State, batch, consts=None):
    """Scores ``[B, N]`` of the served peer (``config.pcrec.serve_peer``)."""
    del consts
    return peer_scores(state.net, state.hp, common.tree_index(state.params,
                                                              state.hp.serve_peer), batch)

