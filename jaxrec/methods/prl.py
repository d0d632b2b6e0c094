"""PRL — prompt-based reinforcement learning for next-item recommendation.

Paper: X. Xin, T. Pimentel, A. Karatzoglou, P. Ren, K. Christakopoulou, Z. Ren,
"Rethinking Reinforcement Learning for Recommendation: A Prompt Perspective", SIGIR 2022,
§3 (the prompt tuple {R_t, x_{1:t}, t}, the prompt encoder, supervised training on the
logged data as a knowledge base, re-weighting) and §4 (inference with a requested return).
Reference code: ``{GRU,Caser,NextItNet,SASRec}_PRL.py`` and ``trajectory_buffer.py`` of
``iqra0908/PRL`` (rl.md §6).

Data: the ``'prl'`` task (:func:`jaxrec.data.tasks.prl_task`): one row per event of the
training sessions of at most ``config.data.prl_max_length`` (50) events with the step ``t``,
the last-10 state, the action, ``is_buy`` and the reward-to-go ``R_t`` (γ = 1, r_t
included), normalised per step: ``R̃_t = R_t / reward_mean[t]``.

Model (:class:`PRLNet`), with ``D`` the encoder's state width (64; 112 for Caser):

    tokens = [ encoder(x_{1:t}) ; T[t] ; R̃_t · w_r ]                 [B, 3, D]
    X      = dropout_0.3(tokens)
    GRU4Rec / Caser / NextItNet (self-attention over the 3 tokens):
        H = LN( Attn(q = LN(X), k = v = X) + LN(X) )
    SASRec (the tokens query the 10-position SASRec output sequence S):
        H = Attn(q = X, k = v = S) + X                                   (no final LN)
    logits = Dense_N(H[:, 0])                                            [B, N]

with one head, no causal mask, no FFN, dropout 0.3 on the attention weights, Q/K/V
projections with bias and no output projection (kang205's ``multihead_attention``), LN
eps 1e-8, T ∈ R^{max_step×D} and w_r ∈ R^{1×D} drawn from N(0, 0.01).

Loss: ``L = mean_B[ w · CE(logits, a) ]`` with ``w`` chosen by ``config.rl.prl_weight``:
``'reward'`` (r_buy / r_click of the event — every RC15 script and RetailRocket's
Caser/NextItNet/SASRec), ``'rtg'`` (R̃_t — RetailRocket's GRU script) or ``'none'`` (the
paper's no-re-weighting ablation).

Inference (§4): the prompt asks for ``ε`` times the mean training return at the query's
true step: step = ``position`` (clipped to ``max_step - 1``) and R̃ = ε, i.e.
R = ε · reward_mean[t] (``config.rl.prl_epsilon``, 2.0 = the reference's
``--reward_to_go``; its σ is 0, so the prompt is deterministic). :class:`PromptSweepEvaluator`
(``type='prl_sweep'``) ranks under several ε in one evaluation.

Caser: its state is 112-d (48 horizontal + 64 vertical features). The reference widens the
whole prompt block to 112 (step and reward embeddings of width 112, attention with
``num_units=112``) instead of projecting the state; so does this module, since ``D`` is
the encoder's ``state_dim``. The reference feeds Caser's *undropped* state (its dropout
output is discarded), as the encoder does at its default Caser dropout of 0.

Deviations from the reference (its attention masks keys and queries whose vector sums to
exactly 0):

- Prompt tokens are never masked. In the reference the test can only fire by accident
  (an LN output summing to 0 in floating point, or an ε = 0 prompt whose reward token is 0).
- SASRec's keys, ``config.rl.prl_key_mask='reference'`` (default): the sum test on pad
  positions only. A pad position of S is ``LN(0) = β`` of the encoder's final LN, so it is
  masked while β = 0 (at initialisation) and becomes attendable once β moves — the
  reference's behaviour. Real positions always attend: at initialisation (γ = 1, β = 0)
  their LN outputs sum to 0 up to rounding, so the reference's test masks some of them by
  accident, which is not reproduced. ``'ids'`` masks every pad position.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

from jaxrec import config_util
from jaxrec.data.tasks import rewards_of
from jaxrec.encoders import make_encoder, read_state
from jaxrec.encoders.common import REFERENCE_MASK_VALUE, valid_mask
from jaxrec.encoders.sasrec import MultiHeadAttention
from jaxrec.evaluators.ranking import RankingEvaluator
from jaxrec.methods import common

WEIGHTS = ("reward", "rtg", "none")
KEY_MASKS = ("reference", "ids")
# The ε values of the sweep evaluator: the reference default (2.0), the values of its run
# logs (0.1, 1.5) and two more around them.
SWEEP_EPSILONS = (0.1, 1.0, 1.5, 2.0, 3.0)
# Name of the consts entry through which an evaluator overrides ε (traced, so one
# compilation serves every ε).
EPSILON_KEY = "prl_epsilon"


class PRLNet(nn.Module):
    """Encoder + prompt tokens + one attention block + a dense head over N items.

    Attributes:
      num_items: N (scores exclude the pad id).
      encoder_name / encoder_items: as in :class:`jaxrec.methods.common.RecNet`.
      max_step: rows of the step table (``config.data.prl_max_length``, 50).
      dropout: rate on the prompt tokens and on the attention weights (0.3).
      num_heads: attention heads (1).
      key_mask: 'reference' or 'ids' (SASRec's cross-attention keys; module docstring).
      ln_eps: LayerNorm epsilon (1e-8, the reference's ``normalize``).
    """

    num_items: int
    encoder_name: str
    encoder_items: tuple
    max_step: int = 50
    dropout: float = 0.3
    num_heads: int = 1
    key_mask: str = "reference"
    ln_eps: float = 1e-8

    @property
    def cross(self) -> bool:
        """SASRec's arrangement: the tokens cross-attend to its output sequence."""
        return self.encoder_name == "sasrec"

    def setup(self):
        if self.key_mask not in KEY_MASKS:
            raise ValueError(f"config.rl.prl_key_mask must be one of {KEY_MASKS}, got "
                             f"{self.key_mask!r}")
        self.encoder = make_encoder(self.encoder_name, dict(self.encoder_items),
                                    num_items=self.num_items)
        d = self.encoder.state_dim
        if d % self.num_heads:
            raise ValueError(f"config.rl.prl_heads={self.num_heads} does not divide the "
                             f"{self.encoder_name} state width {d}")
        init = nn.initializers.normal(stddev=0.01)
        self.step_embed = self.param("step_embed", init, (self.max_step, d))
        self.reward_embed = self.param("reward_embed", init, (1, d))
        self.attention = MultiHeadAttention(d, self.num_heads, use_bias=True, out_proj=False,
                                            dropout=self.dropout,
                                            mask_value=REFERENCE_MASK_VALUE,
                                            kernel_init=nn.initializers.glorot_uniform(),
                                            name="attention")
        ln = lambda name: nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, name=name)
        if not self.cross:
            self.ln_query, self.ln_out = ln("ln_query"), ln("ln_out")
        self.token_dropout = nn.Dropout(self.dropout)
        self.head = nn.Dense(self.num_items, kernel_init=nn.initializers.xavier_uniform(),
                             name="head")

    def prompt_tokens(self, items, lengths, steps, reward_norm, train: bool = False):
        """The prompt before dropout.

        Args:
          items: ``[B, L]`` int state (pad included); lengths: ``[B]`` int.
          steps: ``[B]`` int step t in ``[0, max_step)``.
          reward_norm: ``[B]`` float normalised reward-to-go R̃.
          train: dropout inside the encoder.
        Returns:
          (tokens ``[B, 3, D]`` = [state; T[t]; R̃·w_r], the encoder's output sequence
          ``[B, L, D]`` for SASRec, else None).
        """
        if self.cross:
            seq = self.encoder.sequence(items, lengths, train=train)
            state = read_state(seq, items, lengths, self.encoder.pad_id,
                               self.encoder.cfg.padding)
        else:
            seq, state = None, self.encoder(items, lengths, train=train)
        step_tok = self.step_embed[steps]                                   # [B, D]
        reward_tok = jnp.asarray(reward_norm, state.dtype)[:, None] @ self.reward_embed  # [B, D]
        return jnp.stack([state, step_tok, reward_tok], axis=1), seq

    def __call__(self, items, lengths, steps, reward_norm, train: bool = False):
        """Item scores ``[B, N]`` for the prompt (arguments as :meth:`prompt_tokens`)."""
        x, seq = self.prompt_tokens(items, lengths, steps, reward_norm, train=train)
        x = self.token_dropout(x, deterministic=not train)
        b = x.shape[0]
        all_queries = jnp.ones((b, 3), bool)
        if self.cross:
            keys_valid = valid_mask(items, self.encoder.pad_id)                 # [B, L]
            if self.key_mask == "reference":
                keys_valid = keys_valid | (jnp.sum(seq, axis=-1) != 0)
            mask = jnp.broadcast_to(keys_valid[:, None, :], (b, 3, seq.shape[1]))
            h = self.attention(x, seq, mask, all_queries, train=train) + x
        else:
            q = self.ln_query(x)
            h = self.attention(q, x, jnp.ones((b, 3, 3), bool), all_queries, train=train) + q
            h = self.ln_out(h)
        return self.head(h[:, 0])


@struct.dataclass
class Hyper:
    """Static hyperparameters: ε, the loss weights, the event rewards, the step table."""

    epsilon: float = 2.0
    weight: str = "reward"
    r_click: float = 0.2
    r_buy: float = 1.0
    max_step: int = 50


@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    net: PRLNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Hyper = struct.field(pytree_node=False)


def hyper(config) -> Hyper:
    """ε and the weighting from ``config.rl``; rewards and the step range from ``config.data``."""
    weight = config_util.choice(config.rl, "rl.prl_weight", WEIGHTS, "reward")
    r_click, r_buy = rewards_of(config)
    return Hyper(epsilon=float(config.rl.get("prl_epsilon", 2.0)), weight=weight,
                 r_click=r_click, r_buy=r_buy,
                 max_step=int(config.data.get("prl_max_length", 50)))


def make_net(config, num_items: int) -> PRLNet:
    """The :class:`PRLNet` of ``config.model`` (encoder) and ``config.rl`` (prompt block)."""
    rl = config.rl
    return PRLNet(num_items=int(num_items), encoder_name=config.model.encoder,
                  encoder_items=tuple(sorted(common.encoder_config(config).items())),
                  max_step=int(config.data.get("prl_max_length", 50)),
                  dropout=float(rl.get("prl_dropout", 0.3)),
                  num_heads=int(rl.get("prl_heads", 1)),
                  key_mask=str(rl.get("prl_key_mask", "reference")))


def init(rng, task, config) -> State:
    """Parameters (initialised on ``task.example_batch()``), Adam state, hyperparameters."""
    if "reward_to_go_norm" not in task.train:
        raise ValueError(f"PRL trains on reward-to-go rows: set config.data.kind='prl' "
                         f"(got {task.kind!r})")
    hp = hyper(config)
    net = make_net(config, task.num_items)
    ex = task.example_batch()
    params = net.init({"params": rng, "dropout": rng}, ex["state"], ex["len_state"],
                      ex["step"], ex["reward_to_go_norm"], train=False)
    tx = common.make_optimizer(config.optim, params)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 net=net, tx=tx, hp=hp)


