"""The small decoder that plays the LLM offline: pretrained here on a corpus, saved, shared.

Spec ``llm.md`` §1.5 / §2.6 / §3 and ``rl.md`` §8: PERSOMA, GazeReward and LEA all need "an
LLM". None is available offline, so a tiny Llama-family decoder
(:class:`jaxrec.backbones.llama.LlamaModel`) is pretrained by next-token cross-entropy on the
texts of the task (rendered item texts, or the preference pairs) and saved as a checkpoint that
every method and seed loads instead of re-training it. ``checkpoint`` can name a directory
written by :func:`save` (e.g. a longer pretraining run of ``python -m jaxrec.backbones.decoder_lm``)
or any Hugging Face Llama / Mistral / Gemma directory (``config.json`` + safetensors + a
``tokenizer.json`` with its ``tokenizer_config.json``).

Pieces:

* :class:`DecoderLM`: ``config`` (a :class:`LlamaConfig` with the LM head), ``params`` (the
  ``'params'`` tree, ``lm_head`` included), ``tokenizer`` (a
  :class:`jaxrec.backbones.tokenizers.HFTokenizer`: ``encode``, ``decode``, ``vocab_size``,
  ``pad_id`` / ``bos_id`` / ``eos_id``, word alignment) and ``info`` (how it was made).
* :func:`pretrain`: the causal-LM run; :func:`fit_minibatch`: the jitted-once Adam loop it uses
  (shared with GazeReward's BiLSTM imitation and LEA's stages).
* :func:`save` / :func:`load`: a Hugging Face Llama directory — ``config.json`` (read by
  ``transformers.AutoConfig``), ``model.safetensors`` (PyTorch tensor names and layouts, read by
  :func:`jaxrec.backbones.llama.load_llama`), ``tokenizer.json`` + ``tokenizer_config.json`` +
  ``special_tokens_map.json`` (read by ``transformers.AutoTokenizer``, same ids as jaxrec) and
  ``jaxrec_decoder.json`` (how it was pretrained) — written into a temporary directory and
  renamed when complete (a crash never leaves a half-written checkpoint that looks finished).
  :func:`load` still reads the former layout (``decoder.json`` + ``params.npz`` + jaxrec's own
  ``tokenizer.json``); such directories in the cache are simply no longer looked up.
* :func:`get_decoder`: the checkpoint named by a config section, or the cached pretraining of
  ``texts`` under a key of (texts, architecture, pretraining settings, :data:`FORMAT`),
  pretrained and saved on first use.
* :func:`item_texts`: one rendered text per item (title, genres) from
  :class:`jaxrec.data.events.ItemInfo`.
* :func:`read_texts` and the command line (:func:`main`): pretraining on a file of texts.
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
from jaxrec.backbones import hf
from jaxrec.backbones import tokenizers as toks
from jaxrec.backbones.llama import LlamaConfig, LlamaModel, hf_param_mapping, load_llama
from jaxrec.backbones.tokenizers import BOS, EOS, PAD, UNK, PieceTokenizer

# Bump when the saved layout changes: it is part of the cache key, so old caches are not read.
# 1: decoder.json + params.npz + jaxrec tokenizer.json; 2: Hugging Face Llama layout.
FORMAT = 2
INFO_FILE = "jaxrec_decoder.json"       # FORMAT and pretraining provenance, next to config.json
LEGACY_FILE = "decoder.json"            # FORMAT 1's metadata file
# LlamaConfig fields a section may set (the rest keep the tiny-Llama defaults).
ARCH_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_position_embeddings")
__all__ = ["DecoderLM", "default_section", "get_decoder", "pretrain", "save", "load", "item_texts",
           "read_texts", "fit_minibatch", "PAD", "BOS", "EOS", "UNK"]


def default_section(**overrides) -> ml_collections.ConfigDict:
    """The ``config.decoder`` section of an LLM method, with ``overrides`` applied.

    Fields:
      checkpoint: '' = pretrain here (cached), else a :func:`save` directory or a Hugging Face
        Llama-family directory.
      piece, mark: the :class:`~jaxrec.backbones.tokenizers.PieceTokenizer` built on the corpus
        (pieces of at most ``piece`` characters; ``mark='▁'`` marks word starts so generations
        decode exactly, ``''`` leaves pieces unmarked; the former ``'##'`` reads as ``'▁'``).
      hidden_size, intermediate_size, num_layers, num_heads, max_position_embeddings: the
        decoder's shape [inferred: CPU-sized; the papers use 1B–8B models].
      pretrain_steps, batch_size, lr, max_len, seed: the causal-LM pretraining on the corpus.
      cache_dir: where pretrained decoders are kept ('' = ``$JAXREC_DATA_DIR/decoders``).
    """
    s = ml_collections.ConfigDict(dict(
        checkpoint="", piece=4, mark="\u2581", hidden_size=64, intermediate_size=128, num_layers=2,
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
      tokenizer: a :class:`jaxrec.backbones.tokenizers.HFTokenizer` (``encode(text) -> ids``,
        ``decode(ids) -> text``, ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``,
        ``encode_words``); a Hugging Face tokenizer's own ids differ from :data:`PAD`,
        :data:`BOS`, :data:`EOS`, so code that may meet one reads these attributes.
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
        with the tokenizer's ``pad_id`` on the right (or the left, for generation prompts);
        ``bos`` is skipped for a tokenizer without a BOS token."""
        tok = self.tokenizer
        ids = np.full((len(texts), max_len), tok.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), np.int32)
        for i, t in enumerate(texts):
            row = ([tok.bos_id] if bos and tok.bos_id is not None else []) + list(tok.encode(t))
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
def hf_config(config: LlamaConfig, tokenizer=None) -> dict:
    """The ``config.json`` of a Llama decoder (``transformers.LlamaConfig`` fields; the special
    ids are the tokenizer's).

    Raises:
      ValueError: a config Hugging Face's Llama cannot express (Mistral / Gemma features) or
        one with LoRA / adapters (export those with :mod:`jaxrec.peft.peft_io`).
    """
    c = config
    if c.model_type != "llama" or c.norm_offset or c.embed_scale or c.sliding_window is not None:
        raise ValueError(f"save(): only plain Llama decoders are written (model_type {c.model_type!r}, "
                         f"norm_offset={c.norm_offset}, embed_scale={c.embed_scale}, "
                         f"sliding_window={c.sliding_window})")
    if c.lora_rank or c.adapter_size:
        raise ValueError("save(): the decoder has LoRA / adapter layers; merge them or export the adapter "
                         "with jaxrec.peft.peft_io.save_peft_adapter")
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
           "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
           "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "hidden_act": c.hidden_act,
           "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
           "rope_theta": c.rope_theta, "rope_scaling": None, "tie_word_embeddings": c.tie_word_embeddings,
           "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias,
           "attention_dropout": c.attention_dropout, "initializer_range": c.initializer_range,
           "torch_dtype": np.dtype(c.param_dtype).name, "use_cache": True}
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                   pad_token_id=tokenizer.pad_id if tokenizer.has_pad else None)
    return out


