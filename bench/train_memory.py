"""Measure the peak tensor memory of a training iteration, for sizing GPU batches.

    python bench/train_memory.py --flagfile=configs/paper_progan_celebahq_1024.cfg \
        --batch_sizes=2,4

Takes train.py's flags and builds the models as training does, but feeds random images
instead of reading `--dataset`, so the `configs/paper_*.cfg` setups can be sized
without their data.
For each batch size it runs `--steps` full iterations on this machine's first device
and prints one JSON line with the peak bytes held by TensorFlow's allocator (weights,
optimizer slots, EMA copy and the activations kept for backpropagation). On a GPU
that is the figure that must fit, plus the CUDA context and cuDNN workspaces (an
estimate: a few hundred MB). The difference between two batch sizes gives the cost
per sample.
"""

import dataclasses
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import train  # noqa: E402,F401  (defines the training flags)
from msg_tf import training  # noqa: E402
from msg_tf.config import validate  # noqa: E402
from networks.msg_progan import scales_for  # noqa: E402

flags.DEFINE_list("batch_sizes", ["2", "4"], "Global batch sizes to measure.")
flags.DEFINE_integer("steps", 1, "Iterations per batch size (the first one traces).")
FLAGS = flags.FLAGS


def random_pyramid(batch_size: int, resolution: int, channels: int) -> list[tf.Tensor]:
    """Return images in [-1, 1], coarse to fine, each level the 2x2 mean of the next."""
    image = tf.random.uniform([batch_size, resolution, resolution, channels], -1.0, 1.0)
    levels = [image]
    for _ in scales_for(resolution)[:-1]:
        levels.insert(0, tf.nn.avg_pool2d(levels[0], 2, 2, "VALID"))
    return levels


def main(argv):
    del argv
    base = train.config_from_flags()
    if not base.resolution:
        raise app.UsageError("set --resolution: this benchmark reads no dataset")
    device = tf.config.list_logical_devices()[0].name
    strategy = tf.distribute.OneDeviceStrategy(device)
    for batch_size in (int(b) for b in FLAGS.batch_sizes):
        config = dataclasses.replace(base, batch_size=batch_size,
                                     num_channels=base.num_channels or 3,
                                     mbstd_group_size=min(base.mbstd_group_size, batch_size))
        validate(config)
        keras.utils.set_random_seed(config.seed)
        gc.collect()
        tf.config.experimental.reset_memory_stats(device)
        start_bytes = tf.config.experimental.get_memory_info(device)["current"]
        trainer = training.Trainer(config, strategy)
        reals = random_pyramid(batch_size, config.resolution, config.num_channels)
        start = time.perf_counter()
        for step in range(FLAGS.steps):
            float(trainer.train_step(reals, step)["Loss/D"])
        seconds = time.perf_counter() - start
        peak = tf.config.experimental.get_memory_info(device)["peak"] - start_bytes
        print(json.dumps({
            "arch": config.arch, "resolution": config.resolution, "loss": config.loss,
            "combine": config.combine, "batch_size": batch_size,
            "channel_base": config.channel_base, "channel_max": config.channel_max,
            "precision": config.mixed_precision, "device": device,
            "G_params": trainer.G.count_params(), "D_params": trainer.D.count_params(),
            "peak_tensor_gb": round(peak / 2**30, 3), "seconds": round(seconds, 1)}),
            flush=True)
        del trainer, reals


if __name__ == "__main__":
    app.run(main)
