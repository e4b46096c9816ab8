"""Build, inspect and extract TFRecord pyramid datasets from image folders.

The library side of `dataset_tool.py`. Every user-facing problem raises
`DatasetError` with a message naming the value and the fix. Output is first
written to a temporary sibling directory and renamed into place only when it
is complete, so an error or interrupt leaves no half-written dataset.

File paths appear in messages and logs as Python `repr`. So a name with
spaces shows its quotes, and bytes that are not valid UTF-8, which `os` keeps
as surrogate escapes, appear as backslash escapes and do not break a UTF-8 log.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

# The image functions are re-exported for callers of this module, such as metrics/images.py.
from msg_tf.image_loading import (  # noqa: F401
    GRAYSCALE_MODES,
    SIXTEEN_BIT_MODES,
    SUPPORTED_MODES,
    BadImage,
    ImageInfo,
    check_image_chunk,
    check_mode,
    convert_mode,
    encode_image_chunk,
    fit_to_square,
    image_to_chw,
    open_image,
    to_base_mode,
)
from msg_tf.ordered_pool import OrderedPool
from msg_tf.tfrecord_format import (
    MAX_RES_LOG2,
    MIN_RES_LOG2,
    DatasetError,
    LevelInfo,
    check_levels,
    find_levels,
    labels_file_name,
    level_file_name,
    parse_example_numpy,
    read_level_info,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

DEFAULT_SEED = 123
DEFAULT_PROGRESS_INTERVAL = 1000

# Maximum images per task sent to a worker process. Larger chunks spread the cost of a
# round trip between processes over more images, smaller ones share the work more evenly.
MAX_CHUNK_IMAGES = 64
# Approximate maximum bytes of serialized records per chunk. It matters at high
# resolutions (a 1024x1024 RGB pyramid is 4 MiB), because up to two chunks per worker
# are in flight and their results are held in memory.
MAX_CHUNK_BYTES = 16 * 2**20


@dataclasses.dataclass
class BuildReport:
    """Summary of one `create_from_images` run."""

    output_dir: str
    name: str
    resolution: int
    channels: int
    levels: list[int]  # res_log2 of each written level, coarse to fine
    images_written: int = 0
    skipped_bad: list[str] = dataclasses.field(default_factory=list)
    resized_or_cropped: int = 0
    input_modes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    conversions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ignored_files: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Format the report as log lines."""
        resolutions = ", ".join(str(2**r) for r in self.levels)
        lines = [
            f"images written:      {self.images_written}",
            f"skipped (bad):       {len(self.skipped_bad)}",
            f"resized or cropped:  {self.resized_or_cropped}",
            f"input modes:         {_format_counter(self.input_modes)}",
            f"mode conversions:    {_format_counter(self.conversions)}",
            f"ignored non-images:  {len(self.ignored_files)}",
            f"output:              {self.output_dir}",
            f"levels:              {len(self.levels)} ({resolutions}), "
            f"{self.channels} channel(s)",
        ]
        for path in self.skipped_bad:
            lines.append(f"skipped bad image:   {path!r}")
        return "\n".join(lines)


@dataclasses.dataclass
class DatasetInfo:
    """Facts about a dataset directory, as reported by `dataset_tool.py info`."""

    directory: str
    name: str
    levels: list[LevelInfo]
    labels_path: str | None
    labels_shape: tuple[int, ...] | None
    labels_dtype: str | None

    def summary(self) -> str:
        """Format the dataset facts as text lines."""
        lines = [f"dataset: {self.name} in {self.directory}"]
        for level in self.levels:
            side = 2**level.res_log2
            lines.append(
                f"  r{level.res_log2:02d} {side:>4}x{side:<4} records={level.num_records} "
                f"shape={level.shape}  {os.path.basename(level.path)}"
            )
        if self.labels_path is None:
            lines.append("labels: none")
        else:
            lines.append(
                f"labels: {os.path.basename(self.labels_path)} shape={list(self.labels_shape)} "
                f"dtype={self.labels_dtype}"
            )
        return "\n".join(lines)


def _format_counter(counter: collections.Counter) -> str:
    if not counter:
        return "none"
    return ", ".join(f"{key}: {count}" for key, count in sorted(counter.items()))


# ---------------------------------------------------------------------------
# Discovery and loading


