"""The small decoder that plays the LLM offline: pretrained here on a corpus, saved, shared.

Spec ``llm.md`` §1.5 / §2.6 / §3 and ``rl.md`` §8: PERSOMA, GazeReward and LEA all need "an
LLM". None is available offline, so a tiny Llama-family decoder
(:class:`jaxrec.backbones.llama.LlamaModel`) is pretrained by next-token cross-entropy on the
texts of the task (rendered item texts, or the preference pairs) and saved as a checkpoint that
every method and seed loads instead of re-training it. On a GPU, ``checkpoint`` can name a
directory written by :func:`save` (e.g. a longer pretraining run of
``python -m jaxrec.backbones.decoder_lm``) or a Hugging Face Llama / Mistral / Gemma directory
(``config.json`` + safetensors + a ``tokenizer.json`` / tokenizer files readable by
``transformers.AutoTokenizer``).

Pieces:

* :class:`DecoderLM`: ``config`` (a :class:`LlamaConfig` with the LM head), ``params`` (the
  ``'params'`` tree, ``lm_head`` included), ``tokenizer`` (``encode``, ``decode``,
  ``vocab_size``; ids :data:`PAD`, :data:`BOS`, :data:`EOS`) and ``info`` (how it was made).
* :func:`pretrain`: the causal-LM run; :func:`fit_minibatch`: the jitted-once Adam loop it uses
  (shared with GazeReward's BiLSTM imitation and LEA's stages).
* :func:`save` / :func:`load`: a directory ``decoder.json`` + ``params.npz`` + ``tokenizer.json``,
  written into a temporary directory and renamed when complete (a crash never leaves a
  half-written checkpoint that looks finished).
* :func:`get_decoder`: the checkpoint named by a config section, or the cached pretraining of
  ``texts`` under a key of (texts, architecture, pretraining settings), pretrained and saved on
  first use.
* :func:`item_texts`: one rendered text per item (title, genres) from
  :class:`jaxrec.data.events.ItemInfo`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrec import storage
from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.data.preferences import BOS, EOS, PAD, UNK, PieceTokenizer

FORMAT = 1                 # bump when the saved layout changes (old caches are then retrained)
# LlamaConfig fields a section may set (the rest keep the tiny-Llama defaults).
ARCH_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_position_embeddings")
__all__ = ["DecoderLM", "default_section", "get_decoder", "pretrain", "save", "load", "item_texts",
           "fit_minibatch", "PAD", "BOS", "EOS", "UNK"]


def default_section(**overrides) -> ml_collections.ConfigDict:
    """The ``config.decoder`` section of an LLM method, with ``overrides`` applied.

    Fields:
      checkpoint: '' = pretrain here (cached), else a :func:`save` directory or a Hugging Face
        Llama-family directory.
      piece, mark: the :class:`PieceTokenizer` built on the corpus (pieces of at most ``piece``
        characters; continuation pieces marked so generations decode exactly).
      hidden_size, intermediate_size, num_layers, num_heads, max_position_embeddings: the
        decoder's shape [inferred: CPU-sized; the papers use 1B–8B models].
      pretrain_steps, batch_size, lr, max_len, seed: the causal-LM pretraining on the corpus.
      cache_dir: where pretrained decoders are kept ('' = ``$JAXREC_DATA_DIR/decoders``).
    """
    s = ml_collections.ConfigDict(dict(
        checkpoint="", piece=4, mark="##", hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, max_position_embeddings=512, pretrain_steps=300, batch_size=32, lr=3e-3,
        max_len=48, seed=0, cache_dir=""))
    for k, v in overrides.items():
        if k not in s:
            raise KeyError(f"decoder section has no field {k!r}; fields: {', '.join(sorted(s))}")
        s[k] = v
    return s


@dataclasses.dataclass
class DecoderLM:
    """A decoder with its tokenizer.

    Attributes:
      config: :class:`LlamaConfig` (``with_lm_head=True``, no LoRA/adapters).
      params: the ``'params'`` tree, ``lm_head`` included (numpy or jax arrays).
      tokenizer: ``encode(text) -> ids``, ``decode(ids) -> text``, ``vocab_size``, ``pad_id``,
        ``bos_id``, ``eos_id`` (a Hugging Face tokenizer's own ids differ from :data:`PAD`,
        :data:`BOS`, :data:`EOS`; code that may meet one should read these attributes).
      info: provenance: corpus size, steps, first/last losses, source path.
    """

    config: LlamaConfig
    params: dict
    tokenizer: Any
    info: dict = dataclasses.field(default_factory=dict)

    def model(self, **overrides) -> LlamaModel:
        """The :class:`LlamaModel` with ``overrides`` on its config (e.g. ``lora_rank=8``,
        ``with_lm_head=False``); pair it with :meth:`variables`."""
        return LlamaModel(dataclasses.replace(self.config, **overrides))

    def backbone_params(self) -> dict:
        """``params`` without ``lm_head`` (for encoder-style / score-head use)."""
        return {k: v for k, v in self.params.items() if k != "lm_head"}

    def encode_batch(self, texts: Sequence[str], max_len: int, *, bos: bool = True, eos: bool = True,
                     left_pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``texts -> (ids [N, T], mask [N, T])`` int32 with ``T = max_len``, truncated, padded
        with :data:`PAD` on the right (or the left, for generation prompts)."""
        tok = self.tokenizer
        ids = np.full((len(texts), max_len), tok.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), np.int32)
        for i, t in enumerate(texts):
            row = ([tok.bos_id] if bos else []) + list(tok.encode(t))
            row = row[:max_len - 1] + [tok.eos_id] if eos else row[:max_len]
            row = row[:max_len]
            if left_pad:
                ids[i, max_len - len(row):], mask[i, max_len - len(row):] = row, 1
            else:
                ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask


