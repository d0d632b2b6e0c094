"""Test helper: a tiny Hugging Face decoder directory (Llama or Gemma, random weights written by
transformers' Flax classes in PyTorch layout) with a byte-level BPE tokenizer trained here,
whose special ids differ from jaxrec's own tokenizer (pad 0, bos 1, eos 2):

* ``'llama3'``: no pad token; bos / eos appended after the learned vocabulary (as Llama 3's
  ``<|begin_of_text|>`` = 128000 / ``<|end_of_text|>`` = 128001);
* ``'gemma'``: pad 0, eos 1, bos 2 (Gemma's layout), unk 3.

``bigram`` turns the decoder into a hand-checkable next-token table: every attention output and
FFN output projection is zero, so the last hidden state is the current token's embedding and
the logits depend on the current token only; ``lm_head`` columns are then set so that
``src -> dst`` for each pair given (the other columns stay near zero).
"""
from __future__ import annotations

import numpy as np
import transformers
from flax import traverse_util
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.backbones import flax_to_torch_tensors, write_checkpoint

CORPUS = ["genres: action, adventure, animation, children's, comedy, crime, documentary, drama",
          "fantasy, film-noir, horror, musical, mystery, romance, sci-fi, thriller, war, western",
          "item 1 | genres: drama ; rated 5", "the toy story of a war in space, rated 3"] * 3
SPECIALS = {"llama3": {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"},
            "gemma": {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}}


def train_tokenizer(style: str, vocab_size: int = 320) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :data:`CORPUS` with ``style``'s special tokens."""
    sp = SPECIALS[style]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    first = list(sp.values()) if style == "gemma" else []          # ids 0.. in this order
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=first, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    if style == "llama3":
        tk.add_special_tokens(list(sp.values()))                    # after the learned ids
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **{f"{k}_token": v for k, v in sp.items()})


def write_decoder(path, style: str, *, vocab_size: int | None = None, bigram: dict | None = None,
                  hidden: int = 32, seed: int = 0):
    """Writes ``style``'s decoder + tokenizer to ``path``; returns the tokenizer.

    Args:
      vocab_size: the model's vocabulary (default: the tokenizer's size); smaller makes a
        tokenizer that does not fit the model.
      bigram: ``{src id: dst id}`` (module docstring).
    """
    tok = train_tokenizer(style)
    v = len(tok) if vocab_size is None else vocab_size
    common = dict(vocab_size=v, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=160,
                  tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if style == "gemma":
        cfg = transformers.GemmaConfig(**common, head_dim=16, hidden_activation="gelu_pytorch_tanh")
        model = transformers.FlaxGemmaForCausalLM(cfg, seed=seed)
    else:
        cfg = transformers.LlamaConfig(**common)
        model = transformers.FlaxLlamaForCausalLM(cfg, seed=seed)
    params = traverse_util.flatten_dict(model.params)
    if bigram:
        rng = np.random.default_rng(seed)
        emb = np.asarray(params[("model", "embed_tokens", "embedding")])
        for k in params:
            if k[-2] in ("o_proj", "down_proj"):
                params[k] = np.zeros_like(params[k])
        head = 0.01 * rng.standard_normal(np.shape(params[("lm_head", "kernel")])).astype(np.float32)
        for src, dst in bigram.items():
            head[:, dst] = 5.0 * emb[src] / np.linalg.norm(emb[src])
        params[("lm_head", "kernel")] = head
    tensors = flax_to_torch_tensors(traverse_util.unflatten_dict(params))
    write_checkpoint(path, tensors, cfg.to_dict())
    tok.save_pretrained(str(path))
    return tok
