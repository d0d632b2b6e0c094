"""Prints a dataset's statistics table in the papers' form, preparing it first if needed.

    python -m jaxrec.data.stats --dataset=synthetic
    python -m jaxrec.data.stats --dataset=retailrocket --raw_dir=~/data/retailrocket
    python -m jaxrec.data.stats --dataset=recbole --raw_dir=DIR_WITH_ATOMIC_FILES

Columns follow the SNQN/SA2C paper's dataset table (rl.md §1.5): sessions (or users), items,
interactions, clicks, purchases; plus the per-split session counts.

A bad dataset name, raw directory, reader option or raw file prints one ``error:`` line
naming the file, line and field, and exits with status 2 (``--debug`` shows the traceback;
see :mod:`jaxrec.cli`).
"""

from __future__ import annotations

import os

from absl import flags

from jaxrec import cli
from jaxrec.data import prepare as prep
from jaxrec.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "synthetic", list(prep.DATASETS), "Dataset name.")
flags.DEFINE_string("raw_dir", None, "Directory with the raw files (not for synthetic).")
flags.DEFINE_string("data_dir", None, "Cache root for prepared datasets "
                    "(default $JAXREC_DATA_DIR or ~/.cache/jaxrec/data).")
flags.DEFINE_multi_string("option", [], "Reader option key=value, e.g. num_sessions=1000, "
                          "seed=1, preset=large, name=ml-100k (recbole file prefix).")


def parse_options(pairs) -> dict:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (ints and floats converted)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--option expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                continue
        out[k] = v
    return out


def format_stats(rows: list[dict]) -> str:
    """A plain-text table of statistics rows (dicts with the same keys)."""
    cols = list(rows[0].keys())
    cells = [[f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w)
                                  for i, (v, w) in enumerate(zip(vals, width)))
    return "\n".join([line(cols), line(["-" * w for w in width])] + [line(r) for r in cells])


def dataset_table(ds) -> str:
    row = ds.stats()
    for split in prep.SPLITS:
        row[f"{split} sessions"] = ds.splits[split].num_sessions
    return format_stats([row])


def main(argv):
    del argv
    raw = os.path.expanduser(FLAGS.raw_dir) if FLAGS.raw_dir else None
    options = parse_options(FLAGS.option)
    if FLAGS.dataset in readers.READERS:  # a typo is an error naming the accepted options
        readers.check_options(FLAGS.dataset, [k for k in options if k not in prep._SPLIT_KEYS])
    ds = prep.load(FLAGS.dataset, raw_dir=raw, data_dir=FLAGS.data_dir, **options)
    print(dataset_table(ds))


def run():
    """Console script ``jaxrec-data`` (same flags as ``python -m jaxrec.data.stats``)."""
    cli.run(main)


if __name__ == "__main__":
    run()
