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
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps

from msg_tf.tfrecord_format import (
    MAX_RES_LOG2,
    MIN_RES_LOG2,
    DatasetError,
    LevelInfo,
    build_pyramid,
    check_levels,
    find_levels,
    labels_file_name,
    level_file_name,
    parse_example_numpy,
    read_level_info,
    serialize_example,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Pillow modes that contain a single luminance channel, with or without alpha.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# NOTE: Pillow (checked with 13.0) has no 16-bit RGB mode. It opens a 16-bit
# RGB(A) PNG as 8-bit RGB(A) by keeping the high byte of each sample, so those
# images are floored (value // 256), not rounded like 16-bit grayscale below.
# Every mode that to_base_mode converts. Notably absent: "F" (32-bit float),
# whose value range is not defined by the file.
SUPPORTED_MODES = GRAYSCALE_MODES | frozenset(
    {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
)

DEFAULT_SEED = 123
DEFAULT_PROGRESS_INTERVAL = 1000


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Header facts of one fully decoded input image."""

    path: str
    mode: str
    width: int
    height: int


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


def open_image(path: str) -> Image.Image:
    """Open and fully decode one image file, turned upright by its EXIF orientation.

    A photo whose EXIF Orientation tag asks for a rotation or flip is
    transposed in place, so its width and height are those of the upright
    image. Raises DatasetError naming the file if Pillow cannot decode it
    completely, or if it declares more than `PIL.Image.MAX_IMAGE_PIXELS`
    pixels (Pillow's decompression bomb guard, 89,478,485 by default).
    """
    image = None
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and decoding
        # such a file could take gigabytes, so the warning is raised as an error too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Image.open closes the file itself when it raises.
        raise DatasetError(
            f"image {path!r} declares too many pixels to decode safely ({error}) The limit "
            f"is PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}. Downscale or remove "
            f"the file, or pass --skip_bad to skip it."
        ) from error
    # Pillow's format plugins raise many exception types on corrupt input
    # (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, ...),
    # so anything but an interrupt means "bad file".
    except Exception as error:  # noqa: BLE001
        if image is not None:
            image.close()
        raise DatasetError(
            f"cannot read image {path!r}: {type(error).__name__}: {error}. Fix or remove the "
            f"file, or pass --skip_bad to skip unreadable images."
        ) from error
    return image


def scan_images(
    paths: Sequence[str], skip_bad: bool, progress_interval: int = DEFAULT_PROGRESS_INTERVAL
) -> tuple[list[ImageInfo], list[str]]:
    """Decode every image once to check it, and record its mode and size.

    An image is bad if Pillow cannot decode it or its mode has no conversion
    (see `to_base_mode`). With `skip_bad`, bad files are logged and returned
    in the second list; without it the first one raises DatasetError.
    """
    infos: list[ImageInfo] = []
    bad: list[str] = []
    for index, path in enumerate(paths):
        try:
            with open_image(path) as image:
                check_mode(image.mode, path)
                infos.append(ImageInfo(path, image.mode, image.width, image.height))
        except DatasetError as error:
            if not skip_bad:
                raise
            logging.warning("skipping bad image %r: %s", path, error.__cause__ or error)
            bad.append(path)
        if (index + 1) % progress_interval == 0:
            logging.info("checked %d / %d images", index + 1, len(paths))
    return infos, bad


# ---------------------------------------------------------------------------
# Conversion


def _composite_on_white(color: Image.Image, alpha: Image.Image) -> Image.Image:
    # Image.paste with a mask blends src * a + white * (1 - a), with a in [0, 1].
    background = Image.new(color.mode, color.size, 255 if color.mode == "L" else (255, 255, 255))
    background.paste(color, mask=alpha)
    return background


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Dividing by 257 maps 0..65535 linearly onto 0..255 and rounds to the
    # nearest level. Keeping the high byte (value >> 8) floors value / 256
    # instead, which is off by one for many values (65280 gives 255, not 254).
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.rint(values / 257.0).clip(0, 255).astype(np.uint8), mode="L")


def to_base_mode(image: Image.Image) -> Image.Image:
    """Convert any supported Pillow mode to 8-bit `L` or `RGB`, alpha composited onto white.

    Raises DatasetError for modes without a defined conversion (such as `F`).
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(image)
    if mode in ("LA", "La"):
        la = image.convert("LA")
        return _composite_on_white(la.getchannel("L"), la.getchannel("A"))
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return _composite_on_white(rgba.convert("RGB"), rgba.getchannel("A"))
    # CMYK uses Pillow's profile-free formula (R = 255 - C - K, clipped, and so on);
    # an embedded ICC profile is not applied.
    if mode in ("P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        return image.convert("RGB")
    check_mode(mode, getattr(image, "filename", "<image>"))
    raise AssertionError(f"SUPPORTED_MODES lists {mode!r} but to_base_mode has no branch for it")


def check_mode(mode: str, path: str) -> None:
    """Raise DatasetError if images of Pillow mode `mode` cannot be converted."""
    if mode not in SUPPORTED_MODES:
        raise DatasetError(
            f"unsupported image mode {mode!r} in {path!r}. Convert the file to 8- or "
            f"16-bit grayscale or RGB(A), or pass --skip_bad to skip it."
        )


def convert_mode(image: Image.Image, channels: int) -> tuple[Image.Image, str | None]:
    """Convert an image to `L` (channels=1) or `RGB` (channels=3).

    Returns the converted image and a label such as `RGBA->RGB` describing the
    conversion, or None if the image already had the target mode. Grayscale
    becomes RGB by replicating the channel, colour becomes L with ITU-R 601-2
    luma (Pillow's `convert('L')`).
    """
    target = "L" if channels == 1 else "RGB"
    source = image.mode
    converted = to_base_mode(image)
    if converted.mode != target:
        converted = converted.convert(target)
    label = None if source == target else f"{source}->{target}"
    return converted, label


def fit_to_square(image: Image.Image, resolution: int) -> tuple[Image.Image, bool]:
    """Centre-crop to a square and resize with LANCZOS to `resolution`.

    Returns the image and whether it was changed.
    """
    width, height = image.size
    if width == height == resolution:
        return image, False
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    if side != width or side != height:
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image, True


def image_to_chw(image: Image.Image) -> np.ndarray:
    """Return an `L` or `RGB` image as a uint8 CHW array."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        return array[np.newaxis]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


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
) -> BuildReport:
    """Build a TFRecord pyramid dataset in `tfrecord_dir` from the images under `image_dir`.

    The dataset name prefix is the basename of `tfrecord_dir`. See the module
    docstring of `msg_tf.tfrecord_format` for the layout. `resolution` and
    `channels` default to values derived from the images (see
    `choose_resolution` and `choose_channels`). Returns a BuildReport.

    NOTE: runs in one process and decodes each image twice (once to check
    every file before writing, once to write it), so large high-resolution
    folders take a while.
    """
    # abspath so that "." or a trailing slash still yield a real basename.
    tfrecord_dir = os.path.abspath(tfrecord_dir)
    if resolution is not None:
        check_resolution(resolution)
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"invalid --channels={channels}; expected 1 or 3")
    if progress_interval < 1:
        raise DatasetError(f"invalid progress interval {progress_interval}; expected >= 1")
    check_utf8_path(tfrecord_dir)
    if os.path.isdir(image_dir):
        check_separate_dirs(tfrecord_dir, image_dir)
    check_output_dir(tfrecord_dir, overwrite, dataset_files_only=True)

    paths, ignored = discover_images(image_dir)
    logging.info(
        "found %d image files and %d other files in %r", len(paths), len(ignored), image_dir
    )
    infos, bad = scan_images(paths, skip_bad, progress_interval)
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

    with staged_output_dir(tfrecord_dir) as temp_dir, contextlib.ExitStack() as writers_stack:
        # Finest level first, matching the order of build_pyramid's output.
        writers = [
            writers_stack.enter_context(
                tf.io.TFRecordWriter(os.path.join(temp_dir, level_file_name(name, r)))
            )
            for r in range(res_log2, MIN_RES_LOG2 - 1, -1)
        ]
        for count, index in enumerate(order, start=1):
            info = infos[index]
            with open_image(info.path) as image:
                report.input_modes[image.mode] += 1
                converted, label = convert_mode(image, channels)
            if label is not None:
                report.conversions[label] += 1
            converted, changed = fit_to_square(converted, resolution)
            report.resized_or_cropped += int(changed)

            for writer, level in zip(writers, build_pyramid(image_to_chw(converted))):
                writer.write(serialize_example(level))
            report.images_written += 1
            if count % progress_interval == 0:
                logging.info("wrote %d / %d images", count, len(infos))
        # Close before the directory is renamed so every file is flushed.
        writers_stack.close()

    logging.info("finished dataset %s:\n%s", name, report.summary())
    return report


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
