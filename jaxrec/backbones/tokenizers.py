"""Tokenizers of jaxrec's decoders, each one a ``tokenizers``-library pipeline, so that the ids
jaxrec trains on are the ids Hugging Face tools (``transformers.AutoTokenizer``,
``tokenizers.Tokenizer``) produce from the same directory.

* :class:`HFTokenizer`: any Hugging Face tokenizer directory (``tokenizer.json`` with
  ``tokenizer_config.json`` / ``special_tokens_map.json``) behind one small interface:
  ``encode`` / ``decode``, ``vocab_size``, ``pad_id`` / ``bos_id`` / ``eos_id`` / ``unk_id`` and
  word alignment (``encode_with_words`` / ``encode_words``: the whitespace word every token
  came from, which is how word-level features such as gaze are moved onto sub-tokens).
* :class:`PieceTokenizer`: the tiny corpus-built tokenizer of the offline decoders (each
  whitespace word cut into pieces of at most ``piece`` characters, vocabulary in order of first
  appearance after :data:`SPECIALS`), expressed as a ``tokenizers`` WordLevel model so it can be
  saved as a standard ``tokenizer.json``.
* :func:`from_pretrained`: a directory written by :meth:`HFTokenizer.save_pretrained` (a
  :class:`PieceTokenizer` again) or any other Hugging Face tokenizer directory.

Special ids of the jaxrec tokenizer: :data:`PAD` 0, :data:`BOS` 1, :data:`EOS` 2,
:data:`EYE_OPEN` 3, :data:`EYE_CLOSE` 4, :data:`UNK` 5. A Hugging Face tokenizer has its own;
code that may meet one reads the ``*_id`` attributes, never the constants.

Encoding never adds ``<s>`` / ``</s>``: the caller places them (``DecoderLM.encode_batch``).
The saved ``tokenizer.json`` of a :class:`PieceTokenizer` does prepend ``<s>`` when a Hugging
Face tool asks for special tokens (``AutoTokenizer(text)``), as Llama tokenizers do.
"""
from __future__ import annotations

import bisect
import json
import os
import re
from typing import Any, Optional, Sequence

import tokenizers as hf_tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

PAD, BOS, EOS, EYE_OPEN, EYE_CLOSE, UNK = 0, 1, 2, 3, 4, 5
SPECIALS = ("<pad>", "<s>", "</s>", "<eye/>", "</eye>", "<unk>")
WORD_START = "\u2581"          # "▁", SentencePiece's word-start marker
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
PIECE_CONFIG_KEY = "jaxrec_piece_tokenizer"   # in tokenizer_config.json: {"piece": n, "mark": m}
# What str.split() splits on: Unicode White_Space plus \x1c-\x1f, which Python also counts.
_WS = r"\s\x1c-\x1f"
_WORD = re.compile(r"\S+")
# transformers' clean_up_tokenization (applied when tokenizer_config.json asks for it).
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))

__all__ = ["HFTokenizer", "PieceTokenizer", "from_pretrained", "align_words", "read_json_object", "PAD", "BOS", "EOS",
           "EYE_OPEN", "EYE_CLOSE", "UNK", "SPECIALS"]


def align_words(text: str, offsets: Sequence[tuple[int, int]], special: Sequence[int] = ()) -> list:
    """The whitespace word of ``text`` each token overlaps (``text.split()`` index), or -1.

    Args:
      text: the encoded text.
      offsets: ``[T]`` ``(start, end)`` character span of every token in ``text`` (a
        ``tokenizers`` Encoding's ``offsets``).
      special: ``[T]`` 1 for special tokens (``special_tokens_mask``), which get -1.

    A token belongs to the first word its span overlaps; a span that covers only whitespace
    (e.g. a lone "▁" or "Ġ" token) or is empty gets -1. Tokens whose span includes the space
    before a word (``"▁word"``, ``"Ġword"``) belong to that word.
    """
    spans = [m.span() for m in _WORD.finditer(text)]
    ends = [e for _, e in spans]
    out = []
    for t, (s, e) in enumerate(offsets):
        j = bisect.bisect_right(ends, s)          # first word ending after the token starts
        if (t < len(special) and special[t]) or s >= e or j == len(spans) or spans[j][0] >= e:
            out.append(-1)
        else:
            out.append(j)
    return out


