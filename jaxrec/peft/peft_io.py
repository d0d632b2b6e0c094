"""LoRA adapters of Llama-family decoders in Hugging Face PEFT's directory layout.

Paper: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, §4.1
(``h = W0 x + (alpha / r) B A x``). The layout is the one ``peft.PeftModel.save_pretrained`` /
``PeftModel.from_pretrained`` use, so an adapter trained here loads onto the PyTorch model of
the same base checkpoint (and the other way round):

* ``adapter_config.json``: ``peft_type`` ``"LORA"``, ``task_type`` (``"CAUSAL_LM"``), ``r``,
  ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``base_model_name_or_path``, ``bias``
  ``"none"``, ``use_rslora`` / ``use_dora`` false, ...
* ``adapter_model.safetensors``: for every layer ``i`` and target projection ``p`` (under
  ``self_attn`` for q/k/v/o, ``mlp`` for gate/up/down)
  ``base_model.model.model.layers.{i}.self_attn.{p}.lora_A.weight`` ``[r, in]`` and
  ``...lora_B.weight`` ``[out, r]``.

Conventions mapped exactly (:class:`jaxrec.peft.lora.LoRADense`):

* jaxrec stores ``lora_a [in, r]`` and ``lora_b [r, out]`` and computes
  ``x @ kernel + (alpha / r) (x @ lora_a) @ lora_b``; PEFT stores ``torch.nn.Linear`` weights
  ``lora_A [r, in]``, ``lora_B [out, r]`` and computes ``W x + (lora_alpha / r) B (A x)``. So
  ``lora_A = lora_a.T``, ``lora_B = lora_b.T`` and ``lora_alpha = alpha``; the merged PyTorch
  weight ``W + (alpha / r) lora_B @ lora_A`` is the transpose of
  :func:`jaxrec.peft.lora.merge_lora_kernel`'s kernel.
* PEFT's rank-stabilised scaling (``use_rslora``: ``lora_alpha / sqrt(r)``) is read as jaxrec
  ``alpha = lora_alpha * sqrt(r)``, the same scale.

Not representable in jaxrec's one-rank-for-all LoRA, and refused on import with the file and
field named: DoRA, per-module ``rank_pattern`` / ``alpha_pattern``, ``layers_to_transform``,
trained biases, ``modules_to_save``, ``fan_in_fan_out``. Only ``.safetensors`` weights are read
(no torch at run time).

Functions: :func:`save_peft_adapter` (params + config -> directory, atomic),
:func:`load_peft_adapter` (directory -> :class:`LoraAdapter`), :func:`apply_adapter`
(adapter -> the LoRA leaves of a params tree), :func:`lora_factors`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any

import numpy as np

from jaxrec import storage
from jaxrec.backbones.llama import ATTN_PROJECTIONS, MLP_PROJECTIONS, PROJECTIONS
from jaxrec.backbones.tokenizers import read_json_object

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
BLOCK = {**{p: "self_attn" for p in ATTN_PROJECTIONS}, **{p: "mlp" for p in MLP_PROJECTIONS}}
# PeftModel -> LoraModel ("base_model") -> *ForCausalLM ("model") -> decoder ("model"); a bare
# decoder (task_type None / FEATURE_EXTRACTION) has no inner "model.".
_NAME = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

__all__ = ["LoraAdapter", "save_peft_adapter", "load_peft_adapter", "apply_adapter", "lora_factors",
           "peft_tensor_name"]


@dataclasses.dataclass
class LoraAdapter:
    """A LoRA adapter of a Llama-family decoder, in jaxrec's layout.

    Attributes:
      rank: ``r``.
      alpha: jaxrec's alpha: the update is scaled by ``alpha / rank``.
      targets: the adapted projections, in :data:`jaxrec.backbones.llama.PROJECTIONS` order.
      num_layers: decoder layers (every layer carries every target).
      factors: ``{"layers_{i}": {block: {proj: {"lora_a": [in, r], "lora_b": [r, out]}}}}``
        (numpy), the LoRA leaves of the decoder's ``'params'`` tree.
      dropout: ``lora_dropout``.
      base_model_name_or_path, task_type: as in ``adapter_config.json``.
      source: the directory read ('' when built in memory).
    """

    rank: int
    alpha: float
    targets: tuple
    num_layers: int
    factors: dict
    dropout: float = 0.0
    base_model_name_or_path: str = ""
    task_type: str = "CAUSAL_LM"
    source: str = ""

    def config_overrides(self) -> dict:
        """The :class:`jaxrec.backbones.llama.LlamaConfig` fields of this adapter, e.g. for
        ``load_llama(base_dir, **adapter.config_overrides())``."""
        return dict(lora_rank=self.rank, lora_alpha=self.alpha, lora_targets=tuple(self.targets),
                    lora_dropout=self.dropout)


def peft_tensor_name(layer: int, proj: str, factor: str) -> str:
    """PEFT's tensor name, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``
    (``factor`` ``"A"`` or ``"B"``)."""
    return f"base_model.model.model.layers.{layer}.{BLOCK[proj]}.{proj}.lora_{factor}.weight"


def lora_factors(params: dict, config) -> dict:
    """The LoRA leaves of a decoder's ``'params'`` tree (numpy), in :class:`LoraAdapter`'s
    ``factors`` layout.

    Raises:
      ValueError: ``config.lora_rank`` is 0, or a leaf the config promises is missing or
        mis-shaped (the message names its path).
    """
    if not config.lora_rank:
        raise ValueError("the decoder config has lora_rank=0: there is no LoRA adapter to export")
    out: dict = {}
    for i in range(config.num_layers):
        for proj in config.lora_targets:
            path = (f"layers_{i}", BLOCK[proj], proj)
            node: Any = params
            for k in path:
                if not isinstance(node, dict) or k not in node:
                    raise ValueError(f"params have no {'/'.join(path)}")
                node = node[k]
            if "lora_a" not in node or "lora_b" not in node:
                raise ValueError(f"params have no LoRA factors at {'/'.join(path)} (lora_a / lora_b)")
            a, b = np.asarray(node["lora_a"]), np.asarray(node["lora_b"])
            if a.shape[1] != config.lora_rank or b.shape[0] != config.lora_rank:
                raise ValueError(f"{'/'.join(path)}: lora_a {a.shape} / lora_b {b.shape} do not have rank "
                                 f"{config.lora_rank}")
            out.setdefault(path[0], {}).setdefault(path[1], {})[proj] = {"lora_a": a, "lora_b": b}
    return out


def save_peft_adapter(path: str, params: dict, config, *, base_model_name_or_path: str = "",
                      task_type: str = "CAUSAL_LM") -> str:
    """Writes the LoRA adapter of ``params`` (a decoder's ``'params'`` tree with LoRA leaves,
    ``config`` its :class:`LlamaConfig`) as a PEFT directory ``path``, atomically.

    Args:
      base_model_name_or_path: the base checkpoint (hub id or directory) PEFT loads the
        adapter onto; recorded in ``adapter_config.json``.
      task_type: PEFT's task type; ``"CAUSAL_LM"`` for ``*ForCausalLM`` models.

    Returns:
      ``path``.
    """
    from safetensors import numpy as st_numpy
    factors = lora_factors(params, config)
    tensors = {}
    for i in range(config.num_layers):
        for proj in config.lora_targets:
            f = factors[f"layers_{i}"][BLOCK[proj]][proj]
            # jaxrec [in, r] / [r, out]  ->  torch.nn.Linear weights [r, in] / [out, r]
            tensors[peft_tensor_name(i, proj, "A")] = np.ascontiguousarray(f["lora_a"].T)
            tensors[peft_tensor_name(i, proj, "B")] = np.ascontiguousarray(f["lora_b"].T)
    alpha = float(config.lora_alpha)
    cfg = {"peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
           "r": int(config.lora_rank), "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
           "lora_dropout": float(config.lora_dropout), "target_modules": list(config.lora_targets),
           "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
           "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
           "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
           "revision": None}
    with storage.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, ADAPTER_CONFIG_FILE), "w") as f:
            json.dump(cfg, f, indent=1)
        st_numpy.save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def _config(path: str) -> dict:
    """adapter_config.json, checked for what jaxrec's LoRA can represent."""
    file = os.path.join(path, ADAPTER_CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no {ADAPTER_CONFIG_FILE} (not a PEFT adapter directory)")
    cfg = read_json_object(file)

    def bad(field, why):
        return ValueError(f"{file}: field {field!r} = {cfg.get(field)!r}: {why}")

    if cfg.get("peft_type") != "LORA":
        raise bad("peft_type", "only LoRA adapters are read")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise bad("r", "must be a positive integer")
    if not isinstance(cfg.get("lora_alpha", 8), (int, float)) or isinstance(cfg.get("lora_alpha"), bool):
        raise bad("lora_alpha", "must be a number")
    refusals = (("use_dora", "DoRA has a magnitude vector jaxrec's LoRA lacks"),
                ("rank_pattern", "jaxrec's LoRA has one rank for every module"),
                ("alpha_pattern", "jaxrec's LoRA has one alpha for every module"),
                ("layers_to_transform", "jaxrec puts LoRA on every layer"),
                ("modules_to_save", "fully trained modules are not part of a jaxrec LoRA adapter"),
                ("fan_in_fan_out", "only torch.nn.Linear layouts (Llama family) are read"))
    for field, why in refusals:
        if cfg.get(field):
            raise bad(field, f"not supported: {why}")
    if cfg.get("bias", "none") != "none":
        raise bad("bias", "not supported: jaxrec's LoRA trains no biases")
    return cfg


def load_peft_adapter(path: str) -> LoraAdapter:
    """Reads a PEFT LoRA directory of a Llama / Mistral / Gemma decoder.

    Raises:
      FileNotFoundError: no directory, no ``adapter_config.json`` or no
        ``adapter_model.safetensors``.
      ValueError: an unsupported config field, or tensors with unexpected names, missing
        partners, ranks or shapes that disagree, layers that differ in their targets (each
        message names the file).
    """
    from safetensors import safe_open
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter directory {path!r} does not exist")
    cfg = _config(path)
    wfile = os.path.join(path, ADAPTER_WEIGHTS_FILE)
    if not os.path.isfile(wfile):
        hint = " (only safetensors are read; convert adapter_model.bin)" if os.path.exists(
            os.path.join(path, "adapter_model.bin")) else ""
        raise FileNotFoundError(f"{path}: no {ADAPTER_WEIGHTS_FILE}{hint}")
    r = int(cfg["r"])
    found: dict = {}
    unexpected = []
    with safe_open(wfile, framework="np") as f:
        for name in f.keys():
            m = _NAME.match(name)
            if not m or m.group(3) not in BLOCK or BLOCK[m.group(3)] != m.group(2):
                unexpected.append(name)
                continue
            found[(int(m.group(1)), m.group(3), m.group(4))] = f.get_tensor(name)
    if unexpected:
        raise ValueError(f"{wfile}: tensors that are not LoRA factors of a Llama-family projection: "
                         f"{sorted(unexpected)[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if not found:
        raise ValueError(f"{wfile}: no LoRA tensors")
    layers = sorted({k[0] for k in found})
    if layers != list(range(len(layers))):
        raise ValueError(f"{wfile}: layers {layers} are not 0..{len(layers) - 1}")
    targets = tuple(p for p in PROJECTIONS if any(k[1] == p for k in found))
    problems = []
    for i in layers:
        for p in targets:
            a, b = found.get((i, p, "A")), found.get((i, p, "B"))
            if a is None or b is None:
                problems.append(f"missing {peft_tensor_name(i, p, 'A' if a is None else 'B')}")
            elif a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
                problems.append(f"{peft_tensor_name(i, p, 'A')} {a.shape} / lora_B {b.shape} are not "
                                f"[r={r}, in] / [out, r={r}]")
    if problems:
        raise ValueError(f"{wfile}: {'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    tm = cfg.get("target_modules")
    if isinstance(tm, list):
        if set(tm) - set(PROJECTIONS):
            raise ValueError(f"{os.path.join(path, ADAPTER_CONFIG_FILE)}: target_modules {sorted(set(tm) - set(PROJECTIONS))} "
                             f"are not Llama-family projections {list(PROJECTIONS)}")
        if set(tm) != set(targets):
            raise ValueError(f"{wfile}: holds factors for {list(targets)}, {ADAPTER_CONFIG_FILE} lists "
                             f"target_modules {tm}")
    alpha = float(cfg.get("lora_alpha", 8))        # PEFT's default lora_alpha is 8
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(r)                       # alpha / sqrt(r) == (alpha * sqrt(r)) / r
    factors: dict = {}
    for i in layers:
        for p in targets:
            factors.setdefault(f"layers_{i}", {}).setdefault(BLOCK[p], {})[p] = {
                "lora_a": np.ascontiguousarray(found[(i, p, "A")].T),
                "lora_b": np.ascontiguousarray(found[(i, p, "B")].T)}
    return LoraAdapter(rank=r, alpha=alpha, targets=targets, num_layers=len(layers), factors=factors,
                       dropout=float(cfg.get("lora_dropout", 0.0) or 0.0),
                       base_model_name_or_path=str(cfg.get("base_model_name_or_path") or ""),
                       task_type=str(cfg.get("task_type") or ""), source=path)


def apply_adapter(params: dict, adapter: LoraAdapter, config) -> dict:
    """``params`` (a decoder's ``'params'`` tree built with ``config``, e.g. from
    ``load_llama(base, **adapter.config_overrides())``) with its LoRA leaves replaced by the
    adapter's; the input is not modified.

    Raises:
      ValueError: ``config``'s rank, alpha, targets or depth differ from the adapter's, or a
        factor's shape differs from the model's (the message names the adapter directory).
    """
    where = adapter.source or "adapter"
    mine = (config.lora_rank, float(config.lora_alpha), set(config.lora_targets), config.num_layers)
    theirs = (adapter.rank, float(adapter.alpha), set(adapter.targets), adapter.num_layers)
    if mine != theirs:
        raise ValueError(f"{where}: adapter (rank, alpha, targets, layers) = {theirs}, the model's config has "
                         f"{mine}; build the model with adapter.config_overrides()")
    current = lora_factors(params, config)
    out = dict(params)
    for layer, blocks in adapter.factors.items():
        out[layer] = dict(out[layer])
        for block, projs in blocks.items():
            out[layer][block] = dict(out[layer][block])
            for proj, f in projs.items():
                leaf = dict(out[layer][block][proj])
                for k in ("lora_a", "lora_b"):
                    want = current[layer][block][proj][k]
                    if f[k].shape != want.shape:
                        raise ValueError(f"{where}: {layer}/{block}/{proj}/{k} has shape {f[k].shape}, the model "
                                         f"expects {want.shape} (another base model?)")
                    leaf[k] = np.asarray(f[k], want.dtype)
                out[layer][block][proj] = leaf
    return out
