"""A tiny absl program run through jaxrec.cli.run, for tests/test_cli.py (not a test).

    python tests/cli_program.py --config=cfg.py:args [--config.x=y] [--fail=KIND] [--debug]

Prints the config and exits 0, or raises the exception named by ``--fail``.
"""

from absl import flags
from ml_collections import config_flags

from jaxrec import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_enum("fail", "none", ["none", "data", "key", "value", "diverged", "checkpoint",
                                   "missing_file", "bug", "interrupt", "exit3"],
                  "Which exception main raises.")


def main(argv):
    del argv
    kind = FLAGS.fail
    print(f"n={FLAGS.config.n}")
    if kind == "data":
        from jaxrec.data.events import DataFormatError
        raise DataFormatError("/data/u.data", "field 3 (rating): expected an integer rating "
                              "from 1 to 5, got '6'", 4)
    if kind == "key":
        raise KeyError("unknown raw format 'csv'; known: retailrocket, yoochoose")
    if kind == "value":
        raise ValueError("bad value\nsecond line")
    if kind == "diverged":
        from jaxrec.train.loop import NonFiniteLossError
        raise NonFiniteLossError("non-finite training loss at step 4 (of 10)")
    if kind == "checkpoint":
        from jaxrec.train.checkpoint import CheckpointMismatchError
        raise CheckpointMismatchError("/w/checkpoints/8", 8, "params.w",
                                      "leaf 'params.w' has shape (3,) in the checkpoint, "
                                      "(4,) expected")
    if kind == "missing_file":
        open("/nonexistent/file.txt")
    if kind == "bug":
        raise TypeError("unsupported operand type(s)")
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "exit3":
        return 3
    return 0


if __name__ == "__main__":
    cli.run(main)
