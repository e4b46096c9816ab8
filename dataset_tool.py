"""Build and inspect msg-tf TFRecord pyramid datasets.

Usage:
  python dataset_tool.py create_from_images TFRECORD_DIR IMAGE_DIR [--resolution=N]
      [--channels=1|3] [--shuffle] [--seed=N] [--overwrite | --exist_ok] [--skip_bad]
      [--progress_interval=N] [--jobs=N]
  python dataset_tool.py info TFRECORD_DIR
  python dataset_tool.py extract TFRECORD_DIR OUTPUT_DIR [--overwrite]

create_from_images writes TFRECORD_DIR/<name>-rNN.tfrecords for every level
from 4x4 up to the resolution, where <name> is the basename of TFRECORD_DIR.
info prints the levels, record counts, record shape and labels, and exits with
status 1 if the levels disagree in record count or shape. extract writes
every record back as PNG into OUTPUT_DIR/rNN/000000.png, ...

msg_tf.dataset_builder, which imports TensorFlow (seconds), is imported in
functions only. The worker processes of create_from_images import this script
again, as Python's forkserver and spawn start methods do with the main module,
and they need no TensorFlow.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from msg_tf.errors import DatasetError

FLAGS = flags.FLAGS


def define_flags() -> None:
    from msg_tf import dataset_builder

    flags.DEFINE_integer(
        "resolution", None,
        "Output side length in pixels, a power of two from 4 to 1024. Default: the size of the "
        "first image, if every image is square with a power-of-two side.",
    )
    flags.DEFINE_enum(
        "channels", None, ["1", "3"],
        "Channels of the dataset. Default: 1 if every image is grayscale, else 3.",
    )
    flags.DEFINE_bool("shuffle", False, "Shuffle the record order (reproducibly, see --seed).")
    flags.DEFINE_integer("seed", dataset_builder.DEFAULT_SEED, "Random seed for --shuffle.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty output directory.")
    flags.DEFINE_bool(
        "exist_ok", False,
        "create_from_images: if TFRECORD_DIR already holds a readable dataset, keep it and exit "
        "with status 0 instead of failing (it is not compared with IMAGE_DIR).",
    )
    flags.DEFINE_bool(
        "skip_bad", False, "Skip unreadable or unsupported images instead of stopping."
    )
    flags.DEFINE_integer(
        "progress_interval", dataset_builder.DEFAULT_PROGRESS_INTERVAL,
        "Log progress every this many images.",
    )
    flags.DEFINE_integer(
        "jobs", 0,
        "create_from_images: number of worker processes that decode and encode the images. "
        "0 starts one per CPU; 1 starts none and encodes in this process. The dataset files "
        "are the same for every value.",
    )


# Subcommand name -> number of positional arguments it takes.
COMMANDS = {"create_from_images": 2, "info": 1, "extract": 2}


def run_command(command: str, args: list[str]) -> None:
    from msg_tf import dataset_builder

    if command == "create_from_images":
        tfrecord_dir, image_dir = args
        if FLAGS.exist_ok and not FLAGS.overwrite and os.path.isdir(tfrecord_dir):
            # Both raise DatasetError for a directory that is not a complete dataset.
            info = dataset_builder.describe_dataset(tfrecord_dir)
            dataset_builder.check_dataset(info)
            logging.info("dataset %r already exists; left unchanged (--exist_ok)\n%s",
                         tfrecord_dir, info.summary())
            return
        # The library logs the final report, so nothing is printed here.
        dataset_builder.create_from_images(
            tfrecord_dir,
            image_dir,
            resolution=FLAGS.resolution,
            channels=None if FLAGS.channels is None else int(FLAGS.channels),
            shuffle=FLAGS.shuffle,
            seed=FLAGS.seed,
            overwrite=FLAGS.overwrite,
            skip_bad=FLAGS.skip_bad,
            progress_interval=FLAGS.progress_interval,
            jobs=FLAGS.jobs,
        )
    elif command == "info":
        info = dataset_builder.describe_dataset(args[0])
        # The summary comes first so that an inconsistent dataset can still be inspected.
        print(info.summary(), flush=True)
        dataset_builder.check_dataset(info)
    elif command == "extract":
        tfrecord_dir, output_dir = args
        counts = dataset_builder.extract_dataset(tfrecord_dir, output_dir, FLAGS.overwrite)
        for res_log2, count in counts.items():
            print(f"r{res_log2:02d}: {count} images")
        print(f"output: {output_dir}")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = repr(argv[1]) if len(argv) > 1 else "none"
        raise app.UsageError(
            f"unknown or missing command ({given}); expected one of {', '.join(COMMANDS)}"
        )
    command, args = argv[1], argv[2:]
    if len(args) != COMMANDS[command]:
        raise app.UsageError(
            f"{command} takes {COMMANDS[command]} positional argument(s), got {len(args)}: {args}"
        )

    try:
        run_command(command, args)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
