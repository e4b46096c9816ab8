"""Measure Inception-v3 feature extraction speed: images per second through pool3.

    python bench/feature_throughput.py [--inception_weights=FILE] [--batch_size=32]
        [--resolution=64] [--repeats=3]

Uses the converted weights if they are found (flag, $MSG_TF_INCEPTION_WEIGHTS or the
cache path) and random weights otherwise. The "weights" field of the output names them. Throughput does not
depend on the weight values. Inputs are random uint8 images at --resolution, which the
network resizes to 299x299. After one untimed call (graph tracing), --repeats timed
calls are made and the median is reported. Prints one JSON line.
"""

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from metrics import inception  # noqa: E402

flags.DEFINE_string("inception_weights", None, "Converted Inception weights (.weights.h5).")
flags.DEFINE_integer("batch_size", 32, "Images per call.")
flags.DEFINE_integer("resolution", 64, "Side of the input images in pixels.")
flags.DEFINE_integer("repeats", 3, "Timed calls; the median is reported.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        extractor = inception.InceptionFeatures.load(FLAGS.inception_weights)
        weights = extractor.weights_path
    except inception.InceptionWeightsError:
        extractor = inception.InceptionFeatures.random(seed=0)
        weights = "random"
    images = np.random.default_rng(0).integers(
        0, 256, (FLAGS.batch_size, FLAGS.resolution, FLAGS.resolution, 3), dtype=np.uint8)
    extractor(images)
    seconds = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        extractor(images)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    gpus = tf.config.list_physical_devices("GPU")
    print(json.dumps({
        "benchmark": "inception_feature_throughput",
        "images_per_sec": round(FLAGS.batch_size / median, 2),
        "batch_size": FLAGS.batch_size,
        "resolution": FLAGS.resolution,
        "weights": weights,
        "device": "GPU" if gpus else "CPU",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "seconds_per_batch": [round(s, 3) for s in seconds],
    }))


if __name__ == "__main__":
    app.run(main)
