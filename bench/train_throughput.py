"""Measure training throughput: images per second of full iterations (one D and one G step).

    python bench/train_throughput.py --flagfile=configs/demo_emoji64.cfg
    python bench/train_throughput.py --flagfile=configs/demo_emoji64.cfg --batch_size=32
    python bench/train_throughput.py --flagfile=configs/bench_progan32.cfg --xla

Takes the same flags as train.py. The models are built as train.py builds them, and
each iteration takes a batch from the real input pipeline, so the figure includes the
input cost that training pays. After `--warmup_steps` (graph tracing), `--repeats` timed runs of `--steps`
iterations each are made; the median is reported. Prints one JSON line.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from msg_tf import reporting  # noqa: E402
from trainer_setup import trainer_from_flags  # noqa: E402

flags.DEFINE_integer("warmup_steps", 3, "Untimed iterations before measuring.")
flags.DEFINE_integer("steps", 10, "Iterations per timed repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    strategy = tf.distribute.MirroredStrategy()
    trainer, ds = trainer_from_flags(strategy)
    config = trainer.config
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    step = 0
    for _ in range(FLAGS.warmup_steps):
        float(trainer.train_step(next(iterator), step)["Loss/D"])
        step += 1
    seconds = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            stats = trainer.train_step(next(iterator), step)
            step += 1
        float(stats["Loss/D"])  # wait for the last step
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    result = {
        "arch": config.arch, "resolution": config.resolution, "loss": config.loss,
        "combine": config.combine, "batch_size": config.batch_size,
        "channel_base": config.channel_base, "channel_max": config.channel_max,
        "latent_size": config.latent_size, "precision": config.mixed_precision,
        "xla": config.xla, "reuse_fakes": config.reuse_fakes,
        "replicas": strategy.num_replicas_in_sync,
        "G_params": trainer.G.count_params(), "D_params": trainer.D.count_params(),
        "steps": FLAGS.steps, "repeats": FLAGS.repeats,
        "sec_per_iteration": median / FLAGS.steps,
        "images_per_sec": config.batch_size * FLAGS.steps / median,
        "sec_per_kimg": median / FLAGS.steps / config.batch_size * 1000,
        "peak_rss_gb": reporting.memory_stats()["mem/peak_rss_gb"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
