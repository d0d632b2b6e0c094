"""Frozen foundation models written in flax.linen, loading Hugging Face safetensors (no torch).

Used by IISAN / IISAN-Versa (spec ``iisan.md`` §1.1–1.2, §2.2) as frozen text and image
towers, with the LoRA / Houlsby baselines of §1.12 built in through the configs' PEFT fields.

* :mod:`jaxrec.backbones.hf` — safetensors / config.json reading, checked parameter assignment,
  and the loading path every ``load_*`` shares (returning :class:`LoadedBackbone`).
* :mod:`jaxrec.backbones.layers` — the transformer pieces the backbones share: LoRA-capable
  projections, attention, Houlsby adapter insertion, activations, config checks,
  ``PEFT_KEEP_PATTERNS``.
* :mod:`jaxrec.backbones.bert` — BERT, RoBERTa, MiniLM text encoders (:func:`load_bert`).
* :mod:`jaxrec.backbones.vit` — ViT image encoders (:func:`load_vit`).
* :mod:`jaxrec.backbones.llama` — Llama 2/3, Mistral and Gemma-style decoders (:func:`load_llama`).
* :mod:`jaxrec.backbones.preprocess` — tokenisation and image preprocessing.

Every loader returns ``LoadedBackbone(config, params)`` (a NamedTuple, so
``config, params = load_bert(...)``); the module is ``BertEncoder(config)``,
``ViTEncoder(config)`` or ``LlamaModel(config)``.
"""
from jaxrec.backbones.bert import BertConfig, BertEncoder, BertOutput, load_bert
from jaxrec.backbones.hf import CheckpointError, LoadedBackbone, assign_params, read_config, read_safetensors
from jaxrec.backbones.llama import LlamaConfig, LlamaModel, LlamaOutput, load_llama
from jaxrec.backbones.preprocess import ImagePreprocessor, load_tokenizer, tokenize
from jaxrec.backbones.vit import ViTConfig, ViTEncoder, ViTOutput, load_vit

__all__ = [
    "LlamaConfig",
    "LlamaModel",
    "LlamaOutput",
    "load_llama",
    "BertConfig",
    "BertEncoder",
    "BertOutput",
    "load_bert",
    "ViTConfig",
    "ViTEncoder",
    "ViTOutput",
    "load_vit",
    "CheckpointError",
    "LoadedBackbone",
    "assign_params",
    "read_config",
    "read_safetensors",
    "ImagePreprocessor",
    "load_tokenizer",
    "tokenize",
]
