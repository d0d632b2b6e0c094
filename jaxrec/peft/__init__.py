"""Parameter-efficient fine-tuning: LoRA, Houlsby adapters, and path-pattern freezing.

* :class:`~jaxrec.peft.lora.LoRADense` — ``nn.Dense`` plus a low-rank update (Hu et al. 2022).
* :class:`~jaxrec.peft.adapters.HoulsbyAdapter` — serial bottleneck adapter (Houlsby et al. 2019).
* :mod:`jaxrec.peft.freeze` — full fine-tuning / LoRA / Houlsby / BitFit as trainable-path
  regex presets, turned into ``optax.multi_transform`` masks (spec ``iisan.md`` §1.11–1.12).
"""
from jaxrec.peft.adapters import HoulsbyAdapter
from jaxrec.peft.freeze import (
    PRESETS,
    count_params,
    group_labels,
    lora_patterns,
    masked_optimizer,
    merge,
    param_labels,
    path_str,
    split_trainable,
)
from jaxrec.peft.lora import LoRADense, merge_lora_kernel

__all__ = [
    "HoulsbyAdapter",
    "LoRADense",
    "merge_lora_kernel",
    "PRESETS",
    "count_params",
    "group_labels",
    "lora_patterns",
    "masked_optimizer",
    "merge",
    "param_labels",
    "path_str",
    "split_trainable",
]