def loss_weights(batch, hp: Hyper):
    """``[B]`` per-event CE weights of ``hp.weight`` (module docstring)."""
    if hp.weight == "reward":
        return jnp.where(batch["is_buy"] > 0, hp.r_buy, hp.r_click).astype(jnp.float32)
    if hp.weight == "rtg":
        return batch["reward_to_go_norm"].astype(jnp.float32)
    return jnp.ones(batch["action"].shape, jnp.float32)


def loss_fn(params, state: State, batch, rng):
    """``mean_B[w · CE]`` on the training prompt (R̃_t at the true step t), dropout on.

    Args:
      params: the network's parameters.
      state: for the static network and hyperparameters.
      batch: ``state [B, L]``, ``len_state [B]``, ``step [B]``, ``action [B]``,
        ``is_buy [B]``, ``reward_to_go_norm [B]`` (the 'prl' task's rows).
      rng: the dropout key, used as given (the tests rebuild the logits with it).
    Returns:
      (loss, metrics: loss, unweighted ce_loss, mean weight).
    """
    logits = state.net.apply(params, batch["state"], batch["len_state"], batch["step"],
                             batch["reward_to_go_norm"], train=True, rngs={"dropout": rng})
    w = loss_weights(batch, state.hp)
    loss, _ = common.cross_entropy(logits, batch["action"], w)
    ce, _ = common.cross_entropy(logits, batch["action"])
    return loss, {"loss": loss, "ce_loss": ce, "weight": w.mean()}


