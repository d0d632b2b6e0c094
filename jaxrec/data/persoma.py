"""PERSOMA's task: predict the genres of a user's next items from the user's history.

Paper: Hebert et al., "PERSOMA: PERsonalized SOft ProMpt Adapter Architecture for Personalized
Language Prompting", arXiv 2408.00960; spec ``llm.md`` §1.1 (task, label construction), §1.2
(history encoder, first-stage sampling) and §1.5 (the CPU reproduction). Data kind ``'persoma'``.

Label construction [inferred, spec §1.1; every choice a ``config.data`` field]:

1. Each user's interactions, in time order (``dataset.splits[s]``: users are the "sessions" of
   ML-100K and of the synthetic MovieLens-like preset; users are split 80/10/10).
2. A *cut* splits them: the ``target_items`` interactions after the cut are the future; the
   interactions before it are the available history (at least ``min_history``).
3. The target is the genre set of the future items rated ``>= min_rating`` (all future items
   when none is, or the data has no ratings), reduced by ``target_rule``: ``'top'`` keeps the
   ``target_top`` most frequent genres (ties: lower genre id), ``'all'`` keeps every one.
   Written as ``"g1, g2, g3"`` in the genre-name order, then the end-of-sequence token.
4. Training users give ``train_cuts`` examples (cuts at the end and ``target_items`` apart
   before it); evaluation users one (the last cut).

History: :func:`sample_history` picks ``n = history_len`` of the available items (first-stage
sampling, spec §1.2: ``recent`` = the last ``n``, ``random`` = ``n`` uniformly without
replacement with the data seed, kept in time order).

What the arrays hold (``E`` examples, ``n`` history slots, ``P`` prompt tokens, ``T`` target
tokens, ``G`` genres): ``hist [E, n]`` item ids (right-padded with 0), ``hist_mask [E, n]``,
``hist_rating [E, n]`` int32 (1..5, 0 = none/padding), ``prompt_ids [E, P]`` / ``prompt_mask``
(**left-padded**, so generation can start right after it), ``target_ids [E, T]`` /
``target_mask`` (right-padded), ``target_genres [E, G]`` int8 and ``num_history [E]`` (how many
items were available). ``prompt`` is ``<s> genres:`` for the soft-prompt methods
(``config.data.prompt_mode='soft'``) or, for the text-prompting baseline (``'text'``),
``<s>`` + the sampled history rendered as text, **truncated** to the most recent items that fit
in ``context_tokens``, + ``genres:``.

Item embeddings (the frozen history encoder, spec §1.2 / §1.5): :func:`item_embeddings` encodes
each item's rendered text once — ``'minilm'`` (default: the offline all-MiniLM-L6-v2 weights,
mean-pooled over real tokens, 384-d, :mod:`jaxrec.backbones.text_embed`), any BERT-family
checkpoint directory (pooled the same way) or ``'hash'`` (a hashed bag of words through a fixed
random projection: cheap, for smoke runs) — and caches ``[N, d_e]`` on disk keyed by texts + encoder.

The decoder (``config.decoder``, :func:`jaxrec.backbones.frozen_decoder.load`): pretrained here on
the item texts (cached), or a Hugging Face Llama / Mistral / Gemma directory
(``config.decoder.checkpoint``) read with its own tokenizer; its weights are kept as
``config.decoder.frozen_dtype``. Every special id comes from that tokenizer: the prompt starts
with its bos, targets end with its eos, padding uses its pad (its eos when it has none, e.g.
Llama 3; padded slots are masked).

``extras``: ``decoder`` (:class:`jaxrec.backbones.decoder_lm.DecoderLM`), ``tokenizer``,
``genre_names``, ``item_emb [N, d_e]``, ``eos_id`` (the tokenizer's), ``prompt_tokens``
(mean real prompt length per split, what the decoder reads besides soft tokens).
"""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Optional, Sequence

import numpy as np

from jaxrec import storage
from jaxrec.backbones import decoder_lm, frozen_decoder, text_embed
from jaxrec.data import tasks

