"""PERSOMA: a user's history, resampled into soft-prompt tokens for a (frozen) decoder LLM.

Paper: Hebert, Sayana, Jash, Karatzoglou, Sodhi, Doddapaneni, Cai, Kuzmin, "PERSOMA: PERsonalized
SOft ProMpt Adapter Architecture for Personalized Language Prompting", arXiv 2408.00960 (GenAIRecP
@ KDD 2024); spec ``llm.md`` §1 (§1.2 architecture, §1.3 regimes and baselines, §1.5 the CPU
reproduction). Predecessor baseline: UEM, Doddapaneni et al., arXiv 2401.04858.

The decoder input is ``[P_u ; Embed(prompt) ; Embed(target)]`` (spec §1.2):

* ``P_u``: the frozen sentence-encoder embeddings of the ``n`` sampled history items
  (``task.extras['item_emb']``, precomputed once; optionally with a one-hot of the user's rating,
  the part of UEM's interaction string that is not the item's own text) through a resampler of
  :mod:`jaxrec.peft.resamplers` (``config.model.resampler``: ``mlp`` / ``transformer`` (k = n),
  ``perceiver`` (k = num_tokens), ``pooled`` = the UEM-style baseline [inferred]) or nothing
  (``none``: the text-prompting baseline, whose prompt already holds the truncated history).
* ``prompt``: ``<bos> genres:`` (left-padded; the text baseline's rendered history before it).
* ``target``: the genre string + ``<eos>``; the loss is the token-level cross-entropy on these
  tokens only (soft tokens and prompt masked out, spec §1.2).

The decoder stands in for PaLM 2: the small Llama pretrained on the dataset's item texts
(:mod:`jaxrec.backbones.decoder_lm`), or a Hugging Face Llama / Mistral / Gemma checkpoint
(``config.decoder.checkpoint``, ``decoder_checkpoint=DIR`` in the config file) with its own
tokenizer: bos / eos / pad ids are always the tokenizer's (the data kind builds prompts and
targets with them; generation stops at its eos). Its frozen weights are kept as
``config.decoder.frozen_dtype`` (bfloat16 by default); trainable leaves are float32.

Regimes (``config.model.regime``, spec §1.3, by parameter-path patterns): ``frozen`` (adapter
only), ``lora`` (adapter + q/v LoRA), ``full`` (adapter + the whole decoder). Only the trainable
leaves live in the state (checkpointed, donated); the frozen decoder leaves are consts
(``make_consts``), rebuilt from the cached decoder checkpoint on every start.

``predict`` generates the answer greedily with the KV-cached decoder
(:func:`jaxrec.backbones.generation.make_generate`) after left-aligning the prefix
(:func:`jaxrec.peft.soft_prompt.left_align`); the ``genres`` evaluator
(:mod:`jaxrec.evaluators.genres`) parses and scores it. Data kind: :mod:`jaxrec.data.persoma`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from jaxrec.backbones import frozen_decoder, generation
from jaxrec.backbones.decoder_lm import merge_params
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.data import persoma as _persoma_data  # noqa: F401  (registers data kind 'persoma')
from jaxrec.peft import freeze
from jaxrec.peft.resamplers import RESAMPLERS, make_resampler
from jaxrec.peft.soft_prompt import concat_blocks, left_align

Array = Any
ADAPTERS = tuple(RESAMPLERS) + ("none",)
RATING_LEVELS = 6            # one-hot of the user's rating 0 (none) .. 5
# Trainable parameter paths per regime (regexes over '/'-joined paths of the 'params' tree).
REGIMES = {"frozen": (r"^adapter/",), "lora": (r"^adapter/", r"(^|/)lora_[ab]$"), "full": (r".*",)}
BATCH_KEYS = ("hist", "hist_mask", "hist_rating", "prompt_ids", "prompt_mask")


class PersomaModel(nn.Module):
    """Resampler + decoder.

    ``prefix(item_emb [N, d_e], hist [B, n], hist_mask [B, n], hist_rating [B, n],
    prompt_ids [B, P], prompt_mask [B, P]) -> (embeds [B, k + P, D], mask [B, k + P])`` and
    ``__call__(..., target_ids [B, T], target_mask [B, T]) -> logits [B, T, V]`` predicting the
    ``T`` target tokens (position ``k + P - 1 + t`` predicts target token ``t``).
    ``eos_id``: the tokenizer's end-of-sequence id (generation stops there).
    """

    config: LlamaConfig
    eos_id: int
    resampler: str = "perceiver"
    hidden: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_tokens: int = 8
    use_rating: bool = True

    def setup(self):
        if self.resampler not in ADAPTERS:
            raise ValueError(f"config.model.resampler must be one of {', '.join(ADAPTERS)}, got {self.resampler!r}")
        self.decoder = LlamaModel(self.config)
        if self.resampler != "none":
            self.adapter = make_resampler(self.resampler, self.config.hidden_size, hidden=self.hidden,
                                          num_layers=self.num_layers, num_heads=self.num_heads,
                                          num_tokens=self.num_tokens)

    def history(self, item_emb, hist, hist_rating):
        """``[B, n, d_e (+ 6)]``: item embeddings of the history (+ one-hot rating)."""
        e = jnp.take(item_emb, hist, axis=0).astype(jnp.float32)
        if self.use_rating:
            e = jnp.concatenate([e, jax.nn.one_hot(jnp.clip(hist_rating, 0, RATING_LEVELS - 1), RATING_LEVELS)], -1)
        return e

    def prefix(self, item_emb, hist, hist_mask, hist_rating, prompt_ids, prompt_mask, deterministic=True):
        blocks = []
        if self.resampler != "none":
            soft, smask = self.adapter(self.history(item_emb, hist, hist_rating), hist_mask, deterministic)
            blocks.append((soft.astype(self.config.dtype), smask))
        blocks.append((self.decoder.embed(prompt_ids), prompt_mask))
        return concat_blocks(blocks)

    def __call__(self, item_emb, hist, hist_mask, hist_rating, prompt_ids, prompt_mask, target_ids,
                 target_mask, deterministic=True):
        x, m = self.prefix(item_emb, hist, hist_mask, hist_rating, prompt_ids, prompt_mask, deterministic)
        x, m = concat_blocks([(x, m), (self.decoder.embed(target_ids), target_mask)])
        logits = self.decoder(inputs_embeds=x, attention_mask=m, deterministic=deterministic).logits
        p, t = x.shape[1] - target_ids.shape[1], target_ids.shape[1]
        return logits[:, p - 1:p - 1 + t]


def target_loss(logits: Array, target_ids: Array, target_mask: Array) -> tuple[Array, Array]:
    """Masked token-level CE on the target string: ``logits [B, T, V]``, ``target_ids [B, T]``,
    ``target_mask [B, T]`` -> ``(mean CE over real target tokens, token accuracy)``."""
    m = target_mask.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), target_ids)
    denom = jnp.maximum(m.sum(), 1.0)
    acc = ((jnp.argmax(logits, -1) == target_ids) * m).sum() / denom
    return (ce * m).sum() / denom, acc


# ---------------------------------------------------------------------------- building
@flax.struct.dataclass
class State:
    params: Any                       # the trainable leaves of {'adapter', 'decoder'} only
    opt_state: Any
    step: Array
    model: PersomaModel = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def build_model(config, decoder_config: LlamaConfig, eos_id: int) -> PersomaModel:
    """:class:`PersomaModel` of ``config.model`` around a decoder of ``decoder_config``
    (LoRA of rank ``config.model.lora_rank`` on q/v added in the ``lora`` regime) whose
    tokenizer ends sequences with ``eos_id``."""
    m = config.model
    if m.regime not in REGIMES:
        raise ValueError(f"config.model.regime must be one of {', '.join(REGIMES)}, got {m.regime!r}")
    lora = int(m.lora_rank) if m.regime == "lora" else 0
    cfg = dataclasses.replace(decoder_config, with_lm_head=True, lora_rank=lora, lora_alpha=float(m.lora_alpha),
                              lora_dropout=0.0)
    return PersomaModel(cfg, int(eos_id), str(m.resampler), int(m.adapter_hidden), int(m.adapter_layers), int(m.adapter_heads),
                        int(m.num_tokens), bool(m.use_rating))


def _patterns(config) -> tuple:
    pats = REGIMES[config.model.regime]
    if config.model.resampler == "none":
        pats = tuple(p for p in pats if "adapter" not in p)
        if not pats:
            raise ValueError("config.model.regime='frozen' with resampler 'none' (text prompting) trains "
                             "nothing: use regime lora or full")
    return pats


def _example(task, n: int = 2):
    b = task.example_batch(n)
    return [jnp.asarray(task.extras["item_emb"])] + [jnp.asarray(b[k]) for k in BATCH_KEYS + ("target_ids", "target_mask")]


@functools.lru_cache(maxsize=8)
def _structure(model: PersomaModel, shapes: tuple):
    """``(labels, shapes)`` of the full 'params' tree (by abstract init: no arrays made)."""
    args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
    return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)["params"]


def _partition(config, task):
    dec = task.extras["decoder"]
    eos = frozen_decoder.special_ids(dec.tokenizer, str(dec.info.get("source", ""))).eos
    model = build_model(config, dec.config, eos)
    ex = _example(task)
    shapes = _structure(model, tuple((tuple(a.shape), a.dtype) for a in ex))
    labels = freeze.param_labels(shapes, _patterns(config))
    return model, ex, labels


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
    """AdamW with a linear warm-up then cosine decay (UNVERIFIED in the paper, spec §1.3)."""
    o = config.optim
    lr = float(o.lr)
    warm = max(int(float(o.warmup_fraction) * num_steps), 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(num_steps, warm + 1), end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(float(o.clip_norm)),
                       optax.adamw(sched, weight_decay=float(o.weight_decay)))


def init(rng, task, config) -> State:
    """Random adapter (+ LoRA) leaves, the pretrained decoder's leaves, split by regime; the
    state keeps the trainable part and its AdamW moments."""
    model, ex, labels = _partition(config, task)
    params = model.init(rng, *ex)["params"]
    params = dict(params, decoder=_pretrained_decoder(params["decoder"], task))
    trainable, _ = freeze.split_trainable(params, labels)
    num_steps = int(config.train.get("num_steps", 0) or 0) or task.steps_per_epoch * int(config.train.get("num_epochs", 1))
    tx = make_optimizer(config, num_steps)
    return State(trainable, tx.init(trainable), jnp.zeros((), jnp.int32), model, tx)


def _pretrained_decoder(template: dict, task) -> dict:
    return merge_params(template, task.extras["decoder"].params)


def make_consts(config, task) -> dict:
    """``{'frozen': the frozen leaves (pretrained decoder weights), 'item_emb': [N, d_e]}``."""
    model, _, labels = _partition(config, task)
    flat_l = flax.traverse_util.flatten_dict(labels)
    pre = flax.traverse_util.flatten_dict({"decoder": task.extras["decoder"].params})
    frozen = {}
    for path, lab in flat_l.items():
        if lab == freeze.FROZEN:
            if path not in pre:
                raise ValueError(f"frozen leaf {'/'.join(path)} is not in the pretrained decoder (a frozen "
                                 "parameter must come from the checkpoint, not a random init)")
            frozen[path] = jnp.asarray(pre[path])
    return {"frozen": flax.traverse_util.unflatten_dict(frozen),
            "item_emb": jnp.asarray(task.extras["item_emb"], jnp.float32)}


def full_params(state: State, consts) -> dict:
    """The complete ``{'params': ...}`` variables: trainable state leaves + frozen consts."""
    return {"params": freeze.merge(state.params, consts["frozen"])}


def _inputs(batch, consts):
    return [consts["item_emb"]] + [jnp.asarray(batch[k]) for k in BATCH_KEYS]


def train_step(state: State, batch, rng, consts):
    """One AdamW step on the masked target CE; metrics ``loss``, ``token_acc``."""
    def loss_fn(p):
        variables = {"params": freeze.merge(p, consts["frozen"])}
        logits = state.model.apply(variables, *_inputs(batch, consts), batch["target_ids"], batch["target_mask"],
                                   deterministic=True)
        return target_loss(logits, batch["target_ids"], batch["target_mask"])
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt = state.tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    return state.replace(params=params, opt_state=opt, step=state.step + 1), {"loss": loss, "token_acc": acc}


def predict(state: State, batch, consts) -> Array:
    """Greedy answers ``[B, T]`` (``T`` = the target length; the tokenizer's eos after the end)
    with the KV cache."""
    variables = full_params(state, consts)
    model = state.model
    x, m = model.apply(variables, *_inputs(batch, consts), method=PersomaModel.prefix)
    x, m = left_align(x, m)
    gen = generation.make_generate(LlamaModel(model.config), int(batch["target_ids"].shape[1]),
                                   eos_id=model.eos_id)
    return gen({"params": variables["params"]["decoder"]}, x, m, jax.random.key(0))


def input_tokens(task, config, split: str = "test") -> float:
    """Mean decoder input length (soft tokens + real prompt tokens) per query: the cost the
    paper's "far fewer input tokens" claim is about (spec §1.3)."""
    a = task.split(split).arrays
    m = config.model
    prompt = float(a["prompt_mask"].sum(1).mean())
    if m.resampler == "none":
        return prompt
    if m.resampler in ("perceiver", "pooled"):
        return prompt + int(m.num_tokens)
    return prompt + float(a["hist_mask"].sum(1).mean())
