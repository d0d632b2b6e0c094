"""jaxrec.backbones.tokenizers: the piece tokenizer keeps the ids of its former pure-Python
version, saves as a standard tokenizer.json that transformers.AutoTokenizer reads with the same
ids, and the wrapper of any Hugging Face tokenizer directory agrees with AutoTokenizer (ids,
specials, decoding) and aligns sub-tokens to whitespace words."""
import json

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxrec.backbones import tokenizers as toks
from jaxrec.data import preferences as prefs

CORPUS = ["Toy Story (1995) | genres: animation, children's, comedy",
          "GoldenEye (1995) | genres: action, adventure, thriller",
          "Four Rooms (1995) | genres: thriller", "a bb ccc dddd eeeee ffffff"]
# Unknown pieces, whitespace runs of every kind, a word of exactly `piece` characters.
HELD_OUT = ["GoldenEye (1996) | genres: noir", "  Toy\tStory\n\n(1995)  ", "", "zzzzzzzzz a",
            "thrillers thrill", "dddd\u00a0eeeee"]


def _former_encode(texts, piece, mark, text):
    """The former pure-Python PieceTokenizer: vocabulary in order of first appearance after the
    six specials, continuation pieces prefixed with ``mark``, one <unk> per unknown piece.
    Returns (ids, word ids) of ``text``."""
    def pieces(w):
        out = [w[i:i + piece] for i in range(0, len(w), piece)]
        return out[:1] + [mark + p for p in out[1:]]
    vocab = {s: i for i, s in enumerate(toks.SPECIALS)}
    for t in texts:
        for w in t.split():
            for p in pieces(w):
                vocab.setdefault(p, len(vocab))
    ids, wid = [], []
    for j, w in enumerate(text.split()):
        for p in pieces(w):
            ids.append(vocab.get(p, toks.UNK))
            wid.append(j)
    return ids, wid


@pytest.mark.parametrize("piece,mark", [(4, "##"), (3, "\u2581"), (3, ""), (1, "")])
def test_piece_tokenizer_keeps_the_former_ids_and_word_alignment(piece, mark):
    tok = toks.PieceTokenizer(CORPUS, piece, mark)
    former_mark = "##" if mark else ""
    n_vocab = len(set(p for t in CORPUS for p in _former_encode(CORPUS, piece, former_mark, t)[0]))
    assert tok.vocab_size == 6 + n_vocab
    for text in CORPUS + HELD_OUT:
        want_ids, want_wid = _former_encode(CORPUS, piece, former_mark, text)
        assert tok.encode(text) == want_ids, text
        assert tok.encode_with_words(text) == (want_ids, want_wid), text
        ids, wid = tok.encode_words(text.split(), first_word=3)
        assert ids == want_ids and wid == [w + 3 for w in want_wid]
    assert toks.UNK in tok.encode(HELD_OUT[0])        # the held-out texts do reach unknown pieces


def test_marked_pieces_decode_exactly_and_unmarked_as_pieces():
    tok = toks.PieceTokenizer(CORPUS, 4, "\u2581")
    ids = tok.encode("GoldenEye (1995)")
    assert [tok.id_to_token(i) for i in ids] == ["\u2581Gold", "enEy", "e", "\u2581(199", "5)"]
    for t in CORPUS:
        assert tok.decode([toks.BOS] + tok.encode(t) + [toks.EOS, 17]) == t        # stops at </s>
    assert tok.decode(tok.encode(t) + [toks.EOS, 6], stop_at_eos=False) == t + " Toy"
    plain = toks.PieceTokenizer(CORPUS, 4, "")
    assert plain.decode(plain.encode("GoldenEye thriller")) == "Gold enEy e thri ller"
    # <unk> is kept (the other specials dropped), an id past the vocabulary reads as <unk>
    assert plain.decode([toks.PAD, 6, toks.UNK, 10_000]) == "Toy <unk> <unk>"


def test_piece_tokenizer_saves_a_directory_automodel_tools_read(tmp_path):
    tok = toks.PieceTokenizer(CORPUS, 4, "##")
    tok.save_pretrained(str(tmp_path), model_max_length=64)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 5)
    assert hf.convert_tokens_to_ids(["<eye/>", "</eye>"]) == [toks.EYE_OPEN, toks.EYE_CLOSE]
    assert len(hf) == tok.vocab_size and hf.model_max_length == 64
    for t in CORPUS + HELD_OUT:
        ids = tok.encode(t)
        assert hf.encode(t, add_special_tokens=False) == ids
        assert hf(t)["input_ids"] == [toks.BOS] + ids                  # <s> prepended, as Llama
        # transformers drops <unk> with the other specials; jaxrec keeps it (as before)
        assert hf.decode([toks.BOS] + ids, skip_special_tokens=True) == tok.decode([i for i in ids if i != toks.UNK])
    assert hf.decode(tok.encode(CORPUS[1]), skip_special_tokens=True) == CORPUS[1]
    # The bare tokenizers library reads the same file to the same ids.
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert raw.encode(CORPUS[0], add_special_tokens=False).ids == tok.encode(CORPUS[0])
    back = toks.from_pretrained(str(tmp_path))
    assert isinstance(back, toks.PieceTokenizer) and (back.piece, back.mark) == (4, "\u2581")
    assert back.vocab == tok.vocab and back.encode(HELD_OUT[0]) == tok.encode(HELD_OUT[0])


