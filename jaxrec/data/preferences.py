"""Preference pairs for reward models: OASST1 / HelpSteer2 readers, a synthetic generator,
tokenisation with word alignment, and the eye-tracking (ET) feature pipeline.

Paper: Lopez-Cardona, Segura, Karatzoglou, Abadal, Arapakis, "Seeing Eye to AI: Human
Alignment via Gaze-Based Response Rewards for Large Language Models", ICLR 2025,
arXiv 2410.01532 (spec ``llm.md`` §2.1 predictors and token remapping, §2.3 data, §2.6 the
CPU reproduction).

Pieces:

* :func:`read_oasst1`, :func:`read_helpsteer2`: local JSONL copies -> :class:`Pairs`
  (chosen/rejected per spec §2.3: OASST1 chosen = rank 0, rejected = the worst-ranked reply,
  ties dropped; HelpSteer2 chosen = most helpful, rejected = second most helpful, ties
  dropped). Malformed rows raise :class:`PreferenceDataError` naming file, line and field.
* :func:`synthetic_pairs`: a seeded generator whose rejected answers use rarer (and so longer
  to read) words and are more often cut short, so the reading-time proxy carries signal.
* :class:`PieceTokenizer`: a tiny sub-word tokenizer (each whitespace word cut into pieces of at
  most ``piece`` characters) that records which word every token belongs to. Two of them
  with different piece sizes stand for the ET predictor's tokenizer (T5/RoBERTa in the paper)
  and the LLM's.
* :class:`TextTokenizer`: a Hugging Face fast tokenizer (a pretrained LLM's, or an ET
  predictor's) with the same word alignment, through character offsets.
* :func:`proxy_features`: the offline ET predictor of §2.6 — nFix, FFD, GPT, TRT, fixProp per
  word from word length, ``wordfreq`` Zipf frequency, relative position and punctuation.
* :func:`remap_sum_split` / :func:`remap_first`: moving features between tokenizations
  (§2.1: ET1 path sum-then-split, ET2 path first sub-token).
* :class:`FeatureCache`: features keyed by a hash of the token ids (§2.1).
* :func:`encode_pairs`: everything a reward-model batch needs, as numpy arrays.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Callable, Sequence

import numpy as np

from jaxrec.backbones.tokenizers import ET_FEATURES as FEATURES, TextTokenizer  # noqa: E402,F401
# Feature combinations of the paper (spec §2.1), as masks over FEATURES.
FCOMBS = {"fcomb1": (0, 0, 0, 1, 0), "fcomb2.1": (0, 0, 0, 1, 0), "fcomb2.2": (0, 1, 0, 1, 0),
          "fcomb2.5": (1, 1, 1, 1, 1)}
PAD, BOS, EOS, EYE_OPEN, EYE_CLOSE, UNK = 0, 1, 2, 3, 4, 5
SPECIALS = ("<pad>", "<s>", "</s>", "<eye/>", "</eye>", "<unk>")
USER, ASSISTANT = "user:", "assistant:"   # role markers of the plain chat template
_PUNCT = re.compile(r"[.,;:!?]$")


class PreferenceDataError(ValueError):
    """A malformed preference file: the message names the file, the line and the field."""


@dataclasses.dataclass
class Pairs:
    """Preference pairs: ``prompt[i]`` with ``chosen[i]`` preferred over ``rejected[i]``."""

    prompt: list
    chosen: list
    rejected: list

    def __len__(self) -> int:
        return len(self.prompt)

    def take(self, idx) -> "Pairs":
        return Pairs([self.prompt[i] for i in idx], [self.chosen[i] for i in idx],
                     [self.rejected[i] for i in idx])


# ------------------------------------------------------------------------------ readers
def _jsonl(path: str):
    """Yields ``(line_number, dict)`` for every non-empty line; errors name file and line."""
    if not os.path.exists(path):
        raise PreferenceDataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreferenceDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PreferenceDataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def _field(path, n, row, name, types, allow_none=False):
    if name not in row:
        raise PreferenceDataError(f"{path}:{n}: missing field {name!r}")
    v = row[name]
    if v is None and allow_none:
        return None
    if not isinstance(v, types) or isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise PreferenceDataError(f"{path}:{n}: field {name!r} must be {want}, got {v!r}")
    return v


def read_oasst1(path: str, lang: str = "en") -> Pairs:
    """OASST1 message rows (one JSON object a line, the HF ``oasst1`` columns) -> pairs.

    Keeps ``lang`` non-deleted messages; each prompter message pairs its assistant replies
    that carry a ``rank``: chosen = rank 0 (the best, spec §2.3: the reference code takes the
    other end, which flips labels consistently), rejected = the largest rank; prompts whose
    extremes tie (one ranked reply, or equal ranks) are dropped.

    Fields read: ``message_id, parent_id, role ('prompter'|'assistant'), text, lang, deleted,
    rank (int or null)``.
    """
    msgs, replies = {}, collections.defaultdict(list)
    for n, row in _jsonl(path):
        mid = _field(path, n, row, "message_id", str)
        parent = _field(path, n, row, "parent_id", str, allow_none=True)
        role = _field(path, n, row, "role", str)
        if role not in ("prompter", "assistant"):
            raise PreferenceDataError(f"{path}:{n}: field 'role' must be 'prompter' or 'assistant', got {role!r}")
        text = _field(path, n, row, "text", str)
        lg = _field(path, n, row, "lang", str)
        deleted = bool(row.get("deleted", False))
        rank = _field(path, n, row, "rank", (int, float), allow_none=True) if "rank" in row else None
        if deleted or lg != lang:
            continue
        msgs[mid] = (role, text)
        if role == "assistant" and parent is not None and rank is not None:
            replies[parent].append((int(rank), text))
    out = Pairs([], [], [])
    for parent, rs in replies.items():
        if parent not in msgs or msgs[parent][0] != "prompter" or len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r[0])
        if rs[0][0] == rs[-1][0]:
            continue   # tie
        out.prompt.append(msgs[parent][1])
        out.chosen.append(rs[0][1])
        out.rejected.append(rs[-1][1])
    return out


def read_helpsteer2(path: str) -> Pairs:
    """HelpSteer2 rows (``prompt, response, helpfulness`` per line) -> pairs.

    Per prompt: chosen = the most helpful response, rejected = the second most helpful; a tie
    between those two (or a single response) drops the prompt (spec §2.3).
    """
    groups = collections.defaultdict(list)
    for n, row in _jsonl(path):
        prompt = _field(path, n, row, "prompt", str)
        response = _field(path, n, row, "response", str)
        helpful = _field(path, n, row, "helpfulness", (int, float))
        groups[prompt].append((float(helpful), n, response))
    out = Pairs([], [], [])
    for prompt, rs in groups.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: (-r[0], r[1]))
        if rs[0][0] == rs[1][0]:
            continue
        out.prompt.append(prompt)
        out.chosen.append(rs[0][2])
        out.rejected.append(rs[1][2])
    return out


READERS = {"oasst1": read_oasst1, "helpsteer2": read_helpsteer2}


def read_splits(name: str, data_dir: str, val_fraction: float = 0.15, seed: int = 42) -> dict:
    """``{train, validation, test}`` pairs from ``data_dir/{train,validation}.jsonl``.

    The dataset's own validation file is the **test** split; ``val_fraction`` of train
    (shuffled with ``seed``, spec §2.3: 15 %, seed 42) becomes the validation split.
    """
    if name not in READERS:
        raise ValueError(f"unknown preference dataset {name!r}; known: {sorted(READERS)}")
    read = READERS[name]
    train = read(os.path.join(data_dir, "train.jsonl"))
    test = read(os.path.join(data_dir, "validation.jsonl"))
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = int(round(val_fraction * len(train)))
    return {"train": train.take(perm[n_val:]), "validation": train.take(perm[:n_val]), "test": test}


# ------------------------------------------------------------------------ word frequency
try:  # the offline frequency lists of the wordfreq package (spec §2.6)
    import wordfreq as _wordfreq
except ImportError:  # pragma: no cover - exercised only without the package
    _wordfreq = None


def zipf(word: str) -> float:
    """Zipf frequency (log10 per billion words, 0..8) of a word, punctuation stripped.

    With ``wordfreq`` installed: its English lists. Without it (documented fallback): a
    length-based estimate ``max(0, 7.5 - 0.55 * len)``, since frequency and length correlate.
    """
    w = re.sub(r"[^\w']", "", word.lower())
    if not w:
        return 7.0
    if _wordfreq is not None:
        return float(_wordfreq.zipf_frequency(w, "en"))
    return max(0.0, 7.5 - 0.55 * len(w))


def word_list(n: int) -> list:
    """The ``n`` most frequent alphabetic English words (``wordfreq``), or pseudo-words.

    The fallback builds deterministic pseudo-words whose length grows with rank, so that
    :func:`zipf`'s fallback still ranks them in order.
    """
    if _wordfreq is not None:
        out = [w for w in _wordfreq.top_n_list("en", int(n * 1.6)) if w.isalpha() and len(w) > 1]
        return out[:n]
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    return ["".join(rng.choice(letters, 2 + int(3 * math.log10(2 + i)))) for i in range(n)]


# ----------------------------------------------------------------------- synthetic pairs
def synthetic_pairs(n: int, seed: int = 0, *, common: int = 2000, rare: tuple = (8000, 25000),
                    rare_chosen: float = 0.1, rare_rejected: float = 0.4, truncate_rejected: float = 0.3,
                    words: tuple = (6, 12)) -> Pairs:
    """Seeded preference pairs in which the reading-time proxy carries signal.

    Prompts are 4-7 common words ending in ``?``. An answer has ``words`` words drawn from the
    ``common`` most frequent English words, each replaced by a rare word (frequency rank in
    ``rare``) with probability ``rare_chosen`` (chosen) or ``rare_rejected`` (rejected), and ends
    with ``.``; a rejected answer is cut short (half its words, no final stop) with probability
    ``truncate_rejected``. Rare words are long and infrequent, so their proxy reading times are
    high: frequency is knowledge the ET predictor brings (wordfreq) and that a small reward
    model could only learn word by word from the pairs [inferred: spec §2.6 only asks that the
    features carry signal].

    Returns:
      :class:`Pairs` of ``n`` pairs (chosen and rejected share the prompt).
    """
    vocab = word_list(rare[1])
    common_w, rare_w = vocab[:common], vocab[rare[0]:rare[1]]
    rng = np.random.default_rng(seed)
    out = Pairs([], [], [])

    def answer(p_rare, cut):
        k = int(rng.integers(words[0], words[1] + 1))
        ws = [rare_w[rng.integers(len(rare_w))] if rng.random() < p_rare else common_w[rng.integers(len(common_w))]
              for _ in range(k)]
        if cut:
            return " ".join(ws[: max(2, k // 2)])
        return " ".join(ws) + "."

    for _ in range(n):
        q = [common_w[rng.integers(len(common_w))] for _ in range(int(rng.integers(4, 8)))]
        out.prompt.append(" ".join(q) + "?")
        out.chosen.append(answer(rare_chosen, False))
        out.rejected.append(answer(rare_rejected, rng.random() < truncate_rejected))
    return out


# ----------------------------------------------------------------------------- tokenizer
# The tokenizer lives with the decoders (it is saved as a standard tokenizer.json with them);
# re-exported here, where the reward-model data pipeline has always imported it from.
from jaxrec.backbones.tokenizers import PieceTokenizer  # noqa: E402


def special_ids(tok) -> tuple:
    """``(bos or None, eos or None, fill)`` of a tokenizer: the ids that open and close a
    sequence and the one written at padded positions (:class:`PieceTokenizer`: its
    :data:`BOS`, :data:`EOS`, :data:`PAD`)."""
    fill = tok.fill_id if hasattr(tok, "fill_id") else tok.pad_id
    return tok.bos_id, tok.eos_id, fill


# -------------------------------------------------------------------------- ET proxy
# Linear reading-time model per word [inferred: the classic predictors of spec §2.6 — length,
# frequency, position, punctuation — with weights chosen to give E-Z-Reader-like magnitudes in
# units of 100 ms]. A config may pass its own.
PROXY_WEIGHTS = dict(ffd_base=1.9, ffd_len=0.08, ffd_freq=-0.10, nfix_base=1.0, nfix_len=0.12,
                     nfix_freq=-0.15, trt_punct=0.4, trt_pos=-0.2, gpt_punct=0.8, prop_len=0.35,
                     prop_freq=-0.6, prop_bias=0.5)


def proxy_features(words: Sequence[str], weights: dict | None = None) -> np.ndarray:
    """The offline ET predictor: ``[n_words, 5]`` (nFix, FFD, GPT, TRT, fixProp) per word.

    With L = letters, f = Zipf frequency (:func:`zipf`), p = relative position in [0, 1] and
    c = 1 when the word ends in punctuation:
    FFD = a + b L + c (f - 4); nFix = max(0.2, ...); TRT = FFD * nFix + punct/position terms;
    GPT = TRT + regressions at punctuation; fixProp = sigmoid(...). See :data:`PROXY_WEIGHTS`.
    """
    w = dict(PROXY_WEIGHTS, **(weights or {}))
    n = len(words)
    out = np.zeros((n, 5), np.float32)
    for i, word in enumerate(words):
        L = len(re.sub(r"[^\w]", "", word))
        f = zipf(word) - 4.0
        p = i / max(n - 1, 1)
        c = 1.0 if _PUNCT.search(word) else 0.0
        ffd = w["ffd_base"] + w["ffd_len"] * L + w["ffd_freq"] * f
        nfix = max(0.2, w["nfix_base"] + w["nfix_len"] * L + w["nfix_freq"] * f)
        trt = ffd * nfix + w["trt_punct"] * c + w["trt_pos"] * p
        gpt = trt + w["gpt_punct"] * c
        prop = 1.0 / (1.0 + math.exp(-(w["prop_len"] * (L - 4) + w["prop_freq"] * f + w["prop_bias"])))
        out[i] = (nfix, ffd, gpt, trt, prop)
    return out


def words_to_tokens(word_values: np.ndarray, word_ids: Sequence[int]) -> np.ndarray:
    """Per-word values ``[n_words, F]`` -> per-token ``[T, F]``, each word's value split equally
    over its tokens (so the tokens of a word sum to the word's value); ``word_ids < 0`` get 0."""
    wid = np.asarray(word_ids)
    out = np.zeros((len(wid), word_values.shape[-1]), np.float32)
    ok = wid >= 0
    counts = np.bincount(wid[ok], minlength=len(word_values))
    out[ok] = word_values[wid[ok]] / counts[wid[ok], None]
    return out


# ----------------------------------------------------------------------- remapping
def remap_sum_split(src: np.ndarray, src_words: Sequence[int], tgt_words: Sequence[int]) -> np.ndarray:
    """ET1 path (spec §2.1, eyetrackpy / the paper's Table 8): per word, **sum** the values on
    its source tokens and **split the sum equally** over its target tokens.

    Args:
      src: ``[S, F]`` values on the source tokens.
      src_words, tgt_words: ``[S]`` / ``[T]`` word index of every token (``< 0``: no word,
        e.g. specials and role markers, which get 0).

    Returns:
      ``[T, F]``; for every word, the sum over its target tokens equals the sum over its source
      tokens (words absent from the target side are dropped).
    """
    sw, tw = np.asarray(src_words), np.asarray(tgt_words)
    n = int(max(sw.max(initial=-1), tw.max(initial=-1))) + 1
    sums = np.zeros((n, src.shape[-1]), np.float64)
    ok = sw >= 0
    np.add.at(sums, sw[ok], src[ok])
    out = np.zeros((len(tw), src.shape[-1]), np.float32)
    okt = tw >= 0
    counts = np.bincount(tw[okt], minlength=n)
    out[okt] = sums[tw[okt]] / counts[tw[okt], None]
    return out


def remap_first(src: np.ndarray, src_words: Sequence[int], tgt_words: Sequence[int]) -> np.ndarray:
    """ET2 path (spec §2.1): each word's value is its **first** source token's value, placed on
    its first target token; the word's other target tokens get 0. ``[S, F] -> [T, F]``."""
    sw, tw = np.asarray(src_words), np.asarray(tgt_words)
    n = int(max(sw.max(initial=-1), tw.max(initial=-1))) + 1
    first = np.zeros((n, src.shape[-1]), np.float32)
    seen = np.zeros(n, bool)
    for i, w in enumerate(sw):
        if w >= 0 and not seen[w]:
            first[w], seen[w] = src[i], True
    out = np.zeros((len(tw), src.shape[-1]), np.float32)
    placed = np.zeros(n, bool)
    for j, w in enumerate(tw):
        if w >= 0 and not placed[w]:
            out[j], placed[w] = first[w], True
    return out


REMAPS = {"sum_split": remap_sum_split, "first": remap_first}


class FeatureCache:
    """ET features keyed by a hash of the token ids (spec §2.1: predictors are frozen, so each
    text is predicted once). ``hits`` / ``misses`` count lookups."""

    def __init__(self):
        self._store, self.hits, self.misses = {}, 0, 0

    @staticmethod
    def key(ids: Sequence[int]) -> str:
        return hashlib.sha1(np.asarray(ids, np.int64).tobytes()).hexdigest()

    def get(self, ids: Sequence[int], compute: Callable[[], np.ndarray]) -> np.ndarray:
        k = self.key(ids)
        if k in self._store:
            self.hits += 1
        else:
            self.misses += 1
            self._store[k] = np.asarray(compute())
        return self._store[k]

    def __len__(self) -> int:
        return len(self._store)


# ------------------------------------------------------------------------- encoding
def _pad(rows, length, value=0, dtype=np.int32, tail=()):
    out = np.full((len(rows), length) + tuple(tail), value, dtype)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype)[:length]
        out[i, :len(r)] = r
    return out


