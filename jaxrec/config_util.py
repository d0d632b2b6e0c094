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
    # IISAN's item-content datasets (iisan.md §1.13, §2.7; docs/datasets.md): leave-one-out
    # over each user's last 13 of >= 5 interactions (done by the readers); SASRec lr
    # [inferred]. Each needs raw_dir; the Amazon names pick a category of 'amazon_iisan'.
    "amazon_scientific": dict(lr=0.001, eval_every=500, epochs=100, protocol="loo"),
    "amazon_instruments": dict(lr=0.001, eval_every=500, epochs=100, protocol="loo"),
    "amazon_office": dict(lr=0.001, eval_every=500, epochs=100, protocol="loo"),
    "microlens": dict(lr=0.001, eval_every=500, epochs=100, protocol="loo"),
}
AMAZON_CATEGORIES = {"amazon_scientific": "Industrial_and_Scientific",
                     "amazon_instruments": "Musical_Instruments",
                     "amazon_office": "Office_Products"}


def choice(section, path: str, allowed, default=None) -> str:
    """``str(section[leaf])`` (``default`` when unset), checked against ``allowed``.

    ``path`` is the field's full name for the error (``'rl.prl_weight'``); its last part
    is the key read from ``section``. Raises ValueError naming ``config.<path>``, the
    accepted values and the value given.
    """
    leaf = path.rpartition(".")[2]
    value = str(section.get(leaf, default))
    if value not in allowed:
        raise ValueError(f"config.{path} must be one of {', '.join(map(str, allowed))}, "
                         f"got {value!r}")
    return value


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
    """Runs ``get_config(arg)`` of a config file, as ``--config=path:arg`` does (for scripts
    and tests that do not go through absl flags). ``path`` may also be a registered name
    (``'sqn'``) or ``configs/<name>.py`` (:func:`jaxrec.configs.resolve`)."""
    import importlib.util

    from jaxrec import configs
    path = configs.resolve(path)
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
    if name in AMAZON_CATEGORIES:
        c.name = "amazon_iisan"
        c.options.category = AMAZON_CATEGORIES[name]
    if name == "synthetic" and smoke:
        c.options.preset = "tiny"
    return c


# Per-method hyperparameters: a layer above DATASET_DEFAULTS, so a method keeps one config
# file. Keys are dotted config paths, optionally conditioned with ``@`` on the encoder or
# dataset argument (``model.dropout@caser``; several conditions joined by ``+`` must all
# hold). ``paper`` entries apply only on the papers' own datasets (retailrocket,
# yoochoose), whose step counts they are; elsewhere the dataset defaults stand.
PAPER_DATASETS = ("retailrocket", "yoochoose")
METHOD_DEFAULTS = {
    # SQN (M_TH.py, rl.md §3-4): the dataset defaults are its scripts' (30 epochs,
    # validation every 2,000 steps); Caser without dropout, as in the SQN/SAC scripts.
    "sqn": {"all": {"model.dropout@caser": 0.0}},
    # SAC (M_AC.py, rl.md §4): SQN-loss warm-up in some scripts only, then a fresh Adam.
    "sac": {"all": {"model.dropout@caser": 0.0, "rl.warmup_steps": 0},
            "paper": {"rl.warmup_steps@gru4rec+retailrocket": 15000,
                      "rl.warmup_steps@sasrec": 30000}},
    # SNQN (SNQN.py, rl.md §5): 10 uniform negatives, r_neg = 0; RC15 ranks with Q.
    "snqn": {"all": {"rl.num_negatives": 10, "rl.r_negative": 0.0},
             "paper": {"rl.rank_head@yoochoose": "q"}},
    # SA2C (SA2C.py, rl.md §5): SNQN for 15,000 steps, then advantage-weighted CE with a
    # second Adam (lr 0.001); 50 epochs, validation every 4,000 steps; Caser dropout 0.1.
    "sa2c": {"all": {"rl.num_negatives": 10, "rl.r_negative": 0.0, "rl.lr2": 0.001,
                     "rl.advantage_clip": 0.0, "rl.ips_smooth": 0.0,
                     "model.dropout@caser": 0.1},
             "paper": {"train.num_epochs": 50, "train.eval_every": 4000,
                       "rl.phase1_steps": 15000}},
}


def _conditions_hold(cond: str, dataset: str, encoder: str) -> bool:
    return all(c in (dataset, encoder) for c in cond.split("+")) if cond else True


def apply_method_defaults(c: ml_collections.ConfigDict, method: str, dataset: str,
                          encoder: str) -> None:
    """Writes :data:`METHOD_DEFAULTS` of ``method`` into ``c`` (creating fields)."""
    layers = METHOD_DEFAULTS.get(method, {})
    for layer in ("all", "paper"):
        if layer == "paper" and dataset not in PAPER_DATASETS:
            continue
        for key, value in layers.get(layer, {}).items():
            path, _, cond = key.partition("@")
            if not _conditions_hold(cond, dataset, encoder):
                continue
            *parents, leaf = path.split(".")
            node = c
            for p in parents:
                if p not in node:
                    node[p] = ml_collections.ConfigDict()
                node = node[p]
            node[leaf] = value


