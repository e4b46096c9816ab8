"""Compute FID, KID, IS and SWD, or convert the Inception weights they need.

Usage:
  python calc_metrics.py --metrics=fid10k,swd1k --network=results/00000-emoji
      [--data=DATASET] [--inception_weights=FILE]
  python calc_metrics.py --metrics=fid1k --data=REAL_DIR_OR_DATASET --images=OTHER
  python calc_metrics.py convert_inception SRC OUT.weights.h5 [--format=torchscript]

With --network (a run directory or checkpoint prefix), the generator's EMA weights are
evaluated against the run's dataset (or --data), each result is appended as one JSON
line to <run_dir>/metric-<name>.jsonl and logged to TensorBoard in the run directory.
With --images, the images of a folder or dataset are evaluated against --data and the
results are only printed. See docs/metrics.md for metric names.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_list("metrics", ["fid10k"], "Metrics to compute, e.g. fid10k,kid10k,is10k,swd1k.")
flags.DEFINE_string("network", None, "Run directory or checkpoint prefix of the generator.")
flags.DEFINE_string("data", None,
                    "Real images: a dataset folder of dataset_tool.py or a folder of image "
                    "files (default with --network: the run's training dataset).")
flags.DEFINE_string("images", None,
                    "Images to evaluate instead of a generator: a dataset folder or a "
                    "folder of image files.")
flags.DEFINE_string("inception_weights", None,
                    "Converted Inception weights (.weights.h5). Default: "
                    "$MSG_TF_INCEPTION_WEIGHTS, then "
                    "~/.cache/msg_tf/inception-2015-12-05.weights.h5.")
flags.DEFINE_string("cache_dir", None,
                    "Folder for cached real-image features (default "
                    "~/.cache/msg_tf/real_stats).")
flags.DEFINE_integer("batch_size", 32, "Images per generator and Inception call.")
flags.DEFINE_integer("seed", 0, "Seed of the latents and of the random parts of KID and SWD.")
flags.DEFINE_enum("format", None, ["torchscript", "state_dict", "graphdef"],
                  "convert_inception: the source format (default: detected from the file).")


def _is_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and any(name.endswith(".tfrecords") for name in os.listdir(path))


def _path_source(path: str, spec, resolution: int | None, role: str, count: int | None):
    """Build an image source for a dataset or a folder given on the command line."""
    from metrics import images
    from msg_tf import dataset

    if not os.path.exists(path):
        raise images.ImageSourceError(f"{role} path {path} not found")
    if _is_dataset_dir(path):
        info = dataset.inspect_dataset(path)
        resolution = resolution or info.max_resolution
        if count is not None and count > info.num_images:
            _warn_short(spec, role, path, info.num_images, count)
        count = info.num_images if count is None else min(count, info.num_images)
        return images.dataset_source(info, resolution, count, batch_size=FLAGS.batch_size)
    source = images.folder_source(path, count, batch_size=FLAGS.batch_size)
    if count is not None and source.num_images < count:
        _warn_short(spec, role, path, source.num_images, count)
    if spec.per_scale:
        raise images.ImageSourceError(f"{spec.name} needs a multi-level dataset, but {path} "
                                      "is a folder of image files")
    return source


def _warn_short(spec, role, path, available, count):
    # FID is biased upwards at small counts, so a value computed on fewer images than
    # the metric's name says is not comparable with others of that name.
    logging.warning("%s: %s %s holds only %d images, fewer than the %d the metric name "
                    "implies; the value is computed on %d and is not comparable with "
                    "%s values on %d images", spec.name, role, path, available, count,
                    available, spec.name, count)


def _evaluate_images(name: str) -> dict:
    from metrics import registry

    spec = registry.parse_metric_name(name)
    fakes = _path_source(FLAGS.images, spec, None, "--images", spec.num_generated)
    reals = None
    if spec.kind != "is":
        if not FLAGS.data:
            raise ValueError(f"{name} compares two image sets: pass --data")
        count = None if spec.full else spec.num_generated
        reals = _path_source(FLAGS.data, spec, fakes.resolutions[-1], "--data", count)
    return registry.compute_on_sources(spec, reals, fakes,
                                       weights_path=FLAGS.inception_weights,
                                       cache_dir=FLAGS.cache_dir or registry.DEFAULT_CACHE_DIR,
                                       seed=FLAGS.seed)


def _generate_fn(G, is_stylegan: bool):
    import numpy as np

    def generate(z):
        # Constant noise makes a seed reproduce the same images.
        outputs = G(z, noise_mode="const") if is_stylegan else G(z, training=False)
        return [np.asarray(images) for images in outputs]

    return generate


def _kimg_of(prefix: str) -> float | None:
    # Checkpoints are numbered by the count of images shown (ckpt-40000 = 40 kimg).
    suffix = prefix.rsplit("-", 1)[-1]
    return int(suffix) / 1000 if suffix.isdigit() else None


def _evaluate_network(names: list[str]) -> list[dict]:
    from metrics import registry
    from msg_tf import dataset, inference, reporting

    G, config, prefix = inference.load_generator(FLAGS.network)
    run_dir = os.path.dirname(os.path.dirname(prefix))
    data_path = FLAGS.data or config.dataset
    info = dataset.inspect_dataset(data_path)
    generate = _generate_fn(G, config.arch == "stylegan")
    kimg = _kimg_of(prefix)
    records = []
    reporter = reporting.Reporter(run_dir)
    for name in names:
        start = time.time()
        results = registry.compute_metric(
            name, generate, info, num_channels=info.num_channels,
            latent_size=config.latent_size, batch_size=FLAGS.batch_size,
            weights_path=FLAGS.inception_weights, cache_dir=FLAGS.cache_dir, seed=FLAGS.seed)
        records.append(reporting.write_metric(
            run_dir, reporter, name, results, snapshot=prefix, kimg=kimg,
            seconds=time.time() - start, data=data_path))
    reporter.close()
    return records


def _convert(argv: list[str]) -> None:
    from metrics import convert_inception

    if len(argv) != 4:
        raise app.UsageError("usage: calc_metrics.py convert_inception SRC OUT.weights.h5 "
                             "[--format=torchscript|state_dict|graphdef]")
    sidecar = convert_inception.convert(argv[2], argv[3], FLAGS.format)
    print(json.dumps(sidecar, sort_keys=True))


def run(argv: list[str]) -> None:
    from metrics import registry

    if len(argv) > 1 and argv[1] == "convert_inception":
        _convert(argv)
        return
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: the only subcommand is "
                             "convert_inception")
    # Names are checked before any slow loading, so a typo fails at once.
    for name in FLAGS.metrics:
        registry.parse_metric_name(name)
    if bool(FLAGS.network) == bool(FLAGS.images):
        raise app.UsageError("pass exactly one of --network (a generator) and --images "
                             "(a folder or dataset)")
    if FLAGS.network:
        for record in _evaluate_network(FLAGS.metrics):
            print(json.dumps(record, sort_keys=True))
    else:
        for name in FLAGS.metrics:
            start = time.time()
            results = _evaluate_images(name)
            print(json.dumps({"metric": name, "results": results, "value": results.get(name),
                              "images": FLAGS.images, "data": FLAGS.data,
                              "time": round(time.time() - start, 2)}, sort_keys=True))


def main(argv: list[str]) -> None:
    from metrics.convert_inception import ConversionError
    from metrics.inception import InceptionWeightsError
    from metrics.images import ImageSourceError
    from metrics.torch_pickle import TorchFileError, UnsafePickleError
    from msg_tf.config import ConfigError
    from msg_tf.tfrecord_format import DatasetError

    try:
        run(argv)
    except (ConversionError, InceptionWeightsError, ImageSourceError, TorchFileError,
            UnsafePickleError, ConfigError, DatasetError, ValueError) as error:
        logging.debug("calc_metrics failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