def hf_tensors(config: LlamaConfig, params: dict) -> dict:
    """``params`` under Hugging Face PyTorch names and layouts (``model.layers.0.self_attn.
    q_proj.weight [out, in]``...): the inverse of :func:`jaxrec.backbones.llama.hf_param_mapping`.

    Raises:
      ValueError: a leaf the mapping does not cover (e.g. LoRA factors), or a missing one.
    """
    mapping = hf_param_mapping(config, "model.")
    flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
    extra = sorted("/".join(k) for k in set(flat) - set(mapping))
    missing = sorted("/".join(k) for k in set(mapping) - set(flat))
    if extra or missing:
        raise ValueError(f"save(): parameters outside the Llama layout {extra[:5]}, missing {missing[:5]}")
    out = {}
    for path, (name, transform) in mapping.items():
        if transform is hf.linear_kernel:          # [in, out] -> torch.nn.Linear's [out, in]
            out[name] = np.ascontiguousarray(flat[path].T)
        elif transform is None:
            out[name] = np.ascontiguousarray(flat[path])
        else:
            raise ValueError(f"save(): no inverse for the layout transform of {name}")
    return out


def save(dec: DecoderLM, path: str) -> str:
    """Writes ``dec`` to directory ``path`` in Hugging Face Llama layout (see the module
    docstring), atomically (temporary directory, then rename)."""
    from safetensors import numpy as st_numpy
    cfg = hf_config(dec.config, dec.tokenizer)
    tensors = hf_tensors(dec.config, dec.params)
    with storage.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, hf.CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=1)
        st_numpy.save_file(tensors, os.path.join(tmp, hf.SAFETENSORS_FILE), metadata={"format": "pt"})
        dec.tokenizer.save_pretrained(tmp, model_max_length=dec.config.max_position_embeddings)
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump({"format": FORMAT, "info": {k: v for k, v in dec.info.items() if k != "source"}}, f, indent=1)
    return path