def discover_images(image_dir: str) -> tuple[list[str], list[str]]:
    """Walk `image_dir` recursively in sorted order.

    Files of a directory come before its subdirectories. Returns the image
    file paths (by extension, case-insensitive) and the paths of all other
    files, which are ignored.

    Symlinked directories are followed, but each directory is walked only once.
    A link to a directory already walked (a symlink loop, or a second link to
    the same folder) is skipped with a warning. So the walk always ends, and no
    image is read twice through two links.
    """
    if not os.path.isdir(image_dir):
        raise DatasetError(
            f"image directory {image_dir!r} not found. Pass an existing folder of images."
        )

    images: list[str] = []
    ignored: list[str] = []
    walked: dict[tuple[int, int], str] = {}
    for root, dirs, files in os.walk(image_dir, followlinks=True):
        root_stat = os.stat(root)
        walked.setdefault((root_stat.st_dev, root_stat.st_ino), root)
        # Pruning and sorting `dirs` in place controls where os.walk descends, and in what order.
        kept_dirs = []
        for dir_name in sorted(dirs):
            path = os.path.join(root, dir_name)
            try:
                dir_stat = os.stat(path)
            except OSError as error:
                logging.warning("skipping directory %r: %s", path, error)
                continue
            key = (dir_stat.st_dev, dir_stat.st_ino)
            if key in walked:
                logging.warning(
                    "skipping %r: it links to %r, which is already walked (symlink loop "
                    "or duplicate link)", path, walked[key],
                )
                continue
            walked[key] = path
            kept_dirs.append(dir_name)
        dirs[:] = kept_dirs

        for file_name in sorted(files):
            path = os.path.join(root, file_name)
            if os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(path)
            else:
                ignored.append(path)
    return images, ignored