def encoder_fields() -> ml_collections.ConfigDict:
    """Every :class:`~jaxrec.encoders.EncoderConfig` field with its default, typed, so
    ``--config.model.<field>=...`` works for each (fields that default to None get a typed
    placeholder). Padding and state length live in ``config.data`` (the pad id follows from the
    padding)."""
    import dataclasses
    import typing

    from jaxrec.encoders.common import EncoderConfig
    hints = typing.get_type_hints(EncoderConfig)
    m = ml_collections.ConfigDict()
    for f in dataclasses.fields(EncoderConfig):
        if f.name in ("padding", "state_len", "pad_id"):
            continue
        default = f.default
        if default is None:
            args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
            m[f.name] = ml_collections.FieldReference(None, field_type=args[0] if args
                                                      else object)
        else:
            m[f.name] = default
    return m


def train_section(**overrides) -> ml_collections.ConfigDict:
    """``config.train``: the trainer's settings (jaxrec.train.loop), with ``overrides``."""
    t = ml_collections.ConfigDict()
    t.batch_size = 256
    t.num_epochs = 1
    t.num_steps = 0            # 0: num_epochs passes over the training examples
    t.eval_every = 2000
    t.eval_every_epochs = 0.0  # > 0: overrides eval_every, in epochs
    t.checkpoint_every = 0     # 0: at every evaluation
    t.patience = 0             # > 0: stop after this many evaluations without gain
    t.prng_impl = "threefry2x32"   # or 'rbg' / 'unsafe_rbg' (faster dropout on CPU)
    t.log_every = 100
    t.max_checkpoints = 2
    t.compute_dtype = "float32"    # or 'bfloat16': bf16 matmuls, f32 accumulation
                                   # (GPU/TPU; XLA:CPU ignores it)
    t.deterministic = False        # GPU: deterministic XLA kernels (bit-exact resume), slower
    t.allow_config_change = False  # resume although hyperparameters changed (listed on stderr)
    for k, v in overrides.items():
        if k not in t:
            raise KeyError(f"config.train has no field {k!r}; fields: {', '.join(sorted(t))}")
        t[k] = v
    return t


def mesh_section() -> ml_collections.ConfigDict:
    """``config.mesh`` (jaxrec.train.sharding): data x model devices, -1 = the rest; 1 x 1 is
    the single-device path. model_patterns: regexes of the state leaves split over 'model'
    along their item axis (empty: item tables and item-scoring heads)."""
    return ml_collections.ConfigDict({"data": 1, "model": 1, "model_patterns": ()})


def base_config(method: str, dataset: str, encoder: str, smoke: bool,
                raw_dir: Optional[str] = None, protocol: Optional[str] = None
                ) -> ml_collections.ConfigDict:
    """The common skeleton: dataset, data, model, optim, train, eval, evals and rl sections,
    with the dataset defaults, then the method defaults (:data:`METHOD_DEFAULTS`), then the
    ``smoke`` shrink."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; accepted: {', '.join(ENCODERS)}")
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; accepted: {', '.join(DATASET_DEFAULTS)}")
    d = DATASET_DEFAULTS[dataset]
    protocol = protocol or d["protocol"]
    if protocol not in ("session", "loo"):
        raise ValueError(f"unknown protocol {protocol!r}; accepted: session, loo")
    c = ml_collections.ConfigDict()
    c.method = method
    c.label = f"{method}/{encoder}"   # the row name in tables and results.json
    c.seed = 0
    c.dataset = dataset_config(dataset, raw_dir, smoke)
    c.data = ml_collections.ConfigDict()
    c.data.kind = "replay" if protocol == "session" else "sequence"
    c.data.state_len = 10
    c.data.padding = "right" if protocol == "session" else "left"
    c.data.r_click = 0.2             # event rewards (rl.md §3); also the evaluator's
    c.data.r_buy = 1.0
    c.data.loo_min_len = 5
    c.data.loo_keep_last = ml_collections.FieldReference(None, field_type=int)
    c.data.loo_train = "windows"     # or 'prefixes' (one example per prefix)
    c.data.loo_window_stride = ml_collections.FieldReference(None, field_type=int)  # None: L
    c.model = encoder_fields()
    c.model.encoder = encoder
    c.model.tie_head = False
    c.model.head_bias = False
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = d["lr"]
    c.optim.clip_norm = 0.0
    c.optim.weight_decay = 0.0
    c.train = train_section(num_epochs=d["epochs"], eval_every=d["eval_every"])
    c.mesh = mesh_section()
    c.eval = ml_collections.ConfigDict()    # shared evaluator settings
    c.eval.ks = (5, 10, 20)
    c.eval.batch_size = 256
    c.eval.select_metric = "purchase/ndcg@10" if protocol == "session" else "all/ndcg@10"
    if dataset in ("movielens_1m", "ml100k_recbole") and protocol == "session":
        c.eval.select_metric = "click/ndcg@10"   # ratings have no purchases
    c.eval.max_queries = 0           # 0: all queries
    c.eval.ties = "reference"        # the papers' argsort order; or 'pessimistic'
    c.eval.exclude_history = False   # mask the input window's items (IISAN: True)
    c.eval.mask_target_if_in_history = True
    c.evals = ml_collections.ConfigDict()
    c.evals.ranking = ml_collections.ConfigDict({"type": "ranking", "prefix": ""})
    c.rl = ml_collections.ConfigDict()
    c.rl.gamma = 0.5
    c.rl.rank_head = "s"
    apply_method_defaults(c, method, dataset, encoder)
    if smoke:
        shrink(c)
    return c


def shrink(c: ml_collections.ConfigDict) -> None:
    """The ``smoke`` argument: a few steps on tiny batches, a prefix of the queries."""
    c.train.batch_size = 8
    c.train.num_steps = 2
    c.train.eval_every = 2
    c.train.eval_every_epochs = 0.0
    c.train.log_every = 1
    c.eval.batch_size = 32
    c.eval.max_queries = 64