def merge_params(template: dict, pretrained: dict, where: str = "decoder") -> dict:
    """``template`` (a freshly initialised ``'params'`` tree of a decoder that may add LoRA /
    adapter leaves or drop ``lm_head``) with every leaf of ``pretrained`` it has copied in.

    Raises ValueError naming the first leaf whose shape differs (a checkpoint of another size).
    """
    flat = flax.traverse_util.flatten_dict(template)
    for k, v in flax.traverse_util.flatten_dict(pretrained).items():
        if k not in flat:
            continue            # e.g. lm_head when the method drops it
        if tuple(flat[k].shape) != tuple(np.shape(v)):
            raise ValueError(f"pretrained {where} leaf {'/'.join(k)} has shape {tuple(np.shape(v))}, "
                             f"the model expects {tuple(flat[k].shape)}")
        flat[k] = jnp.asarray(v, flat[k].dtype)
    return flax.traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------- training loop
def fit_minibatch(loss_fn: Callable, params, arrays: tuple, steps: int, batch_size: int, lr: float,
                  seed: int, *, tx: Optional[optax.GradientTransformation] = None, label: str = "",
                  log_every: int = 0):
    """Adam (or ``tx``) on ``loss_fn(params, *batch_arrays, rng)`` over ``steps`` random
    minibatches of ``arrays`` (each ``[N, ...]``); the step is jitted once.

    ``label`` + ``log_every`` > 0 print progress (step, loss, steps/s) to stderr.

    Returns:
      ``(params, losses [steps] float64)``.
    """
    tx = optax.adam(lr) if tx is None else tx
    opt = tx.init(params)
    rng = jax.random.key(seed)

    @jax.jit
    def step(params, opt, batch, r):
        loss, g = jax.value_and_grad(loss_fn)(params, *batch, r)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    np_rng = np.random.default_rng(seed)
    losses = np.zeros(steps, np.float64)
    t0 = time.time()
    for s in range(steps):
        idx = np_rng.integers(0, len(arrays[0]), batch_size)
        params, opt, loss = step(params, opt, tuple(a[idx] for a in arrays), jax.random.fold_in(rng, s))
        losses[s] = float(loss)
        if log_every and label and ((s + 1) % log_every == 0 or s + 1 == steps):
            print(f"[{label}] step {s + 1}/{steps} loss {losses[s]:.4f} "
                  f"({(s + 1) / max(time.time() - t0, 1e-9):.1f} steps/s)", file=sys.stderr, flush=True)
    return params, losses


def lm_loss(model: LlamaModel, variables: dict, ids, mask, loss_mask=None, **kw):
    """Mean next-token cross-entropy of ``ids [B, T]`` over positions where ``loss_mask``
    (default ``mask``) is 1 for the *predicted* token."""
    logits = model.apply(variables, ids, mask, **kw).logits[:, :-1]
    tgt = ids[:, 1:]
    m = (mask if loss_mask is None else loss_mask)[:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tgt)
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