def _token_string(value: Any) -> Optional[str]:
    """A special-token entry of tokenizer_config.json: a string, an AddedToken dict or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with its special tokens: the interface jaxrec's decoders use.

    Attributes:
      backend: the ``tokenizers.Tokenizer`` (what ``tokenizer.json`` holds).
      source: the directory it was read from ('' when built in memory).
      clean_up_spaces: apply transformers' ``clean_up_tokenization`` after decoding (the
        ``clean_up_tokenization_spaces`` field of ``tokenizer_config.json``).
      special_tokens: ``{"bos_token": "<s>", ...}`` — the strings, as tokenizer_config.json
        spells them (absent ones omitted).

    ``pad_id`` falls back to ``eos_id`` when the tokenizer has no pad token (Llama 2 and 3 ship
    none): padded positions are masked out, so any id works there; ``has_pad`` tells the two
    cases apart. ``bos_id`` / ``unk_id`` are None when the tokenizer has no such token.
    """

    def __init__(self, backend: hf_tokenizers.Tokenizer, special_tokens: dict, *, source: str = "",
                 clean_up_spaces: bool = False):
        self.backend = backend
        self.source = source
        self.clean_up_spaces = bool(clean_up_spaces)
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        where = os.path.join(source, TOKENIZER_CONFIG_FILE) if source else "tokenizer"
        self._ids = {}
        for key, tok in self.special_tokens.items():
            if key == "additional_special_tokens":
                continue
            i = backend.token_to_id(tok)
            if i is None:
                raise ValueError(f"{where}: {key} {tok!r} is not in the vocabulary of {TOKENIZER_FILE}")
            self._ids[key] = i
        if "eos_token" not in self._ids:
            raise ValueError(f"{where}: no eos_token; jaxrec's decoders end every sequence with one")

    # ---------------------------------------------------------------- ids and vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(AutoTokenizer)``)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> dict:
        """``{token string: id}``, added tokens included."""
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self._ids["eos_token"]

    @property
    def bos_id(self) -> Optional[int]:
        return self._ids.get("bos_token")

    @property
    def unk_id(self) -> Optional[int]:
        return self._ids.get("unk_token")

    @property
    def has_pad(self) -> bool:
        return "pad_token" in self._ids

    @property
    def pad_id(self) -> int:
        """The pad token's id, or ``eos_id`` when there is none (see the class docstring)."""
        return self._ids.get("pad_token", self.eos_id)

    def id_to_token(self, i: int) -> Optional[str]:
        return self.backend.id_to_token(int(i))

    # ----------------------------------------------------------------------- encoding
    def encode(self, text: str) -> list:
        """Token ids of ``text``, without ``<s>`` / ``</s>``."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_words(self, text: str) -> tuple[list, list]:
        """``(ids, word ids)``: each token's index in ``text.split()``, -1 for none
        (:func:`align_words`)."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, align_words(text, enc.offsets, enc.special_tokens_mask)

    def encode_words(self, words: Sequence[str], first_word: int = 0) -> tuple[list, list]:
        """``(ids, word index of every token)`` of the text ``" ".join(words)``, words numbered
        from ``first_word`` (-1 stays -1).

        Raises:
          ValueError: a word is empty or holds whitespace (the numbering would shift).
        """
        for w in words:
            if w.split() != [w]:
                raise ValueError(f"encode_words: {w!r} is not one whitespace-free word")
        ids, wid = self.encode_with_words(" ".join(words))
        return ids, [w + first_word if w >= 0 else -1 for w in wid]

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        """Text of ``ids``, stopping at the first ``eos_id`` (when ``stop_at_eos``), special
        tokens and ids outside the vocabulary dropped."""
        return self._decode(self._until_eos(ids, stop_at_eos), skip_special_tokens=True)

    def _until_eos(self, ids: Sequence[int], stop_at_eos: bool) -> list:
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            out.append(i)
        return out

    def _decode(self, ids: list, skip_special_tokens: bool) -> str:
        n = self.vocab_size
        text = self.backend.decode([i for i in ids if 0 <= i < n], skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for a, b in _CLEAN_UP:
                text = text.replace(a, b)
        return text

    # ------------------------------------------------------------------ saving / loading
    def _config(self) -> dict:
        """The fields of tokenizer_config.json beyond the special tokens."""
        return {}

    def save_pretrained(self, path: str, model_max_length: Optional[int] = None) -> None:
        """Writes ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
        into the existing directory ``path`` (what ``AutoTokenizer.from_pretrained`` reads)."""
        self.backend.save(os.path.join(path, TOKENIZER_FILE))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
               "clean_up_tokenization_spaces": self.clean_up_spaces, **self.special_tokens}
        if model_max_length is not None:
            cfg["model_max_length"] = int(model_max_length)
        cfg.update(self._config())
        with open(os.path.join(path, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=1, ensure_ascii=False)
        with open(os.path.join(path, SPECIAL_TOKENS_MAP_FILE), "w", encoding="utf-8") as f:
            json.dump(self.special_tokens, f, indent=1, ensure_ascii=False)

    @classmethod
    def from_pretrained(cls, path: str) -> "HFTokenizer":
        """Any Hugging Face tokenizer directory (see :func:`from_pretrained`, which also turns a
        jaxrec :class:`PieceTokenizer` directory back into one)."""
        backend, special, cfg = _read_directory(path)
        return cls(backend, special, source=str(path), clean_up_spaces=bool(cfg.get("clean_up_tokenization_spaces")))


_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")


def read_json_object(path: str) -> dict:
    """A JSON file holding one object; ValueError naming the file (and the line) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def _read_directory(path: str) -> tuple[hf_tokenizers.Tokenizer, dict, dict]:
    """``(backend, special tokens, tokenizer_config)`` of a tokenizer directory.

    Special tokens come from ``tokenizer_config.json``; like transformers, ``special_tokens_map.json``
    overrides them only in legacy directories (a config without ``added_tokens_decoder``). A
    directory without ``tokenizer.json`` (a SentencePiece ``tokenizer.model`` only) is converted
    by ``transformers.AutoTokenizer``.
    """
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    cfg_path = os.path.join(path, TOKENIZER_CONFIG_FILE)
    cfg = read_json_object(cfg_path) if os.path.exists(cfg_path) else {}
    map_path = os.path.join(path, SPECIAL_TOKENS_MAP_FILE)
    smap = read_json_object(map_path) if os.path.exists(map_path) else {}
    tok_path = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tok_path):
        try:
            backend = hf_tokenizers.Tokenizer.from_file(tok_path)
        except Exception as e:          # the Rust library raises a bare Exception
            raise ValueError(f"{tok_path}: not a tokenizers-library tokenizer ({e})") from None
        special = {}
        for k in _SPECIAL_KEYS:
            v = cfg.get(k)
            if "added_tokens_decoder" not in cfg and smap.get(k) is not None:
                v = smap[k]
            special[k] = [_token_string(t) for t in v] if k == "additional_special_tokens" and v else _token_string(v)
        return backend, special, cfg
    try:
        from transformers import AutoTokenizer   # lazy: slow import, only for directories without tokenizer.json
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} and transformers cannot read the tokenizer ({e})") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: no {TOKENIZER_FILE} and no fast-tokenizer conversion for {type(tok).__name__}")
    special = {k: (list(getattr(tok, k)) if k == "additional_special_tokens" else getattr(tok, k))
               for k in _SPECIAL_KEYS}
    return tok.backend_tokenizer, special, dict(cfg, clean_up_tokenization_spaces=tok.clean_up_tokenization_spaces)


# ---------------------------------------------------------------------------------------------
# The corpus-built piece tokenizer
# ---------------------------------------------------------------------------------------------
class PieceTokenizer(HFTokenizer):
    """Whitespace words cut into pieces of at most ``piece`` characters, with word alignment.

    The vocabulary is :data:`SPECIALS` (ids 0-5) followed by every piece of the ``texts`` it is
    built from, in order of first appearance; unknown pieces map to ``<unk>`` one by one.

    ``mark``:
      * ``""``: pieces are bare strings, so a piece of one word and an equal piece inside another
        share an id; :meth:`decode` writes every piece as a word.
      * ``"▁"`` (or the former ``"##"``): the first piece of every word carries the word-start
        marker ``"▁"`` (``"GoldenEye"`` -> ``"▁Gold" "enEy" "e"``, the SentencePiece
        convention), so :meth:`decode` restores the words exactly (what generation needs).
        Earlier versions marked the continuation pieces with ``"##"`` instead; the ids are the
        same, except that a word which itself began with ``"##"`` no longer shares its id with
        a continuation piece (it used to, and its decoding glued it to the previous word).

    The pipeline (``backend``, a ``tokenizers`` WordLevel model): whitespace runs -> one word
    boundary; the text cut into pieces by a regex; ``<unk>`` for unknown pieces; the special
    strings of :data:`SPECIALS` are added special tokens, so a text containing ``"<s>"`` reads it
    as ``<s>`` (as every Hugging Face tokenizer does). With ``mark`` the decoder is the
    SentencePiece (Metaspace) decoder; without, pieces are joined by spaces. A text containing
    ``"▁"`` itself (U+2581) is cut at it when ``mark`` is set.
    """

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK
    has_pad = True

    def __init__(self, texts: Sequence[str], piece: int, mark: str = ""):
        if int(piece) <= 0:
            raise ValueError(f"piece must be > 0, got {piece}")
        if mark not in ("", WORD_START, "##"):
            raise ValueError(f"mark must be '' or {WORD_START!r} (or the former '##'), got {mark!r}")
        self.piece = int(piece)
        self.mark = WORD_START if mark else ""
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        for t in texts:
            for w in t.split():
                for p in self.pieces(w):
                    vocab.setdefault(p, len(vocab))
        super().__init__(self._build(vocab), dict(zip(("pad_token", "bos_token", "eos_token"), SPECIALS[:3]),
                                                  unk_token=SPECIALS[UNK],
                                                  additional_special_tokens=[SPECIALS[EYE_OPEN], SPECIALS[EYE_CLOSE]]))

    def pieces(self, word: str) -> list:
        """The vocabulary strings of one whitespace-free ``word``."""
        out = [word[i:i + self.piece] for i in range(0, len(word), self.piece)]
        return [self.mark + p for p in out[:1]] + out[1:]

    def _build(self, vocab: dict) -> hf_tokenizers.Tokenizer:
        tk = hf_tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[UNK]))
        n = self.piece
        if self.mark:
            m = self.mark
            tk.normalizer = normalizers.Sequence([
                normalizers.Replace(Regex(f"[{_WS}]+"), " "), normalizers.Strip(),
                normalizers.Prepend(m), normalizers.Replace(" ", m)])
            # "▁" + up to n characters opens a word; up to n more characters continue it.
            tk.pre_tokenizer = pre_tokenizers.Split(Regex(f"{m}[^{m}]{{1,{n}}}|[^{m}]{{1,{n}}}"), "isolated")
            tk.decoder = decoders.Metaspace(replacement=m, prepend_scheme="always", split=True)
        else:
            tk.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(f"[{_WS}]+"), "removed"),
                pre_tokenizers.Split(Regex(f"[^{_WS}]{{1,{n}}}"), "isolated")])
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
        # Hugging Face tools asking for special tokens get "<s> text", as from a Llama tokenizer.
        tk.post_processor = processors.TemplateProcessing(
            single=f"{SPECIALS[BOS]} $A", pair=f"{SPECIALS[BOS]} $A $B", special_tokens=[(SPECIALS[BOS], BOS)])
        return tk

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        """Text of ``ids``: stops at the first ``</s>`` (when ``stop_at_eos``); the specials but
        ``<unk>`` are dropped and ids outside the vocabulary read as ``<unk>``."""
        ids = [UNK if i >= self.vocab_size or i < 0 else i for i in self._until_eos(ids, stop_at_eos)]
        return self._decode([i for i in ids if i >= len(SPECIALS) or i == UNK], skip_special_tokens=False)

    def _config(self) -> dict:
        return {PIECE_CONFIG_KEY: {"piece": self.piece, "mark": self.mark}}

    @classmethod
    def from_vocab(cls, vocab: Sequence[str], piece: int, mark: str = "", where: str = "tokenizer") -> "PieceTokenizer":
        """A tokenizer with the vocabulary ``vocab`` (strings in id order, :data:`SPECIALS` first)."""
        vocab = list(vocab)
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"{where}: the vocabulary must start with {SPECIALS}, got {vocab[:len(SPECIALS)]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError(f"{where}: the vocabulary repeats a piece")
        tok = cls([], piece, mark)
        tok.backend = tok._build({p: i for i, p in enumerate(vocab)})
        return tok

    @classmethod
    def from_pretrained(cls, path: str) -> "PieceTokenizer":
        """A directory written by :meth:`save_pretrained` (its ``tokenizer_config.json`` names
        ``piece`` and ``mark``; the vocabulary comes from ``tokenizer.json``)."""
        tok = from_pretrained(path)
        if not isinstance(tok, PieceTokenizer):
            raise ValueError(f"{os.path.join(str(path), TOKENIZER_CONFIG_FILE)}: no {PIECE_CONFIG_KEY!r} field; "
                             "not a jaxrec piece tokenizer")
        return tok

    def to_json(self) -> dict:
        """``{"piece", "mark", "vocab": [strings in id order]}`` (a compact form for tests and
        configs; directories hold the standard ``tokenizer.json``)."""
        v = self.vocab
        return {"piece": self.piece, "mark": self.mark, "vocab": sorted(v, key=v.__getitem__)}

    @classmethod
    def from_json(cls, d: dict, where: str = "tokenizer") -> "PieceTokenizer":
        """The inverse of :meth:`to_json`; also reads the former layout, whose ``"##"`` mark was
        on continuation pieces (``["Gold", "##enEy"]`` -> ``["▁Gold", "enEy"]``, same ids)."""
        mark = d.get("mark", "")
        vocab = list(d["vocab"])
        if mark == "##" and tuple(vocab[:len(SPECIALS)]) == SPECIALS:
            vocab = list(SPECIALS) + [p[2:] if p.startswith("##") else WORD_START + p for p in vocab[len(SPECIALS):]]
        return cls.from_vocab(vocab, int(d["piece"]), mark, where)


def from_pretrained(path: str) -> HFTokenizer:
    """The tokenizer of a directory: a :class:`PieceTokenizer` when ``tokenizer_config.json``
    carries its ``piece`` / ``mark`` (a jaxrec decoder), else an :class:`HFTokenizer`.

    Raises:
      FileNotFoundError: no such directory, or no tokenizer in it.
      ValueError: an unreadable file or a special token missing from the vocabulary (the
        message names the file).
    """
    backend, special, cfg = _read_directory(path)
    spec = cfg.get(PIECE_CONFIG_KEY)
    if spec is None:
        return HFTokenizer(backend, special, source=str(path),
                           clean_up_spaces=bool(cfg.get("clean_up_tokenization_spaces")))
    where = os.path.join(str(path), TOKENIZER_CONFIG_FILE)
    try:
        piece, mark = int(spec["piece"]), str(spec["mark"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: field {PIECE_CONFIG_KEY!r} must be {{'piece': int, 'mark': str}}, "
                         f"got {spec!r}") from None
    vocab = backend.get_vocab(with_added_tokens=True)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{os.path.join(str(path), TOKENIZER_FILE)}: ids are not 0..{len(vocab) - 1}")
    tok = PieceTokenizer.from_vocab(sorted(vocab, key=vocab.__getitem__), piece, mark,
                                    os.path.join(str(path), TOKENIZER_FILE))
    tok.source = str(path)
    return tok


# Eye-tracking features, in the output order of the ET2 predictor (GazeReward, Lopez-Cardona
# et al., ICLR 2025, §3.1): fixation count, first-fixation duration, go-past time, total reading
# time, fixation proportion. They belong to whitespace words, hence the word alignment below.
ET_FEATURES = ("nFix", "FFD", "GPT", "TRT", "fixProp")


class TextTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``) behind the word-aligned interface of
    :class:`PieceTokenizer` (``encode_words``, ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``).

    Words are aligned through character **offsets**, not the tokenizer's own ``word_ids``: a
    pre-tokenizer's "words" split punctuation ("there?" is two of them for a byte-level BPE),
    while the eye-tracking features belong to whitespace words. The words are joined by single
    spaces and encoded in one piece (so a byte-level BPE sees the spaces it was trained with), and
    every token belongs to the word holding the first non-space character of its span; a token
    covering only spaces (a lone ``Ġ`` / ``▁``) or no characters (specials) belongs to no word
    (-1).

    Attributes:
      backend: the ``tokenizers.Tokenizer``.
      pad_id, bos_id, eos_id: special ids, None where the tokenizer has no such token (a
        Llama-3 tokenizer has no pad token; code pads with :attr:`fill_id` under a zero mask).
      source: the directory it was read from (named in error messages).
    """

    def __init__(self, backend, *, pad_id=None, bos_id=None, eos_id=None, source: str = ""):
        self.backend = backend
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.source = source

    @classmethod
    def from_dir(cls, path: str, what: str = "tokenizer") -> "TextTokenizer":
        """The tokenizer saved in directory ``path`` (``tokenizer.json``; special tokens from
        ``tokenizer_config.json`` / ``special_tokens_map.json`` through
        ``transformers.AutoTokenizer``; a bare ``tokenizer.json`` gives no special ids).

        Raises:
          FileNotFoundError: no ``tokenizer.json`` (the message names ``what`` and the path).
          ValueError: the files cannot be read as a fast tokenizer.
        """
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{what} {path!r}: no tokenizer.json (a Hugging Face fast tokenizer is "
                                    "needed to align words to tokens)")
        has_config = any(os.path.isfile(os.path.join(path, f))
                         for f in ("tokenizer_config.json", "special_tokens_map.json"))
        try:
            if not has_config:
                from tokenizers import Tokenizer
                return cls(Tokenizer.from_file(file), source=path)
            from transformers import AutoTokenizer   # lazy: a slow import
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError) as e:   # the libraries' own errors
            raise ValueError(f"{what} {path!r}: cannot read the tokenizer files ({type(e).__name__}: {e})") from None
        except Exception as e:   # tokenizers raises its own Exception subclass for a bad tokenizer.json
            raise ValueError(f"{file}: not a valid tokenizer ({e})") from None
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{what} {path!r}: {type(tok).__name__} is not a fast tokenizer (tokenizer.json)")
        ids = {k: getattr(tok, f"{k}_token_id") for k in ("pad", "bos", "eos", "cls", "sep")}
        return cls(tok.backend_tokenizer, pad_id=ids["pad"], bos_id=ids["bos"] if ids["bos"] is not None else ids["cls"],
                   eos_id=ids["eos"] if ids["eos"] is not None else ids["sep"], source=path)

    @property
    def vocab_size(self) -> int:
        """Number of ids (added tokens included): every id is ``< vocab_size``."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def fill_id(self) -> int:
        """The id written at padded positions: pad, else eos, else 0 (masked out either way)."""
        for i in (self.pad_id, self.eos_id):
            if i is not None:
                return int(i)
        return 0

    def encode(self, text: str) -> list:
        """Token ids of ``text`` (no special tokens)."""
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_words(self, words: Sequence[str], first_word: int = 0) -> tuple[list, list]:
        """``(token ids, word index of every token)`` of ``" ".join(words)``, words numbered from
        ``first_word``; -1 for tokens of no word. Words must not contain whitespace."""
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        text = " ".join(words)
        enc = self.backend.encode(text, add_special_tokens=False)
        wid = []
        for s, e in enc.offsets:
            span = text[s:e]
            k = len(span) - len(span.lstrip())
            if s + k >= e:
                wid.append(-1)
            else:
                wid.append(first_word + bisect.bisect_right(starts, s + k) - 1)
        return list(enc.ids), wid
