"""The setup that the training benchmarks share: train.py's flags to a Trainer and data."""

import tensorflow as tf

import train  # defines the training flags
from msg_tf import dataset as dataset_lib
from msg_tf import training
from msg_tf.config import validate


def trainer_from_flags(strategy: tf.distribute.Strategy):
    """Return (Trainer, training dataset) built from train.py's flags as training builds them."""
    config = train.config_from_flags()
    validate(config)
    info = dataset_lib.inspect_dataset(config.dataset)
    config = training.resolve_config(config, info)
    trainer = training.Trainer(config, strategy)
    ds = dataset_lib.make_dataset(info, config.resolution, config.batch_size,
                                  mirror_augment=config.mirror_augment, seed=config.seed)
    return trainer, ds
