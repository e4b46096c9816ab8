"""Measure the input pipeline alone: images per second delivered, all levels, no model.

    python bench/data_throughput.py --dataset=datasets/emoji64 --resolution=64 --batch_size=16

Reads batches of every level from 4x4 to --resolution with mirror augmentation on, as
training does. After `--warmup_batches` it times `--repeats` runs of `--batches` batches
and prints one JSON line with the median.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from msg_tf import dataset as dataset_lib  # noqa: E402

flags.DEFINE_string("dataset", None, "Directory of the TFRecord pyramid.")
flags.DEFINE_integer("resolution", 0, "Top level to read (0: the dataset's top).")
flags.DEFINE_integer("batch_size", 16, "Images per batch.")
flags.DEFINE_integer("warmup_batches", 20, "Untimed batches (fills the cache and buffers).")
flags.DEFINE_integer("batches", 200, "Batches per timed repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
flags.mark_flag_as_required("dataset")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    info = dataset_lib.inspect_dataset(FLAGS.dataset)
    resolution = FLAGS.resolution or info.max_resolution
    ds = dataset_lib.make_dataset(info, resolution, FLAGS.batch_size, mirror_augment=True)
    iterator = iter(ds)
    for _ in range(FLAGS.warmup_batches):
        next(iterator)
    seconds = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            batch = next(iterator)
        batch[-1].numpy()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(json.dumps({
        "dataset": FLAGS.dataset, "resolution": resolution, "batch_size": FLAGS.batch_size,
        "num_images": info.num_images, "cached": info.total_bytes <= dataset_lib.CACHE_LIMIT_BYTES,
        "images_per_sec": FLAGS.batch_size * FLAGS.batches / median,
    }))


if __name__ == "__main__":
    app.run(main)
