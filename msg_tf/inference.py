"""Load a trained generator (G_ema) from a run directory or one of its checkpoints."""

import json
import os

import keras
import tensorflow as tf

from msg_tf import reporting
from msg_tf.config import ConfigError, TrainingConfig
from msg_tf.training import CHECKPOINT_DIR, build_generator, variables_by_path


def find_checkpoint(path: str) -> tuple[str, str]:
    """Return (run_dir, checkpoint prefix) for a run directory or a checkpoint prefix.

    `path` may be a run directory (its newest checkpoint is used), its `checkpoints/`
    folder, or a prefix such as `results/00000-x/checkpoints/ckpt-40000`.
    """
    path = os.path.normpath(path)
    if os.path.isdir(path):
        checkpoint_dir = path
        if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
            checkpoint_dir = os.path.join(path, CHECKPOINT_DIR)
        prefix = tf.train.latest_checkpoint(checkpoint_dir)
        if prefix is None:
            raise ConfigError(f"no checkpoint found in {path}: pass a run directory of "
                              "train.py that has saved at least one checkpoint")
    elif os.path.exists(path + ".index"):
        prefix = path
    else:
        raise ConfigError(f"{path} is neither a run directory nor a checkpoint prefix "
                          "(a path whose .index file exists, e.g. .../checkpoints/ckpt-40000)")
    run_dir = os.path.dirname(os.path.dirname(prefix))
    return run_dir, prefix


def load_config(run_dir: str) -> TrainingConfig:
    path = os.path.join(run_dir, reporting.OPTIONS_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: the checkpoint must sit in a run directory "
                          "written by train.py, which stores the model options there")
    with open(path) as f:
        saved = json.load(f)
    known = {name: saved[name] for name in TrainingConfig.__dataclass_fields__ if name in saved}
    return TrainingConfig(**known)


def load_generator(path: str) -> tuple[keras.Model, TrainingConfig, str]:
    """Build the generator of a run and restore its EMA weights (G_ema).

    Returns (G_ema, the run's options, the checkpoint prefix used).
    """
    run_dir, prefix = find_checkpoint(path)
    config = load_config(run_dir)
    G = build_generator(config, name="G_ema")
    names = {name for name, _ in tf.train.list_variables(prefix)}
    if not any(name.startswith("G_ema/") for name in names):
        raise ConfigError(f"checkpoint {prefix} contains no G_ema variables, so it is not a "
                          "train.py checkpoint with a generator: pass a run directory or a "
                          "checkpoint written by train.py")
    status = tf.train.Checkpoint(G_ema=variables_by_path(G.weights)).restore(prefix)
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ConfigError(
            f"checkpoint {prefix} does not match the generator described by "
            f"{os.path.join(run_dir, reporting.OPTIONS_FILE)} ({error}): the options file "
            "and the checkpoint come from different runs or versions of train.py") from error
    return G, config, prefix