def load(path: str) -> DecoderLM:
    """A decoder written by :func:`save` (or by its former layout), or any Hugging Face Llama /
    Mistral / Gemma directory with its tokenizer.

    Raises:
      FileNotFoundError: ``path`` is not a directory, or holds neither ``config.json`` nor the
        former ``decoder.json``.
      ValueError: a tokenizer with more ids than the model's vocabulary (the message names the
        directory), or the errors of :func:`load_llama` / the tokenizer reader.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"decoder checkpoint {path!r} is not a directory")
    if os.path.exists(os.path.join(path, LEGACY_FILE)):
        return _load_legacy(path)
    if not os.path.exists(os.path.join(path, hf.CONFIG_FILE)):
        raise FileNotFoundError(f"{path}: no config.json (a Hugging Face / jaxrec decoder) nor "
                                f"{LEGACY_FILE} (a decoder saved by an earlier jaxrec)")
    loaded = load_llama(path, with_lm_head=True)
    tok = toks.from_pretrained(path)
    if tok.vocab_size > loaded.config.vocab_size:
        raise ValueError(f"{os.path.join(path, 'tokenizer.json')}: the tokenizer has {tok.vocab_size} "
                         f"ids, the model's vocab_size is {loaded.config.vocab_size} "
                         f"({os.path.join(path, hf.CONFIG_FILE)}): a tokenizer of another model?")
    info = {}
    if os.path.exists(os.path.join(path, INFO_FILE)):
        info = dict(toks.read_json_object(os.path.join(path, INFO_FILE)).get("info", {}))
    info.update(source=path, special_ids={"pad": tok.pad_id if tok.has_pad else None, "bos": tok.bos_id,
                                          "eos": tok.eos_id})
    return DecoderLM(loaded.config, jax.tree.map(np.asarray, loaded.params), tok, info)


def _load_legacy(path: str) -> DecoderLM:
    """FORMAT 1: ``decoder.json`` (config, info) + ``params.npz`` + jaxrec's own tokenizer JSON."""
    meta_path = os.path.join(path, LEGACY_FILE)
    meta = toks.read_json_object(meta_path)
    if meta.get("format") != 1:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected 1 (or a config.json directory)")
    known = {f.name for f in dataclasses.fields(LlamaConfig)}
    cfg = LlamaConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["config"].items() if k in known})
    tok_path = os.path.join(path, toks.TOKENIZER_FILE)
    with open(tok_path) as f:
        tok = PieceTokenizer.from_json(json.load(f), where=tok_path)
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tok.vocab_size} ids, the decoder {cfg.vocab_size}")
    params = storage.load_tree(os.path.join(path, "params.npz"))
    return DecoderLM(cfg, params, tok, dict(meta.get("info", {}), source=path))


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
    built = []

    def build():
        print(f"pretraining the decoder on {len(texts)} texts ({int(section.pretrain_steps)} steps) -> {path}",
              file=sys.stderr, flush=True)
        dec = pretrain(texts, section, log_every=log_every or max(int(section.pretrain_steps) // 5, 1))
        save(dec, path)
        dec.info["source"] = path
        built.append(dec)

    # One process pretrains, the others wait and load (storage.build_once).
    storage.build_once(path, lambda: os.path.exists(os.path.join(path, INFO_FILE)), build,
                       "decoder")
    return built[0] if built else load(path)


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
def read_texts(path: str, field: str = "") -> list:
    """The texts of a file: one per line (``field`` empty; blank lines skipped), or the string
    ``field`` of every JSON object of a JSON-lines file.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line that is not a JSON object or lacks ``field`` (naming file, line and
        field), or a file without any text.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"texts file {path!r} not found")
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not field:
                texts.append(line)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); without --field the file is "
                                 "read as one text per line") from None
            if not isinstance(row, dict) or field not in row:
                raise ValueError(f"{path}:{n}: no field {field!r}")
            if not isinstance(row[field], str):
                raise ValueError(f"{path}:{n}: field {field!r} must be a string, got {row[field]!r}")
            texts.append(row[field])
    if not texts:
        raise ValueError(f"{path}: no texts")
    return texts


def main(argv=None) -> int:
    """Pretrains a decoder on the texts of a file and saves it::

        python -m jaxrec.backbones.decoder_lm --texts=texts.txt --out=runs/decoder --pretrain_steps=3000

    ``--texts``: one text per line, or with ``--field=NAME`` a JSON-lines file whose objects
    hold the text under ``NAME``. The other flags are the fields of :func:`default_section`
    (``--piece``, ``--hidden_size``, ``--pretrain_steps``, ``--lr``...). ``--out`` becomes a
    Hugging Face Llama directory: pass it as ``config.decoder.checkpoint`` of PERSOMA / LEA (or
    ``config.model.decoder_checkpoint`` of GazeReward), or open it with ``transformers``.
    Item texts of a dataset are one call away: ``"\\n".join(item_texts(dataset.items))``.

    A bad file or flag value prints one ``error: ...`` line and exits with status 2.
    """
    import argparse
    from jaxrec import cli
    ap = argparse.ArgumentParser(prog="python -m jaxrec.backbones.decoder_lm", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", required=True, help="file of texts: one per line, or JSON lines with --field")
    ap.add_argument("--field", default="", help="the text field of a JSON-lines --texts file")
    ap.add_argument("--out", required=True, help="directory to write the decoder to")
    tunable = [k for k in default_section() if k not in ("checkpoint", "cache_dir")]
    for k in tunable:
        ap.add_argument(f"--{k}", type=type(default_section()[k]), default=default_section()[k])
    a = ap.parse_args(argv)
    try:
        section = default_section(**{k: getattr(a, k) for k in tunable})
        texts = read_texts(a.texts, a.field)
        dec = pretrain(texts, section, log_every=max(int(section.pretrain_steps) // 20, 1))
        save(dec, a.out)
    except cli.USER_ERRORS as e:
        cli.fail(cli.message(e))
    print(json.dumps(dict(dec.info, out=a.out)))
    return 0


def run():
    """Console script ``jaxrec-pretrain-decoder`` (same flags as ``python -m
    jaxrec.backbones.decoder_lm``)."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