def resolve_jobs(jobs: int) -> int:
    """Return the number of worker processes for `jobs`, where 0 means one per CPU.

    The CPUs counted are those this process may run on (`os.sched_getaffinity`),
    or all of them (`os.cpu_count`) on systems without affinity masks.
    """
    if jobs < 0:
        raise DatasetError(
            f"invalid --jobs={jobs}; expected 0 (one worker process per CPU), 1 (encode in "
            f"this process) or a larger number of worker processes"
        )
    if jobs > 0:
        return jobs
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def chunk_size(num_images: int, workers: int, bytes_per_image: int = 0) -> int:
    """Return how many images to send to a worker per task.

    It aims at four or more chunks per worker, so that the workers finish at
    about the same time, within MAX_CHUNK_IMAGES and MAX_CHUNK_BYTES.
    """
    size = min(math.ceil(num_images / (4 * workers)), MAX_CHUNK_IMAGES)
    if bytes_per_image > 0:
        size = min(size, MAX_CHUNK_BYTES // bytes_per_image)
    return max(size, 1)


@contextlib.contextmanager
def _explain_worker_exit() -> Iterator[None]:
    try:
        yield
    except BrokenProcessPool as error:
        raise DatasetError(
            f"a worker process exited while decoding images: {error} If the system stopped "
            f"it for lack of memory, run again with a smaller --jobs, or with --jobs=1 to "
            f"decode in this process."
        ) from error


def scan_images(
    paths: Sequence[str],
    skip_bad: bool,
    progress_interval: int = DEFAULT_PROGRESS_INTERVAL,
    pool: OrderedPool | None = None,
) -> tuple[list[ImageInfo], list[str]]:
    """Decode every image once to check it, and record its mode and size.

    An image is bad if Pillow cannot decode it or its mode has no conversion
    (see `to_base_mode`). With `skip_bad`, bad files are logged and returned
    in the second list; without it the first one raises DatasetError. The
    images are decoded in the worker processes of `pool`, or in this process
    if it is None.
    """
    if pool is None:
        pool = OrderedPool(1)
    check_chunk = functools.partial(check_image_chunk, skip_bad=skip_bad)
    results = pool.map(check_chunk, paths, chunk_size(len(paths), pool.workers))

    infos: list[ImageInfo] = []
    bad: list[str] = []
    with _explain_worker_exit():
        for count, result in enumerate(results, start=1):
            if isinstance(result, BadImage):
                logging.warning("skipping bad image %r: %s", result.path, result.reason)
                bad.append(result.path)
            else:
                infos.append(result)
            if count % progress_interval == 0:
                logging.info("checked %d / %d images", count, len(paths))
    return infos, bad


# ---------------------------------------------------------------------------
# Choosing defaults


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def check_resolution(resolution: int) -> None:
    """Raise DatasetError unless `resolution` is a power of two from 4 to 1024."""
    if not _is_power_of_two(resolution) or not (
        2**MIN_RES_LOG2 <= resolution <= 2**MAX_RES_LOG2
    ):
        raise DatasetError(
            f"invalid --resolution={resolution}; expected a power of two from "
            f"{2**MIN_RES_LOG2} to {2**MAX_RES_LOG2}"
        )


def choose_resolution(infos: Sequence[ImageInfo], image_dir: str) -> int:
    """Return the size of the first image if every image is a square power of two.

    Raises DatasetError asking for --resolution otherwise.
    """
    for info in infos:
        if info.width != info.height or not _is_power_of_two(info.width):
            raise DatasetError(
                f"{info.path!r} is {info.width}x{info.height}, so the images in "
                f"{image_dir!r} are not all square with a power-of-two side. Pass "
                f"--resolution (a power of two from {2**MIN_RES_LOG2} to "
                f"{2**MAX_RES_LOG2}) to centre-crop and resize them."
            )
    resolution = infos[0].width
    if not 2**MIN_RES_LOG2 <= resolution <= 2**MAX_RES_LOG2:
        raise DatasetError(
            f"the first image {infos[0].path!r} is {resolution}x{resolution}, outside the "
            f"supported {2**MIN_RES_LOG2}..{2**MAX_RES_LOG2}. Pass --resolution."
        )
    return resolution


def choose_channels(infos: Sequence[ImageInfo]) -> int:
    """Return 1 if every image has a grayscale mode, else 3."""
    return 1 if all(info.mode in GRAYSCALE_MODES for info in infos) else 3


# ---------------------------------------------------------------------------
# Output directories


def _is_dataset_file(file_name: str) -> bool:
    return file_name.endswith(".tfrecords") or file_name.endswith(".labels")


def check_separate_dirs(output_dir: str, image_dir: str) -> None:
    """Raise DatasetError if the output and image directories contain one another.

    Output inside the input would be walked as input by the next run. Input
    inside the output would be deleted by --overwrite. Symlinks are resolved
    before comparing.
    """
    real_output = os.path.realpath(output_dir)
    real_input = os.path.realpath(image_dir)
    if os.path.commonpath([real_output, real_input]) == real_input:
        raise DatasetError(
            f"output directory {output_dir!r} is inside the image directory {image_dir!r}, "
            f"so a later run would read the dataset's own output as input. Choose an output "
            f"directory outside {image_dir!r}."
        )
    if os.path.commonpath([real_output, real_input]) == real_output:
        raise DatasetError(
            f"image directory {image_dir!r} is inside the output directory {output_dir!r}, "
            f"which --overwrite would replace. Choose an output directory outside "
            f"{image_dir!r}."
        )


def check_utf8_path(path: str) -> None:
    """Raise DatasetError if `path` is not valid UTF-8, which TensorFlow file APIs require."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(
            f"output path {path!r} is not valid UTF-8, and TensorFlow cannot write files "
            f"there. Choose an output directory whose name is valid UTF-8."
        ) from None


def check_output_dir(output_dir: str, overwrite: bool, dataset_files_only: bool) -> None:
    """Raise DatasetError if `output_dir` may not be (re)written.

    An existing non-empty directory needs `overwrite`. With `dataset_files_only`,
    `overwrite` still rejects a directory containing other files, so a wrong
    path cannot wipe unrelated data.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DatasetError(f"output path {output_dir!r} exists and is not a directory")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    if not overwrite:
        raise DatasetError(
            f"output directory {output_dir!r} already exists and is not empty. Choose "
            f"another directory, or pass --overwrite to replace it (create_from_images "
            f"also takes --exist_ok to keep an existing dataset and exit successfully)."
        )
    if dataset_files_only:
        foreign = sorted(f for f in os.listdir(output_dir) if not _is_dataset_file(f))
        if foreign:
            raise DatasetError(
                f"--overwrite would delete {output_dir!r}, which contains files that are not "
                f"part of a dataset (e.g. {foreign[0]!r}). Remove them by hand or choose "
                f"another directory."
            )


@contextlib.contextmanager
def staged_output_dir(output_dir: str) -> Iterator[str]:
    """Yield a temporary sibling of `output_dir` and move it into place on success.

    On any exception, including KeyboardInterrupt, the temporary directory is
    removed and `output_dir` is left untouched. An existing `output_dir` is
    replaced only after the new content is complete.
    """
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    temp_dir = f"{output_dir}.tmp-{os.getpid()}"
    shutil.rmtree(temp_dir, ignore_errors=True)
    os.makedirs(temp_dir)
    try:
        yield temp_dir
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise

    old_dir = f"{output_dir}.old-{os.getpid()}"
    if os.path.isdir(output_dir):
        os.rename(output_dir, old_dir)
    os.rename(temp_dir, output_dir)
    shutil.rmtree(old_dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# create_from_images


def _no_images_message(
    image_dir: str, paths: Sequence[str], bad: Sequence[str], ignored: Sequence[str]
) -> str:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    if not paths and not ignored:
        return (
            f"no usable images in {image_dir!r}: the directory contains no files (searched "
            f"recursively). Pass the folder that contains the images."
        )
    if not paths:
        return (
            f"no usable images in {image_dir!r}: it contains {len(ignored)} files but none "
            f"with an image extension ({extensions}), e.g. {ignored[0]!r}. Pass the folder "
            f"that contains the images, or rename files that have a wrong extension."
        )
    return (
        f"no usable images in {image_dir!r}: all {len(paths)} image files are unreadable "
        f"(skipped with --skip_bad), e.g. {bad[0]!r}. Fix or replace the files."
    )


def create_from_images(
    tfrecord_dir: str,
    image_dir: str,
    resolution: int | None = None,
    channels: int | None = None,
    shuffle: bool = False,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress_interval: int = DEFAULT_PROGRESS_INTERVAL,
    jobs: int = 0,
) -> BuildReport:
    """Build a TFRecord pyramid dataset in `tfrecord_dir` from the images under `image_dir`.

    The dataset name prefix is the basename of `tfrecord_dir`. See the module
    docstring of `msg_tf.tfrecord_format` for the layout. `resolution` and
    `channels` default to values derived from the images (see
    `choose_resolution` and `choose_channels`). Returns a BuildReport.

    `jobs` worker processes decode and encode the images (0: one per CPU, see
    `resolve_jobs`; 1: all in this process). This process writes the records
    in input order, so the files are the same for every `jobs`.

    NOTE: decodes each image twice (once to check every file before writing,
    once to write it), so large high-resolution folders take a while.
    """
    # abspath so that "." or a trailing slash still yield a real basename.
    tfrecord_dir = os.path.abspath(tfrecord_dir)
    if resolution is not None:
        check_resolution(resolution)
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"invalid --channels={channels}; expected 1 or 3")
    if progress_interval < 1:
        raise DatasetError(f"invalid progress interval {progress_interval}; expected >= 1")
    jobs = resolve_jobs(jobs)
    check_utf8_path(tfrecord_dir)
    if os.path.isdir(image_dir):
        check_separate_dirs(tfrecord_dir, image_dir)
    check_output_dir(tfrecord_dir, overwrite, dataset_files_only=True)

    paths, ignored = discover_images(image_dir)
    logging.info(
        "found %d image files and %d other files in %r", len(paths), len(ignored), image_dir
    )
    # More workers than images would only start idle processes.
    with OrderedPool(min(jobs, len(paths))) as pool:
        infos, bad = scan_images(paths, skip_bad, progress_interval, pool)
        if not infos:
            raise DatasetError(_no_images_message(image_dir, paths, bad, ignored))

        if resolution is None:
            resolution = choose_resolution(infos, image_dir)
        if channels is None:
            channels = choose_channels(infos)
        res_log2 = resolution.bit_length() - 1
        name = os.path.basename(tfrecord_dir)

        colour_count = sum(info.mode not in GRAYSCALE_MODES for info in infos)
        if channels == 1 and colour_count:
            logging.warning(
                "channels=1: converting %d colour images to grayscale with ITU-R 601-2 luma "
                "(Pillow convert('L'))",
                colour_count,
            )

        order = np.arange(len(infos))
        if shuffle:
            order = np.random.RandomState(seed).permutation(len(infos))

        report = BuildReport(
            output_dir=tfrecord_dir,
            name=name,
            resolution=resolution,
            channels=channels,
            levels=list(range(MIN_RES_LOG2, res_log2 + 1)),
            skipped_bad=bad,
            ignored_files=ignored,
        )
        logging.info(
            "writing %d images at %dx%d with %d channel(s) to %r",
            len(infos), resolution, resolution, channels, tfrecord_dir,
        )
        _write_levels(report, [infos[index].path for index in order], pool, progress_interval)

    logging.info("finished dataset %s:\n%s", name, report.summary())
    return report


def _write_levels(
    report: BuildReport, paths: Sequence[str], pool: OrderedPool, progress_interval: int
) -> None:
    """Encode the images of `paths` and write their levels to `report.output_dir`, in order.

    The images are decoded and encoded in the worker processes of `pool`, at
    the resolution and channels of `report`, and counted in `report`. The
    directory is replaced only when every level is complete.
    """
    encode_chunk = functools.partial(
        encode_image_chunk, channels=report.channels, resolution=report.resolution
    )
    # A pyramid has about 4/3 of the bytes of its finest level.
    bytes_per_image = report.channels * report.resolution**2 * 4 // 3
    encoded_images = pool.map(
        encode_chunk, paths, chunk_size(len(paths), pool.workers, bytes_per_image)
    )

    with (
        staged_output_dir(report.output_dir) as temp_dir,
        contextlib.ExitStack() as writers_stack,
    ):
        # Finest level first, matching the order of build_pyramid's output.
        writers = [
            writers_stack.enter_context(
                tf.io.TFRecordWriter(os.path.join(temp_dir, level_file_name(report.name, r)))
            )
            for r in reversed(report.levels)
        ]
        with _explain_worker_exit():
            for count, encoded in enumerate(encoded_images, start=1):
                report.input_modes[encoded.mode] += 1
                if encoded.conversion is not None:
                    report.conversions[encoded.conversion] += 1
                report.resized_or_cropped += int(encoded.resized_or_cropped)

                for writer, record in zip(writers, encoded.records):
                    writer.write(record)
                report.images_written += 1
                if count % progress_interval == 0:
                    logging.info("wrote %d / %d images", count, len(paths))
        # Close before the directory is renamed so every file is flushed.
        writers_stack.close()


# ---------------------------------------------------------------------------
# info and extract


def iterate_records(path: str) -> Iterator[bytes]:
    """Yield the serialized records of one TFRecord file."""
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield record
    except tf.errors.DataLossError as error:
        raise DatasetError(
            f"{path!r} is corrupt or truncated ({error.message}). Rebuild the dataset."
        ) from error


def describe_dataset(tfrecord_dir: str) -> DatasetInfo:
    """Count the records of every level and read the record shapes and labels.

    Raises DatasetError only when a level cannot be read (see `find_levels`,
    `read_level_info`). Levels that disagree with each other do not raise, so
    `info` can still show them; `check_dataset` checks that.
    """
    name, level_paths = find_levels(tfrecord_dir)
    levels = [read_level_info(res_log2, path) for res_log2, path in level_paths.items()]

    labels_path = os.path.join(tfrecord_dir, labels_file_name(name))
    labels_shape = labels_dtype = None
    if os.path.isfile(labels_path):
        labels = np.load(labels_path)
        labels_shape, labels_dtype = labels.shape, str(labels.dtype)
    else:
        labels_path = None
    return DatasetInfo(tfrecord_dir, name, levels, labels_path, labels_shape, labels_dtype)


def check_dataset(info: DatasetInfo) -> None:
    """Raise DatasetError unless the levels agree and the labels have one row per record."""
    check_levels(info.directory, info.levels)
    num_records = info.levels[-1].num_records
    if info.labels_shape is not None and (
        len(info.labels_shape) != 2 or info.labels_shape[0] != num_records
    ):
        raise DatasetError(
            f"labels {info.labels_path!r} have shape {list(info.labels_shape)}, expected "
            f"[{num_records}, L] (one row per record). Rebuild the labels or remove the file."
        )


def chw_to_image(image_chw: np.ndarray) -> Image.Image:
    """Return a uint8 CHW array with 1 or 3 channels as an `L` or `RGB` image."""
    if image_chw.shape[0] == 1:
        return Image.fromarray(image_chw[0], mode="L")
    return Image.fromarray(image_chw.transpose(1, 2, 0), mode="RGB")


def extract_dataset(tfrecord_dir: str, output_dir: str, overwrite: bool = False) -> dict[int, int]:
    """Write every record of every level as PNG: `output_dir/rNN/000000.png`, ...

    `NN` is the level's res_log2, as in the TFRecord file names. Returns the
    number of images written per res_log2.
    """
    _, level_paths = find_levels(tfrecord_dir)
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite, dataset_files_only=False)

    counts: dict[int, int] = {}
    with staged_output_dir(output_dir) as temp_dir:
        for res_log2, path in level_paths.items():
            level_dir = os.path.join(temp_dir, f"r{res_log2:02d}")
            os.makedirs(level_dir)
            count = 0
            for record in iterate_records(path):
                chw_to_image(parse_example_numpy(record)).save(
                    os.path.join(level_dir, f"{count:06d}.png")
                )
                count += 1
            counts[res_log2] = count
            logging.info("extracted %d images of level r%02d", count, res_log2)
    return counts
