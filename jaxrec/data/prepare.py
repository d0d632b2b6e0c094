"""Preparing datasets once as TFDS array_record files, and loading them back.

A dataset is read from its raw files (or generated, for ``synthetic``), normalised into an
:class:`~jaxrec.data.events.EventLog`, split 80/10/10 by session with a seed (rl.md §1.3),
and written by two TFDS builders (no TensorFlow involved):

- ``jaxrec_sessions``: one record per session (ids, items, timestamps, is_buy, rating and
  any per-event synthetic features / ground truth), splits train / validation / test;
- ``jaxrec_items``: one record per item (raw id, title, genres, category, image, extras).

TFDS writes into an ``incomplete.*`` directory and renames it only when every split is
written, so an interrupted preparation is never mistaken for a complete one; rerunning
finishes the job. The items builder is written first and the sessions builder last, and a
dataset counts as prepared only when both are complete.

Layout: ``<data_dir>/jaxrec_sessions/<config>/1.0.0/`` and ``<data_dir>/jaxrec_items/...``
where ``<config>`` is the dataset name plus a digest of its options (so e.g. two YooChoose
samples with different seeds never collide). The split's raw session ids live in the
records themselves and in ``split_sessions.json`` beside them (written after the fact, as a
convenience export: the records are the source of truth).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

from jaxrec.data.events import EventLog, ItemInfo
from jaxrec.data.examples import session_split
from jaxrec.data.sessions import Sessions

DATASETS = ("synthetic", "retailrocket", "yoochoose", "movielens_100k", "movielens_1m",
            "recbole", "amazon_iisan", "microlens")
SPLITS = ("train", "validation", "test")
VERSION = "1.0.0"


def default_data_dir() -> str:
    """``$JAXREC_DATA_DIR``, else ``~/.cache/jaxrec/data``."""
    return os.environ.get("JAXREC_DATA_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "jaxrec", "data"))


@dataclasses.dataclass
class Dataset:
    """A prepared dataset, in memory.

    Attributes:
      name: dataset name (e.g. 'retailrocket').
      num_items: N; dense item ids are 0..N-1.
      splits: 'train' / 'validation' / 'test' -> Sessions (session split of the RL papers).
      items: item side information (titles, genres, category, extra arrays such as images).
      raw_item_ids: [N] raw item ids (str).
      meta: the options and statistics recorded at preparation.
    """

    name: str
    num_items: int
    splits: dict
    items: ItemInfo
    raw_item_ids: np.ndarray
    meta: dict

    def all_sessions(self) -> Sessions:
        """All sessions of every split, in dense session-id order (e.g. for leave-one-out)."""
        cat = Sessions.concat([self.splits[s] for s in SPLITS])
        return cat.select(np.argsort(cat.session_ids, kind="stable"))

    def stats(self) -> dict:
        """The papers' statistics row over all splits."""
        s = self.all_sessions()
        buys = int(s.is_buy.sum())
        return {"dataset": self.name, "sessions": s.num_sessions, "items": self.num_items,
                "interactions": s.num_events, "clicks": s.num_events - buys,
                "purchases": buys}


# --------------------------------------------------------------------------- raw reading
# Option naming the raw directory a real dataset was prepared from (part of its cache key).
SOURCE_KEY = "raw_source"


def read_raw(name: str, raw_dir: Optional[str], options: dict) -> EventLog:
    """Reads (or generates) the normalised event log of a dataset."""
    if name == "synthetic":
        from jaxrec.data import synthetic
        preset = options.get("preset", "small")
        if preset == "tiny":    # smoke runs and tests: a few hundred sessions
            cfg = synthetic.SyntheticConfig.small(num_sessions=300, num_items=80)
        elif preset in ("small", "large"):
            cfg = getattr(synthetic.SyntheticConfig, preset)()
        else:
            raise ValueError(f"synthetic: unknown preset {preset!r} "
                             "(use 'tiny', 'small' or 'large')")
        overrides = {k: v for k, v in options.items() if k not in ("preset",) + _SPLIT_KEYS}
        known = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"synthetic: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"accepted: preset, {', '.join(sorted(known))}")
        cfg = dataclasses.replace(cfg, **overrides)
        return synthetic.generate(cfg)
    from jaxrec.data import readers
    if name not in readers.READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if raw_dir is None:
        raise ValueError(f"dataset {name!r} needs --raw_dir: the directory holding "
                         f"{readers.EXPECTED_FILES.get(name, 'its raw files')}")
    kwargs = {k: v for k, v in options.items() if k not in _SPLIT_KEYS + (SOURCE_KEY,)}
    return readers.read(name, raw_dir, **kwargs)


