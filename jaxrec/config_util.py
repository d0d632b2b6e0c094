"""Shared pieces of the ``configs/*.py`` files.

Every config file defines ``get_config(arg: str)``, where ``arg`` is a comma-separated list
of ``key=value`` pairs and bare flags (big_vision style), e.g.
``dataset=retailrocket,encoder=sasrec,smoke``. :func:`parse_arg` turns it into a dict and
rejects unknown keys with the list of accepted ones, so a typo never silently falls back
to a default.

The per-dataset hyperparameters of the RL papers (rl.md §3, §10.1) live in
:data:`DATASET_DEFAULTS`; an experiment picks them inside ``get_config`` rather than in one
file per combination.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Optional

import ml_collections

ENCODERS = ("gru4rec", "caser", "nextitnet", "sasrec")

# name -> learning rate, validation cadence in steps, epochs and default evaluation
# protocol. RetailRocket / RC15 values from the released code
#          (rl.md §3: lr 0.005 / 0.01, validation every 2,000 steps, 30 epochs for SQN).
DATASET_DEFAULTS = {
    "synthetic": dict(lr=0.005, eval_every=100, epochs=10, protocol="session"),
    "retailrocket": dict(lr=0.005, eval_every=2000, epochs=30, protocol="session"),
    "yoochoose": dict(lr=0.01, eval_every=2000, epochs=30, protocol="session"),
    # MovieLens-1M is not in the RL papers: users play the role of sessions and every
    # rating is a click [inferred]; the lr follows the SASRec paper (1e-3).
    "movielens_1m": dict(lr=0.001, eval_every=1000, epochs=30, protocol="session"),
    # MovieLens-100K shipped inside the recbole package: the offline real-data check,
    # leave-one-out like the SASRec/PCRec papers [inferred settings].
    "ml100k_recbole": dict(lr=0.001, eval_every=200, epochs=30, protocol="loo"),
}


def parse_arg(arg: Optional[str], allowed: dict) -> dict:
    """Parses ``'a=1,b=x,flag'`` into a dict, with defaults from ``allowed``.

    Args:
      arg: the string after the colon in ``--config=configs/x.py:<arg>``.
      allowed: key -> default; bare flags must have a bool default.
    Raises:
      ValueError: on an unknown key or a malformed pair.
    """
    out = dict(allowed)
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if key not in allowed:
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; accepted: "
                             f"{', '.join(sorted(allowed))}")
        default = allowed[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def load_config_file(path: str, arg: str = ""):
    """Runs ``get_config(arg)`` of a config file given by path, as ``--config=path:arg``
    does (for scripts and tests that do not go through absl flags)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "jaxrec_config_" + os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path!r} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def recbole_ml100k_dir() -> str:
    """The MovieLens-100K atomic files shipped in the installed ``recbole`` package."""
    return os.fspath(importlib.resources.files("recbole") / "dataset_example" / "ml-100k")


def dataset_config(name: str, raw_dir: Optional[str] = None, smoke: bool = False
                   ) -> ml_collections.ConfigDict:
    """``config.dataset`` for a dataset argument (name, raw_dir, data_dir, reader options)."""
    if name not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASET_DEFAULTS)}")
    c = ml_collections.ConfigDict()
    c.name = name
    c.raw_dir = raw_dir or ""
    c.data_dir = ""
    c.options = ml_collections.ConfigDict()
    if name == "ml100k_recbole":
        c.name = "recbole"
        c.raw_dir = raw_dir or recbole_ml100k_dir()
        c.options.name = "ml-100k"
    if name == "synthetic" and smoke:
        c.options.preset = "tiny"
    return c


def base_config(method: str, dataset: str, encoder: str, smoke: bool,
                raw_dir: Optional[str] = None, protocol: Optional[str] = None
                ) -> ml_collections.ConfigDict:
    """The common skeleton: dataset, data, model, optim, train, eval, rl sections."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; accepted: {', '.join(ENCODERS)}")
    d = DATASET_DEFAULTS[dataset] if dataset in DATASET_DEFAULTS else None
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.dataset = dataset_config(dataset, raw_dir, smoke)
    protocol = protocol or d["protocol"]
    c.data = ml_collections.ConfigDict()
    c.data.kind = "replay" if protocol == "session" else "sequence"
    c.data.state_len = 10
    c.data.padding = "right" if protocol == "session" else "left"
    c.data.num_items = -1            # filled in by the trainer
    c.data.loo_min_len = 5
    c.data.loo_keep_last = ml_collections.FieldReference(None, field_type=int)
    c.model = ml_collections.ConfigDict()
    c.model.encoder = encoder
    c.model.embed_dim = 64          # padding and state length come from config.data
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = d["lr"]
    c.optim.clip_norm = 0.0
    c.optim.weight_decay = 0.0
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256
    c.train.num_epochs = d["epochs"]
    c.train.num_steps = 0            # 0: num_epochs passes over the training examples
    c.train.eval_every = d["eval_every"]
    c.train.checkpoint_every = 0     # 0: at every evaluation
    c.train.log_every = 100
    c.train.max_checkpoints = 2
    c.eval = ml_collections.ConfigDict()
    c.eval.protocol = protocol
    c.eval.ks = (5, 10, 20)
    c.eval.batch_size = 256
    c.eval.select_metric = "purchase/ndcg@10" if protocol == "session" else "all/ndcg@10"
    if dataset == "movielens_1m" and protocol == "session":
        c.eval.select_metric = "click/ndcg@10"   # ratings have no purchases
    c.eval.max_queries = 0           # 0: all queries
    c.eval.mask_target_if_in_history = True
    c.rl = ml_collections.ConfigDict()
    c.rl.gamma = 0.5
    c.rl.r_click = 0.2
    c.rl.r_buy = 1.0
    c.rl.rank_head = "s"
    if smoke:
        shrink(c)
    return c


def shrink(c: ml_collections.ConfigDict) -> None:
    """The ``smoke`` argument: a few steps on tiny batches, a prefix of the queries."""
    c.train.batch_size = 8
    c.train.num_steps = 2
    c.train.eval_every = 2
    c.train.log_every = 1
    c.eval.batch_size = 32
    c.eval.max_queries = 64