def test_former_json_layout_reads_to_the_same_ids():
    former = {"piece": 4, "mark": "##",
              "vocab": list(toks.SPECIALS) + ["Gold", "##enEy", "##e", "(199", "##5)", "Toy"]}
    tok = toks.PieceTokenizer.from_json(former)
    assert tok.encode("GoldenEye (1995) Toy Toys") == [6, 7, 8, 9, 10, 11, toks.UNK]
    assert toks.PieceTokenizer.from_json(tok.to_json()).vocab == tok.vocab
    with pytest.raises(ValueError, match="must start with"):
        toks.PieceTokenizer.from_json({"piece": 4, "vocab": ["a", "b"]})
    with pytest.raises(ValueError, match="mark must be"):
        toks.PieceTokenizer(CORPUS, 4, "@@")
    with pytest.raises(ValueError, match="piece must be > 0"):
        toks.PieceTokenizer(CORPUS, 0)


def test_preferences_reexports_the_tokenizer():
    assert prefs.PieceTokenizer is toks.PieceTokenizer
    assert prefs.SPECIALS == toks.SPECIALS
    assert (prefs.PAD, prefs.BOS, prefs.EOS, prefs.EYE_OPEN, prefs.EYE_CLOSE, prefs.UNK) == (0, 1, 2, 3, 4, 5)


# ------------------------------------------------------------------- any Hugging Face tokenizer
BPE_CORPUS = ["the quick brown fox jumps over the lazy dog", "a wonderful world of tokens",
              "reading time per word, and per token!", "don't split words it's fine"] * 20


def _byte_level_bpe():
    """A byte-level BPE trained here (Llama-3 / GPT-2 style: no <unk>, specials appended after
    the merges, so their ids are nowhere near 0/1/2)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(BPE_CORPUS, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.add_special_tokens(["<|begin|>", "<|end|>", "<|pad|>"])
    return tk


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe")
    transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(), bos_token="<|begin|>",
                                         eos_token="<|end|>").save_pretrained(str(path))
    return path


TEXTS = ["the wonderful fox, reading tokens!", "  zebra   quokka\tdog  ", "don't stop", ""]


def test_hf_directory_matches_autotokenizer(bpe_dir):
    tok = toks.from_pretrained(str(bpe_dir))
    hf = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
    assert type(tok) is toks.HFTokenizer
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id) and tok.bos_id >= 256
    # No pad token (as on Llama 3): pad falls back to eos, and says so.
    assert hf.pad_token_id is None and not tok.has_pad and tok.pad_id == tok.eos_id
    assert tok.unk_id is None and tok.vocab_size == len(hf)
    for t in TEXTS:
        ids = tok.encode(t)
        assert ids == hf.encode(t, add_special_tokens=False)
        assert tok.decode(ids + [tok.eos_id] + ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode([tok.bos_id] + ids) == t                 # byte-level BPE is lossless


def test_word_alignment_of_sub_tokens(bpe_dir):
    tok = toks.from_pretrained(str(bpe_dir))
    for t in TEXTS:
        ids, wid = tok.encode_with_words(t)
        words = t.split()
        assert len(wid) == len(ids) and set(wid) - {-1} == set(range(len(words)))
        # Every word is exactly the decoding of the tokens aligned to it, in order; the tokens
        # aligned to no word are whitespace.
        for j, w in enumerate(words):
            part = [i for i, k in zip(ids, wid) if k == j]
            assert tok.decode(part).strip() == w, (t, w)
        assert not tok.decode([i for i, k in zip(ids, wid) if k < 0]).strip()
        assert [k for k in wid if k >= 0] == sorted(k for k in wid if k >= 0)
    ids, wid = tok.encode_words(["zebra", "quokka"], first_word=5)
    assert ids == tok.encode("zebra quokka") and wid[0] == 5 and wid[-1] == 6 and len(wid) > 2
    with pytest.raises(ValueError, match="not one whitespace-free word"):
        tok.encode_words(["two words"])
    # Hand-checked offsets: a "Ġword" token's span starts at the space before its word.
    assert toks.align_words("ab  cd", [(0, 2), (2, 3), (3, 6), (6, 6)]) == [0, -1, 1, -1]
    assert toks.align_words("ab cd", [(0, 1), (1, 5)], special=[1, 0]) == [-1, 0]


def test_special_tokens_map_overrides_only_legacy_configs(tmp_path, bpe_dir):
    """Like transformers: special_tokens_map.json wins only where tokenizer_config.json has no
    added_tokens_decoder (legacy directories)."""
    _byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin|>", "eos_token": "<|end|>",
         "clean_up_tokenization_spaces": True}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"pad_token": {"content": "<|pad|>", "lstrip": False}, "eos_token": "<|end|>"}))
    tok = toks.from_pretrained(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.has_pad and tok.pad_id == hf.pad_token_id != tok.eos_id
    text = "per word , and per token ! it 's"
    ids = tok.encode(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True) == "per word, and per token! it's"


def test_directory_errors_name_the_file(tmp_path, bpe_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        toks.from_pretrained(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{\"version\": 1}")
    with pytest.raises(ValueError, match="bad/tokenizer.json: not a tokenizers-library tokenizer"):
        toks.from_pretrained(str(bad))
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text((bpe_dir / "tokenizer.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"other/tokenizer_config.json: eos_token '</s>' is not in the vocabulary"):
        toks.from_pretrained(str(other))
    (other / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin|>"}))
    with pytest.raises(ValueError, match="no eos_token"):
        toks.from_pretrained(str(other))
    with pytest.raises(ValueError, match="not a jaxrec piece tokenizer"):
        toks.PieceTokenizer.from_pretrained(str(bpe_dir))