PROMPT = "genres:"
SEP = ";"
STRATEGIES = ("recent", "random")
__all__ = ["sample_history", "render_history", "genre_vocabulary", "user_examples", "item_embeddings",
           "persoma_task", "PROMPT", "STRATEGIES"]


# ------------------------------------------------------------------------------ sampling
def sample_history(length: int, strategy: str, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """First-stage sampling (spec §1.2): which ``n`` of ``length`` time-ordered items enter the history.

    Args:
      length: number of available items ``L`` (indices ``0..L-1``, oldest first).
      strategy: ``'recent'`` (the last ``n``) or ``'random'`` (``n`` uniformly without replacement).
      n: history size; all ``L`` items when ``L <= n``.
      rng: numpy generator for ``'random'``.

    Returns:
      ``[min(n, L)]`` int64 indices in increasing (time) order.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"config.data.sampling must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if n <= 0:
        raise ValueError(f"config.data.history_len must be > 0, got {n}")
    if length <= n:
        return np.arange(length)
    if strategy == "recent":
        return np.arange(length - n, length)
    if rng is None:
        raise ValueError("sample_history: strategy 'random' needs an rng")
    return np.sort(rng.choice(length, n, replace=False))


def render_interaction(item_text: str, rating: float = 0) -> str:
    """One history interaction as text (UEM's rendering minus the description, spec §1.1/§1.5)."""
    return f"{item_text} | rated {int(rating)}" if rating else item_text


def render_history(tokenizer, item_texts: Sequence[str], items: Sequence[int], ratings: Sequence[float],
                   budget: int) -> list:
    """Token ids of the text-prompting history: the **most recent** interactions whose rendering
    fits in ``budget`` tokens, oldest of them first, each followed by ``;``.

    Returns:
      ``[<= budget]`` ids (empty when not even the last item fits).
    """
    sep = tokenizer.encode(SEP)
    out: list = []
    for i, r in zip(reversed(list(items)), reversed(list(ratings))):
        piece = tokenizer.encode(render_interaction(item_texts[int(i)], r)) + sep
        if len(out) + len(piece) > budget:
            break
        out = piece + out
    return out


# ------------------------------------------------------------------------------- targets
def genre_vocabulary(items) -> list:
    """Sorted lower-cased genre names of an :class:`ItemInfo` (the target label space)."""
    if items.genres is None:
        raise ValueError("data kind 'persoma' needs item genres (dataset items.genres is None)")
    names = sorted({str(g).lower() for gs in items.genres for g in gs})
    if not names:
        raise ValueError("data kind 'persoma': no item has a genre")
    return names


def target_genres(future: Sequence[int], ratings: Optional[Sequence[float]], item_genres: np.ndarray,
                  min_rating: float, rule: str, top: int) -> np.ndarray:
    """``[G]`` int8 multi-hot target of the future items (module docstring, step 3)."""
    future = np.asarray(future)
    keep = future
    if ratings is not None:
        liked = future[np.asarray(ratings) >= min_rating]
        keep = liked if len(liked) else future
    counts = item_genres[keep].sum(0)
    out = np.zeros(item_genres.shape[1], np.int8)
    if rule == "all":
        out[counts > 0] = 1
    elif rule == "top":
        order = np.lexsort((np.arange(len(counts)), -counts))       # count desc, id asc
        chosen = [g for g in order[:top] if counts[g] > 0]
        out[chosen] = 1
    else:
        raise ValueError(f"config.data.target_rule must be 'top' or 'all', got {rule!r}")
    return out


def user_examples(sessions, item_genres: np.ndarray, *, cuts: int, target_items: int, min_history: int,
                  min_rating: float, rule: str, top: int) -> list:
    """``[(user_row, cut, target multi-hot [G])]`` over the users of one split (docstring steps 2–4)."""
    out = []
    rating = sessions.rating
    for u in range(sessions.num_sessions):
        a, b = int(sessions.offsets[u]), int(sessions.offsets[u + 1])
        length = b - a
        for j in range(cuts):
            cut = length - target_items * (j + 1)
            if cut < min_history:
                break
            fut = sessions.items[a + cut:a + cut + target_items]
            r = None if rating is None else rating[a + cut:a + cut + target_items]
            out.append((u, cut, target_genres(fut, r, item_genres, min_rating, rule, top)))
    return out


# ------------------------------------------------------------------------ item embeddings
def _hash_embed(texts: Sequence[str], dim: int, seed: int = 0) -> np.ndarray:
    """Hashed bag of words (2**14 buckets, counts) through a fixed Gaussian projection, L2-normalised."""
    buckets = 1 << 14
    proj = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(dim), (buckets, dim)).astype(np.float32)
    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace(",", " ").replace("|", " ").split():
            h = int.from_bytes(hashlib.md5(w.encode()).digest()[:4], "little") % buckets
            out[i] += proj[h]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def item_embeddings(texts: Sequence[str], encoder: str = "minilm", *, dim: int = 64, max_len: int = 32,
                    cache_dir: str = "") -> np.ndarray:
    """``[N, d_e]`` frozen embeddings of the item texts, computed once and cached on disk.

    Args:
      encoder: ``'minilm'`` (the offline all-MiniLM-L6-v2, d_e = 384), a BERT-family Hugging
        Face directory (mean-pooled the same way, :func:`jaxrec.backbones.text_embed.mean_pooled`;
        d_e = its width) or ``'hash'`` (d_e = ``dim``).
      max_len: encoder tokens per text.
      cache_dir: '' = ``$JAXREC_DATA_DIR/persoma_emb``.
    """
    if encoder not in ("minilm", "hash") and not os.path.isdir(encoder):
        raise ValueError(f"config.data.encoder must be 'minilm', 'hash' or a text-encoder checkpoint "
                         f"directory, got {encoder!r}")
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    h.update(f"{os.path.abspath(encoder) if os.path.isdir(encoder) else encoder}|{dim}|{max_len}".encode())
    cache_dir = storage.cache_dir("persoma_emb", cache_dir)
    name = encoder if encoder in ("minilm", "hash") else "encoder"
    path = os.path.join(cache_dir, f"{name}-{h.hexdigest()[:16]}.npy")
    if os.path.exists(path):
        return np.load(path)
    print(f"persoma: encoding {len(texts)} item texts with {encoder} -> {path}", file=sys.stderr, flush=True)
    if encoder == "hash":
        emb = _hash_embed(texts, dim)
    else:
        emb = text_embed.mean_pooled(texts, text_embed.minilm_dir() if encoder == "minilm" else encoder, max_len)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb


# ------------------------------------------------------------------------------ the task
def _multi_hot(items, names: list, n_items: int) -> np.ndarray:
    index = {g: i for i, g in enumerate(names)}
    out = np.zeros((n_items, len(names)), np.int8)
    for i in range(n_items):
        for g in items.genres[i]:
            out[i, index[str(g).lower()]] = 1
    return out


def target_text(row: np.ndarray, names: Sequence[str]) -> str:
    """``[G]`` multi-hot -> ``"g1, g2"`` (genre-name order)."""
    return ", ".join(names[g] for g in np.nonzero(row)[0])


def _arrays(sessions, examples, config, dec, texts, names, rng) -> dict:
    d = config.data
    n = int(d.history_len)
    tok = dec.tokenizer
    mode = str(d.prompt_mode)
    p_len = int(d.context_tokens) + len(tok.encode(PROMPT)) + 1 if mode == "text" else len(tok.encode(PROMPT)) + 1
    t_len = int(d.target_tokens)
    e = len(examples)
    sp = frozen_decoder.special_ids(tok, str(dec.info.get("source", "")))
    out = {"hist": np.zeros((e, n), np.int32), "hist_mask": np.zeros((e, n), np.int32),
           "hist_rating": np.zeros((e, n), np.int32), "prompt_ids": np.full((e, p_len), sp.pad, np.int32),
           "prompt_mask": np.zeros((e, p_len), np.int32), "num_history": np.zeros(e, np.int32),
           "target_genres": np.zeros((e, len(names)), np.int8)}
    targets = []
    for k, (u, cut, tg) in enumerate(examples):
        a = int(sessions.offsets[u])
        idx = sample_history(cut, str(d.sampling), n, rng)
        items = sessions.items[a:a + cut][idx]
        ratings = (np.zeros(len(idx)) if sessions.rating is None else sessions.rating[a:a + cut][idx])
        m = len(idx)
        out["hist"][k, :m], out["hist_mask"][k, :m] = items, 1
        out["hist_rating"][k, :m] = np.rint(ratings).astype(np.int32)
        out["num_history"][k] = cut
        out["target_genres"][k] = tg
        prompt = [sp.bos]
        if mode == "text":
            prompt += render_history(tok, texts, items, ratings, int(d.context_tokens))
        elif mode != "soft":
            raise ValueError(f"config.data.prompt_mode must be 'soft' or 'text', got {mode!r}")
        prompt += tok.encode(PROMPT)
        out["prompt_ids"][k, p_len - len(prompt):] = prompt
        out["prompt_mask"][k, p_len - len(prompt):] = 1
        targets.append(target_text(tg, names))
    out["target_ids"], out["target_mask"] = dec.encode_batch(targets, t_len, bos=False, eos=True)
    return out


def corpus(texts: Sequence[str], genre_names: Sequence[str]) -> list:
    """The decoder's pretraining corpus: the item texts plus templates, so that the prompt, the
    separator, the rating words and every genre both before a comma and last in a list are in
    the tokenizer's vocabulary (a target must never contain ``<unk>``)."""
    return list(texts) + [f"{PROMPT} {SEP} " + " ".join(f"rated {r}" for r in range(1, 6)),
                          f"{PROMPT} " + ", ".join(genre_names), " ".join(genre_names)]


@tasks.register("persoma")
def persoma_task(dataset, config) -> tasks.TaskParts:
    """Data kind ``'persoma'`` (module docstring); ``config.decoder`` is the decoder section
    (:func:`jaxrec.backbones.decoder_lm.default_section`)."""
    d = config.data
    names = genre_vocabulary(dataset.items)
    n_items = dataset.num_items
    texts = decoder_lm.item_texts(dataset.items, n_items)
    item_genres = _multi_hot(dataset.items, names, n_items)
    dec = frozen_decoder.load(config.decoder, corpus(texts, names))
    emb = item_embeddings(texts, str(d.encoder), dim=int(d.hash_dim), max_len=int(d.encoder_max_len),
                          cache_dir=str(d.get("emb_cache_dir", "")))
    rng = np.random.default_rng(int(d.data_seed))
    kw = dict(target_items=int(d.target_items), min_history=int(d.min_history),
              min_rating=float(d.min_rating), rule=str(d.target_rule), top=int(d.target_top))
    arrays = {}
    for split in ("train", "validation", "test"):
        s = dataset.splits[split]
        ex = user_examples(s, item_genres, cuts=int(d.train_cuts) if split == "train" else 1, **kw)
        max_users = int(d.get(f"max_{split}_examples", 0) or 0)
        if max_users:
            ex = ex[:max_users]
        if not ex:
            raise ValueError(f"data kind 'persoma': split {split!r} has no user with at least "
                             f"min_history={kw['min_history']} + target_items={kw['target_items']} interactions")
        arrays[split] = _arrays(s, ex, config, dec, texts, names, rng)
    evals = {}
    for split in ("validation", "test"):
        a = arrays[split]
        evals[split] = tasks.EvalSet(dict(a, target=np.zeros(len(a["hist"]), np.int32)), "genres", ("all",))
    extras = {"decoder": dec, "tokenizer": dec.tokenizer, "genre_names": names, "item_emb": emb,
              "eos_id": frozen_decoder.special_ids(dec.tokenizer).eos, "item_genres": item_genres,
              "prompt_tokens": {k: float(v["prompt_mask"].sum(1).mean()) for k, v in arrays.items()}}
    return tasks.TaskParts(train=arrays["train"], validation=evals["validation"], test=evals["test"],
                           extras=extras)
