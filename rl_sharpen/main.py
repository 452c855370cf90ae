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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    if FLAGS.multihost:
        jax.distributed.initialize()
    from rl_sharpen import experiment
    from rl_sharpen.config import ConfigError

    logging.info("JAX process %d/%d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    try:
        experiment.run(FLAGS.config, FLAGS.workdir)
    except ConfigError as e:  # a wrong config value: its message (field and allowed values), not a traceback
        sys.exit(f"config error: {e}")


if __name__ == "__main__":
    app.run(main)
