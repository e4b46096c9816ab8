"""Measure `create_from_images`: images per second from an image folder to a TFRecord pyramid.

    python bench/dataset_tool_throughput.py --images=data/emoji64 --copies=10 --jobs=2

With `--copies=N` the folder's images are repeated N times (as symlinks in a temporary
folder), so a 1,000-image folder gives a 10,000-image run. Prints one JSON line.

msg_tf.dataset_builder, which imports TensorFlow, is imported inside main(): the worker
processes import this script again, and a TensorFlow import there would be timed too.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("images", None, "Folder of input images.")
flags.DEFINE_integer("copies", 1, "Repeat the folder's images this many times.")
flags.DEFINE_integer("resolution", None, "Dataset resolution (default: from the images).")
flags.DEFINE_integer(
    "jobs", 0, "Worker processes of create_from_images: 0 is one per CPU, 1 is none."
)
flags.mark_flag_as_required("images")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from msg_tf import dataset_builder

    logging.set_verbosity(logging.WARNING)
    paths, _ = dataset_builder.discover_images(FLAGS.images)
    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "images")
        for copy in range(FLAGS.copies):
            copy_dir = os.path.join(folder, f"copy{copy:03d}")
            os.makedirs(copy_dir)
            for index, path in enumerate(paths):
                extension = os.path.splitext(path)[1]
                os.symlink(os.path.abspath(path),
                           os.path.join(copy_dir, f"{index:06d}{extension}"))
        start = time.perf_counter()
        report = dataset_builder.create_from_images(os.path.join(work, "dataset"), folder,
                                                    resolution=FLAGS.resolution, jobs=FLAGS.jobs)
        seconds = time.perf_counter() - start
    print(json.dumps({"images": report.images_written, "resolution": report.resolution,
                      "jobs": dataset_builder.resolve_jobs(FLAGS.jobs), "seconds": seconds,
                      "images_per_sec": report.images_written / seconds}))


if __name__ == "__main__":
    app.run(main)