def train_step(state: State, batch, rng, consts=None):
    """One Adam step on :func:`loss_fn` (batch as there); returns (state, metrics)."""
    del consts
    return common.gradient_step(state, loss_fn, batch, rng)


def epsilon_of(state: State, consts):
    """ε of this prediction: ``consts['prl_epsilon']`` when an evaluator sets it, else
    ``config.rl.prl_epsilon``."""
    if isinstance(consts, dict) and EPSILON_KEY in consts:
        return consts[EPSILON_KEY]
    return state.hp.epsilon


def with_epsilon(consts, epsilon: float) -> dict:
    """``consts`` with ε set (a traced scalar: every ε shares one compilation)."""
    if consts is not None and not isinstance(consts, dict):
        raise TypeError(f"PRL consts must be None or a dict to carry ε, got "
                        f"{type(consts).__name__}")
    return {**(consts or {}), EPSILON_KEY: jnp.asarray(epsilon, jnp.float32)}


def inference_prompt(batch, epsilon, max_step: int):
    """(steps ``[B]``, R̃ ``[B]``): the query's true position, clipped to the step table,
    and R̃ = ε, i.e. a requested return of ε · reward_mean[t] (the prompt is normalised
    by the per-step mean, so the mean itself never appears)."""
    key = "position" if "position" in batch else "step"
    if key not in batch:
        raise KeyError("PRL predict needs the query's step in the session: batch['position'] "
                       "(evaluation sets) or batch['step'] (training rows)")
    steps = jnp.clip(jnp.asarray(batch[key]), 0, max_step - 1).astype(jnp.int32)
    return steps, jnp.full(steps.shape, epsilon, jnp.float32)


