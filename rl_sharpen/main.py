"""Entry point: python -m rl_sharpen.main --config=configs/demo.py --workdir=/tmp/run [--config.a.b=v]

Modes (config.mode): rl, sft, eval, demo, binary_rewards. On TPU pods every host runs this same
command and `--multihost` starts JAX's multi-controller runtime (jax.distributed.initialize) first.
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/<x>.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() before anything else (TPU pods, "
                                      "multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


class _QuietLibraries(pylogging.Filter):
    """Drops the INFO chatter of orbax (one line per file written) from the absl log."""

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def _innermost_message(error: BaseException) -> str:
    while error.args and isinstance(error.args[0], BaseException):  # ml_collections wraps a KeyError
        error = error.args[0]
    return str(error.args[0]) if error.args else str(error)


def _overridden_fields(argv) -> set[str]:
    """The dotted field names of every `--config.a.b=v` (or boolean `--noconfig.a.b`) override: {'a', 'b'}."""
    return {name for arg in argv for prefix in ("--config.", "--noconfig.") if arg.startswith(prefix)
            for name in arg[len(prefix):].split("=", 1)[0].split(".")}


def parse_flags(argv):
    """absl's flag parsing, with a misspelled `--config.a.b` field as one line instead of a traceback."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: "'x'\nDid you mean "y" instead of "x"?"
        message = _innermost_message(e)
        unknown = message.split("\n", 1)[0].strip("'\"")
        if unknown not in _overridden_fields(argv):  # raised by the config file itself: its traceback
            raise
        hint = ""
        if any(arg.split("=", 1)[0] == f"--config.model.custom.{unknown}" for arg in argv):
            hint = (" (model.custom holds only the keys its config file sets; to add one, pass the whole dict: "
                    "--config.model.custom='{\"family\": ..., ...}')")
        sys.exit("FATAL Flags parsing error: a --config override names an unknown field: "
                 + message.replace("\n", " ") + hint)
    except flags.Error as e:
        message = str(e)
        if "Traceback" in message:  # get_config raised: its own error line, not the config loader's traceback
            message = message.split(": Error whilst parsing", 1)[0] + ": " + message.rstrip().splitlines()[-1]
        sys.exit(f"FATAL Flags parsing error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
        FLAGS.config.get("mode")  # a config file that failed to load raises here, naming the failure
    except OSError as e:
        sys.exit(f"config error: --config: {e.__cause__ or e}")
    import jax

    if FLAGS.multihost:
        jax.distributed.initialize()
    from rl_sharpen import experiment
    from rl_sharpen.checkpoint import CheckpointMismatch, Preempted
    from rl_sharpen.config import ConfigError

    logging.info("JAX process %d/%d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    try:
        experiment.run(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:  # a wrong config value: its message (field and allowed values), not a traceback
        sys.exit(f"config error: {e}")
    except CheckpointMismatch as e:  # a restart with a config its checkpoints refuse: the changed fields
        sys.exit(f"cannot resume: {e}")
    except Preempted as e:  # SIGTERM under --multihost: the agreed step is saved; a failure for the scheduler
        sys.exit(f"preempted: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