def encode_pairs(pairs: Pairs, llm_tok, et_tok, *, max_len: int,
                 max_et_len: int, predictor: Callable[[list, list, list], np.ndarray] | None = None,
                 remap: str = "sum_split", cache: FeatureCache | None = None) -> dict:
    """Token ids, masks and gaze features of both sides of every pair (right-padded).

    ``llm_tok`` / ``et_tok``: word-aligned tokenizers (:class:`PieceTokenizer` or
    :class:`TextTokenizer`). The LLM input is ``<bos> user: <prompt> assistant: <response> <eos>``
    with the tokenizer's own special ids (a missing bos / eos is left out), encoded as one text
    so a BPE sees its spaces; the role markers are word-less tokens (word index -1). The
    predictor reads prompt + response words only (spec §2.1: role markers stripped).
    ``predictor(words, et_ids, et_word_ids) -> [M, 5]`` returns features on the ET tokens;
    default: :func:`proxy_features` per word split over the word's ET tokens. Too-long inputs are
    truncated (the paper truncates at 1350 tokens). Padded positions hold the tokenizer's pad id
    (its eos without one; masked out either way).

    Returns:
      for ``side`` in (``chosen``, ``rejected``): ``{side}_ids [N, T]``, ``{side}_mask [N, T]``,
      ``{side}_gaze [N, T, 5]`` (remapped to LLM tokens, for GazeAdd),
      ``{side}_et [N, M, 5]``, ``{side}_et_mask [N, M]`` (ET-token space, for GazeConcat).
    """
    if remap not in REMAPS:
        raise ValueError(f"remap must be one of {sorted(REMAPS)}, got {remap!r}")
    cache = cache if cache is not None else FeatureCache()
    if predictor is None:
        def predictor(words, et_ids, et_wid):
            return words_to_tokens(proxy_features(words), et_wid)
    bos, eos, fill = special_ids(llm_tok)
    head, tail = [] if bos is None else [int(bos)], [] if eos is None else [int(eos)]
    out = {}
    for side, responses in (("chosen", pairs.chosen), ("rejected", pairs.rejected)):
        ids_rows, gaze_rows, et_rows = [], [], []
        for prompt, resp in zip(pairs.prompt, responses):
            pw, rw = prompt.split(), resp.split()
            words = pw + rw
            # Word k of [USER] + pw + [ASSISTANT] + rw is feature word renum[k] (-1: a marker).
            renum = np.array([-1] + list(range(len(pw))) + [-1] + list(range(len(pw), len(words))))
            body, bwid = llm_tok.encode_words([USER] + pw + [ASSISTANT] + rw)
            ids = head + list(body) + tail
            wid = [-1] * len(head) + [int(renum[w]) if w >= 0 else -1 for w in bwid] + [-1] * len(tail)
            ids, wid = ids[:max_len], wid[:max_len]
            et_ids, et_wid = et_tok.encode_words(words)
            et_ids, et_wid = et_ids[:max_et_len], et_wid[:max_et_len]
            feats = cache.get(et_ids, lambda: predictor(words, et_ids, et_wid))
            ids_rows.append(ids)
            et_rows.append(feats)
            gaze_rows.append(REMAPS[remap](feats, et_wid, wid))
        out[f"{side}_ids"] = _pad(ids_rows, max_len, fill)
        out[f"{side}_mask"] = _pad([[1] * len(r) for r in ids_rows], max_len)
        out[f"{side}_gaze"] = _pad(gaze_rows, max_len, 0.0, np.float32, (5,))
        out[f"{side}_et"] = _pad(et_rows, max_et_len, 0.0, np.float32, (5,))
        out[f"{side}_et_mask"] = _pad([[1] * len(r) for r in et_rows], max_et_len)
    return out
