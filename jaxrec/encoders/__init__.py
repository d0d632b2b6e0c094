"""Sequential user/state encoders: GRU4Rec, Caser, NextItNet, SASRec.

The four base models of the RL recommender papers (Xin et al. SIGIR 2020 / WSDM 2022 /
SIGIR 2022, Stamenkovic et al. WSDM 2022; specs/rl.md §2), with SASRec also in IISAN's
post-LN form (specs/iisan.md §1.8) and usable for PCRec (specs/intent_pcrec.md §2.5).

Every encoder is a flax.linen module built as ``Encoder(num_items, cfg)`` with
``cfg`` an :class:`EncoderConfig`, and is called as

    state = model.apply(params, items, lengths, train=False)      # [B, state_dim]

with ``items [B, L]`` int32 (pad included) and ``lengths [B]`` int32 (or None: derived
from the pad mask). GRU4Rec, NextItNet and SASRec also have
``sequence(items, lengths, *, train) -> [B, L, D]`` (call with ``method='sequence'``);
all have ``embed(items)`` and ``item_embeddings()`` for tying output layers, and a
``state_dim`` property. Dropout draws from the ``'dropout'`` rng collection when
``train=True``.

An output layer tied to the item table scores the real items as
``state [B, D] @ item_embeddings().T -> [B, N]``, column ``i`` being item ``i`` (0-based;
shifted id ``i + 1`` under left padding), so the pad never competes.
``RECBOLE_SASREC`` holds the fields that make SASRec RecBole's (see ``sasrec.py``).
"""

from __future__ import annotations

from typing import Any, Optional

from jaxrec.encoders.caser import Caser
from jaxrec.encoders.common import EncoderConfig, read_state
from jaxrec.encoders.gru4rec import GRU4Rec
from jaxrec.encoders.nextitnet import NextItNet
from jaxrec.encoders.sasrec import RECBOLE_SASREC, SASRec
from jaxrec.encoders.youtube_dnn import YouTubeDNN

ENCODERS = {
    "gru4rec": GRU4Rec,
    "caser": Caser,
    "nextitnet": NextItNet,
    "sasrec": SASRec,
    "youtube_dnn": YouTubeDNN,
}

# Keys a method config may keep next to the encoder fields; make_encoder consumes them.
_NON_FIELD_KEYS = ("name", "num_items")


def make_encoder(name: str, config: Any = None, *, num_items: Optional[int] = None):
    """Builds an encoder by registry name.

    Args:
      name: one of ``ENCODERS`` ('gru4rec', 'caser', 'nextitnet', 'sasrec',
        'youtube_dnn').
      config: an :class:`EncoderConfig`, a dict, or an ``ml_collections.ConfigDict``
        (which may also hold ``num_items`` and ``name``); None = paper defaults.
      num_items: N; overrides ``config.num_items`` when both are given.
    Returns:
      An unbound linen module ``ENCODERS[name](num_items, cfg)``.
    """
    key = str(name).lower()
    if key not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
    if config is None:
        cfg = EncoderConfig()
    elif isinstance(config, EncoderConfig):
        cfg = config
    else:
        d = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        if num_items is None:
            num_items = d.get("num_items")
        for k in _NON_FIELD_KEYS:
            d.pop(k, None)
        cfg = EncoderConfig.from_dict(d)
    if num_items is None:
        raise ValueError(f"make_encoder({name!r}): num_items is required (pass it, or put "
                         f"num_items in the config)")
    return ENCODERS[key](int(num_items), cfg)


__all__ = ["ENCODERS", "EncoderConfig", "GRU4Rec", "Caser", "NextItNet", "SASRec", "YouTubeDNN",
           "RECBOLE_SASREC", "make_encoder", "read_state"]
