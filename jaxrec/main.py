"""The single entry point: ``python -m jaxrec.main --config=configs/<method>.py:<args>
--workdir=DIR``. ``--config.x=y`` overrides any field on top of the config file.

Rerunning with the same ``--workdir`` resumes from the last checkpoint. A data, config or
checkpoint error prints one ``error:`` line and exits with status 2 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from jaxrec import experiment
from jaxrec import metrics as M
from jaxrec.train import sharding

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
    sharding.set_determinism(config)       # before any JAX computation
    # Several processes (SLURM, Open MPI, JAX_COORDINATOR_ADDRESS, ...): join the job
    # before any JAX work; a no-op in a single process (jaxrec.train.sharding).
    sharding.initialize_distributed()
    res = experiment.run(config, FLAGS.workdir)
    label = res["label"]
    if not sharding.is_writer():
        return
    print(f"\nTest metrics at the best validation step ({res['best_step']}) — "
          f"{res['dataset']}:")
    print(results_table({label: res}))
    print(f"\nresults: {FLAGS.workdir}/results.json")


def run():
    """Console script ``jaxrec-train`` (same flags as ``python -m jaxrec.main``)."""
    from jaxrec import cli
    cli.run(main)


if __name__ == "__main__":
    run()