def predict(state: State, batch, consts=None):
    """Scores ``[B, N]`` under the inference prompt (dropout off).

    ``batch``: ``state [B, L]``, ``len_state [B]`` and ``position [B]`` (or ``step``);
    ``consts``: None, or a dict whose ``'prl_epsilon'`` overrides ``config.rl.prl_epsilon``
    (:func:`with_epsilon`)."""
    steps, r_norm = inference_prompt(batch, epsilon_of(state, consts), state.hp.max_step)
    return state.net.apply(state.params, batch["state"], batch["len_state"], steps, r_norm,
                           train=False)


def epsilon_tag(epsilon: float) -> str:
    """Key prefix of one ε: ``'eps=1.5'``, ``'eps=2.0'``."""
    return f"eps={float(epsilon)!r}"


class PromptSweepEvaluator(RankingEvaluator):
    """The ranking evaluator under several inference prompts ε in one run (PRL §4).

    Options: those of :class:`~jaxrec.evaluators.ranking.RankingEvaluator` plus
    ``epsilons`` (default :data:`SWEEP_EPSILONS`). Keys: ``'eps=<ε>/<ranking key>'``, e.g.
    ``'eps=1.5/purchase/ndcg@10'`` (then prefixed with the evaluator's ``prefix``).
    """

    def __init__(self, method, task, config, options):
        super().__init__(method, task, config, options)
        eps = tuple(float(e) for e in options.get("epsilons", SWEEP_EPSILONS))
        if not eps or len(set(eps)) != len(eps):
            raise ValueError(f"evaluator prl_sweep: epsilons must be distinct and non-empty, "
                             f"got {eps}")
        self.epsilons = eps

    def metric_names(self, split: str) -> list:
        names = super().metric_names(split)
        return [f"{epsilon_tag(e)}/{n}" for e in self.epsilons for n in names]

    def run(self, state, consts, split: str) -> dict:
        out = {}
        for e in self.epsilons:
            for k, v in super().run(state, with_epsilon(consts, e), split).items():
                out[f"{epsilon_tag(e)}/{k}"] = v
        return out


EVALUATORS = {"prl_sweep": PromptSweepEvaluator}