_SPLIT_KEYS = ("split_seed", "split_fractions")


def config_name(name: str, options: dict) -> str:
    """Stable builder-config name: dataset name + digest of its options."""
    blob = json.dumps(options, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------- builders
def _tfds():
    # Imported lazily: tensorflow_datasets is slow to import and noisy about missing TF.
    import tensorflow_datasets as tfds
    return tfds


def _tensor(dtype, trailing=()):
    """A per-event feature: [len_session, *trailing]."""
    tfds = _tfds()
    return tfds.features.Tensor(shape=(None, *trailing), dtype=dtype)


def _np_kind(a: np.ndarray):
    return np.float32 if np.issubdtype(a.dtype, np.floating) else np.int64


def _session_example(log: EventLog, bounds: np.ndarray, s: int) -> dict:
    """The record of dense session ``s``."""
    a, b = bounds[s], bounds[s + 1]
    ex = {
        "session": int(s),
        "raw_session": str(log.raw_session_ids[s]),
        "items": log.item[a:b].astype(np.int64),
        "timestamps": np.asarray(log.timestamp[a:b]).astype(np.int64),
        "is_buy": log.is_buy[a:b].astype(np.int64),
        "rating": (np.zeros(b - a, np.float32) if log.rating is None
                   else log.rating[a:b].astype(np.float32)),
    }
    for k, v in log.ground_truth.items():
        ex[f"gt_{k}"] = np.asarray(v[a:b]).astype(_np_kind(np.asarray(v)))
    for k, v in log.features.items():
        ex[f"feat_{k}"] = np.asarray(v[a:b]).astype(_np_kind(np.asarray(v)))
    return ex


def _is_text(a: np.ndarray) -> bool:
    return a.dtype.kind in ("U", "S", "O")


def _image_key(items: ItemInfo) -> Optional[str]:
    for k, v in items.extra.items():
        v = np.asarray(v)
        if v.ndim == 4 and v.dtype == np.uint8 and v.shape[-1] in (1, 3):
            return k
    return None


def _make_builders(log_fn: Callable[[], tuple[EventLog, dict]], cfg_name: str, data_dir: str,
                   meta: dict, feature_spec: Optional[dict] = None):
    """Creates the two builder instances. ``log_fn`` yields (log, split rows) lazily."""
    tfds = _tfds()

    # skip_registration: these classes are made per call (they close over the data), so
    # they must not enter the global TFDS registry, which forbids a second definition.
    class JaxrecSessions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One record per session of a normalised interaction log."""

        VERSION = tfds.core.Version(VERSION)

        def _info(self):
            spec = feature_spec["sessions"]
            feats = {"session": np.int64, "raw_session": tfds.features.Text(),
                     "items": _tensor(np.int64), "timestamps": _tensor(np.int64),
                     "is_buy": _tensor(np.int64), "rating": _tensor(np.float32)}
            for k, (kind, trailing) in spec.items():
                feats[k] = _tensor(np.float32 if kind == "float" else np.int64, tuple(trailing))
            return tfds.core.DatasetInfo(
                builder=self, description=f"jaxrec sessions of {meta['name']}",
                features=tfds.features.FeaturesDict(feats), disable_shuffling=True,
                metadata=tfds.core.MetadataDict(meta))

        def _split_generators(self, dl_manager):
            log, rows = log_fn()
            bounds = log.session_bounds()
            # TFDS cannot write an empty split (tiny datasets may have one); such a split
            # is simply absent and loads as zero sessions.
            return {split: self._generate_examples(log, bounds, rows[split])
                    for split in SPLITS if len(rows[split])}

        def _generate_examples(self, log, bounds, rows):
            for s in rows:
                yield int(s), _session_example(log, bounds, int(s))

    class JaxrecItems(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One record per item: raw id, title, genres, category and optional image/extras."""

        VERSION = tfds.core.Version(VERSION)

        def _info(self):
            spec = feature_spec["items"]
            feats = {"item": np.int64, "raw_id": tfds.features.Text(),
                     "title": tfds.features.Text(),
                     "genres": tfds.features.Sequence(tfds.features.Text()),
                     "category": np.int64}
            for k, (kind, shape) in spec.items():
                if kind == "image":
                    feats[k] = tfds.features.Image(shape=tuple(shape), dtype=np.uint8)
                elif kind == "text":
                    feats[k] = tfds.features.Text()
                else:
                    feats[k] = tfds.features.Tensor(
                        shape=tuple(shape), dtype=np.float32 if kind == "float" else np.int64)
            return tfds.core.DatasetInfo(
                builder=self, description=f"jaxrec items of {meta['name']}",
                features=tfds.features.FeaturesDict(feats), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            log, _ = log_fn()
            return {"items": self._generate_examples(log)}

        def _generate_examples(self, log):
            from PIL import Image
            info = log.items
            img_key = _image_key(info)
            for i in range(log.num_items):
                ex = {"item": i, "raw_id": str(log.raw_item_ids[i]),
                      "title": "" if info.titles is None else str(info.titles[i]),
                      "genres": [] if info.genres is None else [str(g) for g in info.genres[i]],
                      "category": -1 if info.category is None else int(info.category[i])}
                for k, v in info.extra.items():
                    v = np.asarray(v)
                    if k == img_key:
                        ex[k] = Image.fromarray(v[i] if v.shape[-1] == 3 else v[i][..., 0])
                        if v.shape[-1] == 1:
                            ex[k] = np.asarray(ex[k])[..., None]
                    elif _is_text(v):
                        ex[k] = str(v[i])
                    else:
                        ex[k] = v[i].astype(_np_kind(v))
                yield i, ex

    kw = dict(config=tfds.core.BuilderConfig(name=cfg_name), data_dir=data_dir,
              file_format="array_record")
    with quiet_tfds():
        return JaxrecSessions(**kw), JaxrecItems(**kw)


def _feature_spec(log: EventLog) -> dict:
    sess = {}
    for prefix, d in (("gt_", log.ground_truth),
                      ("feat_", log.features)):
        for k, v in d.items():
            v = np.asarray(v)
            sess[prefix + k] = ("float" if _np_kind(v) is np.float32 else "int",
                                list(v.shape[1:]))
    items = {}
    img = _image_key(log.items)
    for k, v in log.items.extra.items():
        v = np.asarray(v)
        if k == img:
            items[k] = ("image", list(v.shape[1:]))
        elif _is_text(v):
            if v.ndim != 1:
                raise ValueError(f"item extra {k!r}: text arrays must be 1-D, got {v.shape}")
            items[k] = ("text", [])
        else:
            items[k] = ("float" if _np_kind(v) is np.float32 else "int", list(v.shape[1:]))
    return {"sessions": sess, "items": items}


def dataset_dirs(name: str, data_dir: str, options: dict) -> tuple[str, str]:
    """Paths of the finished sessions and items datasets (whether or not they exist)."""
    cfg = config_name(name, options)
    return (os.path.join(data_dir, "jaxrec_sessions", cfg, VERSION),
            os.path.join(data_dir, "jaxrec_items", cfg, VERSION))


def is_prepared(name: str, /, data_dir: Optional[str] = None, **options) -> bool:
    """True only if both builders finished (TFDS renames a directory when complete)."""
    data_dir = data_dir or default_data_dir()
    return all(os.path.exists(os.path.join(d, "dataset_info.json"))
               for d in dataset_dirs(name, data_dir, _normalise_options(name, options)))


def _normalise_options(name: str, options: dict, raw_dir: Optional[str] = None) -> dict:
    opts = dict(options)
    if raw_dir is not None and name != "synthetic":
        # The prepared copy is keyed by where its raw files came from as well: the same
        # dataset name read from another directory (another download, a test fixture) is
        # another dataset, never a silent reuse of the first one prepared.
        opts[SOURCE_KEY] = os.path.realpath(raw_dir)
    opts.setdefault("split_seed", 0)
    opts["split_fractions"] = list(opts.get("split_fractions", (0.8, 0.1, 0.1)))
    if name == "synthetic":
        opts.setdefault("preset", "small")
    if name == "yoochoose":
        opts.setdefault("num_sessions", 200_000)
        opts.setdefault("seed", 0)
    return opts


def prepare(name: str, /, raw_dir: Optional[str] = None, data_dir: Optional[str] = None,
            **options) -> tuple[str, str]:
    """Reads raw data and writes the dataset, unless it is already complete.

    Args:
      name: one of :data:`DATASETS`.
      raw_dir: directory with the raw files (not needed for 'synthetic').
      data_dir: cache root; defaults to :func:`default_data_dir`.
      **options: reader options (e.g. yoochoose ``num_sessions``/``seed``, synthetic
        ``preset``/``seed``/sizes, recbole ``name``) and ``split_seed``/``split_fractions``.
    Returns:
      (sessions dir, items dir) of the complete dataset.
    """
    data_dir = data_dir or default_data_dir()
    options = _normalise_options(name, options, raw_dir)
    if is_prepared(name, data_dir, **options):
        return dataset_dirs(name, data_dir, options)
    # Two processes asked for the same dataset at once (parallel test workers, several
    # jobs launched together) must not both write it: the second waits, then reuses it.
    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(data_dir, f".{config_name(name, options)}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_prepared(name, data_dir, **options):
                return dataset_dirs(name, data_dir, options)
            return _prepare_locked(name, raw_dir, data_dir, options)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare_locked(name: str, raw_dir: Optional[str], data_dir: str, options: dict
                    ) -> tuple[str, str]:
    cache: dict[str, Any] = {}

    def log_fn():
        if "log" not in cache:
            logging.info("reading raw data of %s", name)
            log = read_raw(name, raw_dir, options)
            rows = session_split(log.num_sessions, tuple(options["split_fractions"]),
                                 options["split_seed"])
            cache["log"], cache["rows"] = log, rows
        return cache["log"], cache["rows"]

    log, rows = log_fn()
    meta = {"name": name, "options": json.dumps(options, sort_keys=True),
            "num_items": log.num_items, "num_sessions": log.num_sessions,
            "stats": json.dumps(log.stats()), "has_rating": log.rating is not None}
    sessions_b, items_b = _make_builders(log_fn, config_name(name, options), data_dir, meta,
                                         _feature_spec(log))
    # One line per stage instead of TFDS's ~40 (quiet_tfds); on stderr, so a results table
    # on stdout stays clean.
    print(f"preparing dataset {name} ({log.num_sessions:,} sessions, {log.num_items:,} items) "
          f"in {data_dir} ...", file=sys.stderr, flush=True)
    t0 = time.time()
    with quiet_tfds():
        items_b.download_and_prepare()      # items first: sessions complete => dataset complete
        sessions_b.download_and_prepare()
    print(f"prepared dataset {name} in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    sdir, idir = dataset_dirs(name, data_dir, options)
    split_ids = {k: [str(log.raw_session_ids[s]) for s in v] for k, v in rows.items()}
    with open(os.path.join(sdir, "split_sessions.json"), "w") as f:
        json.dump(split_ids, f)
    return sdir, idir


@contextlib.contextmanager
def quiet_tfds():
    """Silences TFDS while it writes or reads a jaxrec dataset: its progress bars, the
    "Downloading and preparing dataset ..." / "... Subsequent calls will reuse this data."
    lines it prints to stdout (there is nothing to download: the builders read local files),
    and absl warnings such as "Using custom data configuration" (every jaxrec dataset has
    one) or "OpenCV is not installed" (PIL decodes the covers). Errors still show.
    ``JAXREC_VERBOSE_TFDS=1`` keeps everything, for debugging a builder."""
    if os.environ.get("JAXREC_VERBOSE_TFDS", "") not in ("", "0"):
        yield
        return
    from absl import logging as absl_logging
    from tensorflow_datasets.core.utils import tqdm_utils
    was_active = tqdm_utils._active
    absl_logger = absl_logging.get_absl_logger()
    level = absl_logger.level
    tqdm_utils.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(was_active)
        absl_logger.setLevel(level)


# --------------------------------------------------------------------------- loading
def _read_source(path: str) -> dict:
    tfds = _tfds()
    with quiet_tfds():
        builder = tfds.builder_from_directory(path)
        return builder, builder.as_data_source()


def _sessions_from_records(recs: list[dict]) -> Sessions:
    recs = sorted(recs, key=lambda r: int(r["session"]))
    lens = np.asarray([len(r["items"]) for r in recs], np.int64)
    cat = lambda k, dt: (np.concatenate([np.asarray(r[k]) for r in recs]).astype(dt)
                         if recs else np.zeros(0, dt))
    gt = {k[3:]: cat(k, np.asarray(recs[0][k]).dtype) for k in (recs[0] if recs else {})
          if k.startswith("gt_")}
    feats = {k[5:]: cat(k, np.asarray(recs[0][k]).dtype) for k in (recs[0] if recs else {})
             if k.startswith("feat_")}
    return Sessions(
        items=cat("items", np.int32), is_buy=cat("is_buy", np.int8),
        timestamps=cat("timestamps", np.int64),
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        session_ids=np.asarray([int(r["session"]) for r in recs], np.int64),
        raw_session_ids=np.asarray([_s(r["raw_session"]) for r in recs]),
        rating=cat("rating", np.float32), ground_truth=gt, features=feats)


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _read_all(source, chunk: int = 8192) -> list:
    out = []
    for a in range(0, len(source), chunk):
        out.extend(source.__getitems__(list(range(a, min(len(source), a + chunk)))))
    return out


def _read_items(source, chunk: int = 2048) -> tuple[ItemInfo, np.ndarray]:
    """The items dataset as :class:`ItemInfo` and ``[N]`` raw ids, in item-id order.

    Records are read a chunk at a time and written straight into preallocated columns, so
    array fields (e.g. ``[N, S, S, 3]`` uint8 covers of a MicroLens- or Amazon-sized
    catalogue) are held once, not once as records and again when stacked.
    """
    n = len(source)
    cols: dict = {}
    for a in range(0, n, chunk):
        for r in source.__getitems__(list(range(a, min(n, a + chunk)))):
            i = int(r["item"])
            if not 0 <= i < n:
                raise ValueError(f"items dataset: item id {i} outside [0, {n}) (a damaged "
                                 f"prepared copy; delete it and prepare again)")
            for k, v in r.items():
                if k == "item":
                    continue
                if k not in cols:
                    text = isinstance(v, (bytes, str)) or k == "genres"
                    cols[k] = [None] * n if text else np.zeros((n, *np.shape(v)), np.asarray(v).dtype)
                col = cols[k]
                col[i] = v if isinstance(col, list) else np.asarray(v)
    titles = [_s(t) for t in cols.get("title", [])]
    genres = [[_s(g) for g in gs] for gs in cols.get("genres", [])]
    cats = np.asarray(cols.get("category", np.zeros(0)), np.int64)
    extra = {k: (np.asarray([_s(x) for x in v]) if isinstance(v, list) else v)
             for k, v in cols.items() if k not in ("raw_id", "title", "genres", "category")}
    items = ItemInfo(titles=titles if any(titles) else None,
                     genres=genres if any(genres) else None,
                     category=cats if (cats >= 0).any() else None, extra=extra)
    return items, np.asarray([_s(x) for x in cols.get("raw_id", [])])


def load(name: str, /, raw_dir: Optional[str] = None, data_dir: Optional[str] = None,
         prepare_if_missing: bool = True, **options) -> Dataset:
    """Loads a prepared dataset into memory, preparing it first if needed.

    Raises:
      FileNotFoundError: not prepared and ``prepare_if_missing`` is False.
    """
    data_dir = data_dir or default_data_dir()
    options = _normalise_options(name, options, raw_dir)
    if not is_prepared(name, data_dir, **options):
        if not prepare_if_missing:
            raise FileNotFoundError(
                f"dataset {name!r} with options {options} is not prepared under {data_dir}; "
                f"run python -m jaxrec.data.stats --dataset={name} --data_dir={data_dir}")
        prepare(name, raw_dir, data_dir, **options)
    sdir, idir = dataset_dirs(name, data_dir, options)
    sb, ssrc = _read_source(sdir)
    meta = dict(sb.info.metadata)
    splits = {k: _sessions_from_records(_read_all(ssrc[k]) if k in ssrc else [])
              for k in SPLITS}
    if not meta.get("has_rating", False):
        for s in splits.values():
            s.rating = None
    _, isrc = _read_source(idir)
    with quiet_tfds():          # image decoding warns once that OpenCV is missing
        items, raw_ids = _read_items(isrc["items"])
    return Dataset(name=name, num_items=int(meta["num_items"]), splits=splits, items=items,
                   raw_item_ids=raw_ids, meta=meta)