def pretrain(texts: Sequence[str], section, tokenizer=None, *, log_every: int = 0) -> DecoderLM:
    """Causal-LM pretraining of a fresh decoder on ``texts`` (``section``: :func:`default_section`).

    The tokenizer is built on ``texts`` unless given. Each text is one ``<s> ... </s>`` row of
    at most ``section.max_len`` tokens.
    """
    if not len(texts):
        raise ValueError("decoder pretraining: the corpus is empty")
    tok = tokenizer if tokenizer is not None else PieceTokenizer(texts, int(section.piece), str(section.mark))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, with_lm_head=True,
                      **{f: int(section[f]) for f in ARCH_FIELDS})
    dec = DecoderLM(cfg, {}, tok)
    ids, mask = dec.encode_batch(texts, int(section.max_len))
    model = LlamaModel(cfg)
    seed = int(section.seed)
    params = model.init(jax.random.key(seed), jnp.asarray(ids[:2]))["params"]
    steps = int(section.pretrain_steps)

    def loss_fn(p, b_ids, b_mask, r):
        return lm_loss(model, {"params": p}, b_ids, b_mask)

    params, losses = fit_minibatch(loss_fn, params, (ids, mask), steps, int(section.batch_size),
                                   float(section.lr), seed, label="decoder pretraining" if log_every else "",
                                   log_every=log_every)
    first = float(losses[: max(steps // 10, 1)].mean()) if steps else float("nan")
    last = float(losses[-max(steps // 10, 1):].mean()) if steps else float("nan")
    dec.params = jax.tree.map(np.asarray, params)
    dec.info = {"corpus": len(texts), "steps": steps, "loss_first": first, "loss_last": last,
                "tokens": int(mask.sum())}
    return dec


# ---------------------------------------------------------------------------- save / load
def save(dec: DecoderLM, path: str) -> str:
    """Writes ``dec`` to directory ``path`` atomically (temporary directory, then rename)."""
    if not isinstance(dec.tokenizer, PieceTokenizer):
        raise TypeError("save() stores PieceTokenizer decoders; a Hugging Face decoder is already "
                        "a directory (pass it as decoder.checkpoint)")
    with storage.atomic_directory(path) as tmp:
        cfg = {k: v for k, v in dataclasses.asdict(dec.config).items()
               if isinstance(v, (int, float, str, bool, type(None), tuple, list))}
        with open(os.path.join(tmp, "decoder.json"), "w") as f:
            json.dump({"format": FORMAT, "config": cfg, "info": dec.info}, f, indent=1)
        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            json.dump(dec.tokenizer.to_json(), f)
        storage.save_tree(os.path.join(tmp, "params.npz"), dec.params)
    return path


def load(path: str) -> DecoderLM:
    """A decoder written by :func:`save`, or a Hugging Face Llama-family directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"decoder checkpoint {path!r} is not a directory")
    meta_path = os.path.join(path, "decoder.json")
    if not os.path.exists(meta_path):
        if os.path.exists(os.path.join(path, "config.json")):
            return _load_hf(path)
        raise FileNotFoundError(f"{path}: neither decoder.json (a jaxrec decoder) nor config.json "
                                "(a Hugging Face checkpoint)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this version reads {FORMAT}")
    known = {f.name for f in dataclasses.fields(LlamaConfig)}
    cfg_d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["config"].items() if k in known}
    cfg = LlamaConfig(**cfg_d)
    with open(os.path.join(path, "tokenizer.json")) as f:
        tok = PieceTokenizer.from_json(json.load(f))
    params = storage.load_tree(os.path.join(path, "params.npz"))
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tok.vocab_size} ids, the decoder {cfg.vocab_size}")
    return DecoderLM(cfg, params, tok, dict(meta.get("info", {}), source=path))


class _HFTokenizer:
    """``transformers`` tokenizer behind the :class:`PieceTokenizer` interface."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer   # lazy: slow import, only for HF checkpoints
        self.tok = AutoTokenizer.from_pretrained(path)

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def pad_id(self) -> int:
        # Llama tokenizers often have no pad token; any id works under a zero mask.
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    @property
    def bos_id(self) -> int:
        return self.tok.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.tok.eos_token_id

    def encode(self, text: str) -> list:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        ids = [int(i) for i in ids]
        if stop_at_eos and self.tok.eos_token_id in ids:
            ids = ids[:ids.index(self.tok.eos_token_id)]
        return self.tok.decode(ids, skip_special_tokens=True)


def _load_hf(path: str) -> DecoderLM:
    from jaxrec.backbones.llama import load_llama
    loaded = load_llama(path, with_lm_head=True)
    tok = _HFTokenizer(path)
    # The module-level PAD/BOS/EOS ids are the PieceTokenizer's; an HF tokenizer has its own.
    global_ids = {"pad": tok.tok.pad_token_id, "bos": tok.tok.bos_token_id, "eos": tok.tok.eos_token_id}
    return DecoderLM(loaded.config, loaded.params, tok, {"source": path, "special_ids": global_ids})


# ------------------------------------------------------------------------------- caching
def cache_key(texts: Sequence[str], section) -> str:
    """A hash of the corpus and every setting that changes the pretrained weights."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    fields = ("piece", "mark", *ARCH_FIELDS, "pretrain_steps", "batch_size", "lr", "max_len", "seed")
    h.update(json.dumps({f: section[f] for f in fields}, sort_keys=True).encode())
    h.update(str(FORMAT).encode())
    return h.hexdigest()[:16]


def cache_dir(section) -> str:
    return storage.cache_dir("decoders", section.get("cache_dir") or "")


def get_decoder(section, texts: Sequence[str], *, log_every: int = 0) -> DecoderLM:
    """The decoder of a ``config.decoder`` section.

    ``section.checkpoint`` set: that directory is loaded (``texts`` unused). Otherwise the
    decoder pretrained on ``texts`` with the section's settings is loaded from the cache
    (``cache_dir/<key>``), or pretrained and saved there first — so every method, variant and
    seed on the same corpus starts from the same weights.
    """
    if section.get("checkpoint"):
        return load(str(section.checkpoint))
    path = os.path.join(cache_dir(section), f"decoder-{cache_key(texts, section)}")
    if os.path.exists(os.path.join(path, "decoder.json")):
        return load(path)
    print(f"pretraining the decoder on {len(texts)} texts ({int(section.pretrain_steps)} steps) -> {path}",
          file=sys.stderr, flush=True)
    dec = pretrain(texts, section, log_every=log_every or max(int(section.pretrain_steps) // 5, 1))
    save(dec, path)
    dec.info["source"] = path
    return dec


# ----------------------------------------------------------------------------- item texts
def item_text(items, i: int, fields: Sequence[str] = ("title", "genres")) -> str:
    """One item as text, e.g. ``"Toy Story (1995) | genres: animation, children's, comedy"``.

    Fields: ``title`` (or ``item <i>`` when the dataset has none), ``genres`` (multi-label,
    lower-cased). Missing fields are skipped.
    """
    parts = []
    for f in fields:
        if f == "title":
            parts.append(str(items.titles[i]) if items.titles is not None else f"item {i}")
        elif f == "genres":
            if items.genres is not None and len(items.genres[i]):
                parts.append("genres: " + ", ".join(str(g).lower() for g in items.genres[i]))
        else:
            raise ValueError(f"item_text: unknown field {f!r} (title, genres)")
    return " | ".join(parts)


def item_texts(items, num_items: Optional[int] = None, fields: Sequence[str] = ("title", "genres")) -> list:
    """[N] rendered item texts (:func:`item_text`)."""
    n = num_items if num_items is not None else (
        len(items.titles) if items.titles is not None else len(items.genres))
    return [item_text(items, i, fields) for i in range(n)]


# ------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    """``python -m jaxrec.backbones.decoder_lm --dataset=ml100k --out=DIR [--steps=N ...]``:
    pretrains a decoder on a dataset's item texts and saves it (pass ``DIR`` as
    ``config.decoder.checkpoint`` of PERSOMA / LEA)."""
    import argparse
    from jaxrec import config_util
    from jaxrec.data import tasks
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--raw_dir", default="")
    ap.add_argument("--out", required=True)
    for k, v in default_section().items():
        if k not in ("checkpoint", "cache_dir"):
            ap.add_argument(f"--{k}", type=type(v), default=v)
    a = ap.parse_args(argv)
    section = default_section(**{k: getattr(a, k) for k in default_section() if hasattr(a, k)
                                 and k not in ("checkpoint", "cache_dir")})
    cfg = ml_collections.ConfigDict({"dataset": config_util.dataset_config(a.dataset, a.raw_dir or None)})
    ds = tasks.load_dataset(cfg)
    texts = item_texts(ds.items, ds.num_items)
    dec = pretrain(texts, section, log_every=max(int(section.pretrain_steps) // 20, 1))
    save(dec, a.out)
    print(json.dumps(dec.info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
