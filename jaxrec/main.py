"""The single entry point: ``python -m jaxrec.main --config=configs/<method>.py:<args>
--workdir=DIR``. ``--config.x=y`` overrides any field on top of the config file.

Rerunning with the same ``--workdir`` resumes from the last checkpoint.
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

from jaxrec import metrics as M
from jaxrec.train import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sqn.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl).")
flags.mark_flags_as_required(["config", "workdir"])


def results_table(rows: dict) -> str:
    """rows: label -> results dict from :func:`jaxrec.train.loop.train`."""
    return M.format_table({k: v["test"] for k, v in rows.items()})


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    config = FLAGS.config
    res = loop.train(config, FLAGS.workdir)
    label = config.method + (f"/{config.model.encoder}" if config.method != "popularity"
                             else "")
    print(f"\nTest metrics at the best validation step ({res['best_step']}) — "
          f"{config.dataset.name}:")
    print(results_table({label: res}))
    print(f"\nresults: {FLAGS.workdir}/results.json")
    del res["state"]
    logging.info(json.dumps(res, default=str))


if __name__ == "__main__":
    app.run(main)
