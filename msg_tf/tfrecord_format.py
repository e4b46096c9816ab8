"""On-disk format of msg-tf datasets: one TFRecord file per resolution level.

A dataset is a directory containing `<name>-rNN.tfrecords` for every
`NN = res_log2` from 02 (4x4) up to the top resolution. All files have the same
number of records in the same order, so record i of every file is one image
at every scale. Each record is a `tf.train.Example` with two features:

- `shape`: int64 list `[C, H, W]`, with C in {1, 3} and H == W == 2**NN;
- `data`: bytes, the raw uint8 pixels in CHW order.

Optional labels are stored next to the levels as `<name>-rxx.labels`, an
`np.save` file of a float32 `[N, L]` array. NVIDIA's StyleGAN `dataset_tool.py`
writes this same layout, so datasets built by that tool load here unchanged.
"""

from __future__ import annotations

import os
import re

import numpy as np
import tensorflow as tf

MIN_RES_LOG2 = 2
MAX_RES_LOG2 = 10

_LEVEL_FILE_RE = re.compile(r"^(?P<name>.+)-r(?P<res_log2>\d{2})\.tfrecords$")

# Feature spec for `tf.io.parse_single_example` in a tf.data pipeline.
FEATURE_SPEC = {
    "shape": tf.io.FixedLenFeature([3], tf.int64),
    "data": tf.io.FixedLenFeature([], tf.string),
}


class DatasetError(ValueError):
    """A problem with a dataset or its input images that the user must fix."""


def level_file_name(name: str, res_log2: int) -> str:
    """Return the file name of one level, e.g. `ffhq-r10.tfrecords`."""
    return f"{name}-r{res_log2:02d}.tfrecords"


def labels_file_name(name: str) -> str:
    """Return the file name of the optional labels array, e.g. `ffhq-rxx.labels`."""
    return f"{name}-rxx.labels"


def find_levels(dataset_dir: str | os.PathLike) -> tuple[str, dict[int, str]]:
    """Locate the level files of a dataset directory.

    Returns the dataset name prefix and a dict mapping res_log2 to the path of
    that level's file. Raises DatasetError if the directory is missing, contains
    no level files, mixes several name prefixes, or if the levels are not a
    contiguous run from 2 (4x4) up to the top level.
    """
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise DatasetError(
            f"dataset directory {dataset_dir!r} not found. Pass the directory that "
            f"contains the <name>-rNN.tfrecords files, or build one with "
            f"`dataset_tool.py create_from_images`."
        )

    levels_by_name: dict[str, dict[int, str]] = {}
    for file_name in sorted(os.listdir(dataset_dir)):
        match = _LEVEL_FILE_RE.match(file_name)
        if match is None:
            continue
        levels = levels_by_name.setdefault(match["name"], {})
        levels[int(match["res_log2"])] = os.path.join(dataset_dir, file_name)

    if not levels_by_name:
        raise DatasetError(
            f"no level files (<name>-rNN.tfrecords) found in {dataset_dir!r}. Check the "
            f"path, or build a dataset with `dataset_tool.py create_from_images`."
        )
    if len(levels_by_name) > 1:
        names = ", ".join(repr(n) for n in sorted(levels_by_name))
        raise DatasetError(
            f"{dataset_dir!r} contains level files of several datasets (name prefixes "
            f"{names}). Keep one dataset per directory."
        )

    name, levels = next(iter(levels_by_name.items()))
    top = max(levels)
    expected = set(range(MIN_RES_LOG2, top + 1))
    missing = sorted(expected - set(levels))
    unexpected = sorted(set(levels) - expected)
    if missing or unexpected:
        missing_files = ", ".join(level_file_name(name, r) for r in missing) or "none"
        unexpected_files = ", ".join(level_file_name(name, r) for r in unexpected) or "none"
        raise DatasetError(
            f"the levels in {dataset_dir!r} are not a contiguous run from "
            f"{level_file_name(name, MIN_RES_LOG2)} to {level_file_name(name, top)}: "
            f"missing {missing_files}; unexpected {unexpected_files}. Rebuild the "
            f"dataset with `dataset_tool.py create_from_images`."
        )
    return name, dict(sorted(levels.items()))


def serialize_example(image_chw: np.ndarray) -> bytes:
    """Encode one uint8 CHW image as a serialized `tf.train.Example`."""
    if image_chw.dtype != np.uint8 or image_chw.ndim != 3:
        raise ValueError(
            f"expected a uint8 array of shape [C, H, W], got {image_chw.dtype} {image_chw.shape}"
        )
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "shape": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=list(image_chw.shape))
                ),
                "data": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image_chw).tobytes()])
                ),
            }
        )
    )
    return example.SerializeToString()


def parse_example_numpy(record: bytes) -> np.ndarray:
    """Decode one serialized record into a uint8 CHW array.

    Raises DatasetError if the record lacks a feature or its `data` length does
    not match its `shape`.
    """
    example = tf.train.Example.FromString(record)
    features = example.features.feature
    if "shape" not in features or "data" not in features:
        raise DatasetError(
            f"record has features {sorted(features)}, expected 'shape' and 'data'. "
            f"The file is not in the msg-tf / StyleGAN TFRecord format."
        )
    shape = tuple(features["shape"].int64_list.value)
    data = features["data"].bytes_list.value[0]
    if len(shape) != 3 or int(np.prod(shape)) != len(data):
        raise DatasetError(
            f"record shape {list(shape)} does not match its {len(data)} data bytes. "
            f"Expected shape [C, H, W] with C*H*W == len(data)."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def downsample_2x2(image_chw: np.ndarray) -> np.ndarray:
    """Return the 2x2 box average of a CHW image, rounded half to even and clipped to uint8."""
    x = image_chw.astype(np.float32)
    x = (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) * 0.25
    return np.rint(x).clip(0, 255).astype(np.uint8)


def build_pyramid(image_chw: np.ndarray) -> list[np.ndarray]:
    """Build the levels of one image, fine to coarse, down to 4x4.

    The first entry is the input itself. Each further level is the 2x2 box
    average of the previous level *as stored*: computed in float32 from the
    rounded uint8 finer level, then rounded with `np.rint` (half to even) and
    clipped to uint8. So every stored level is exactly the box average of the
    stored level above it, which is what readers can verify.

    NVIDIA's StyleGAN `dataset_tool.py` instead carries the unrounded float
    average from level to level and rounds only when writing, so its coarse
    levels can differ from these by 1 in some pixels.
    """
    channels, height, width = image_chw.shape
    if image_chw.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image_chw.dtype}")
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {image_chw.shape}")
    res_log2 = int(np.log2(height)) if height > 0 else -1
    if height != width or 2**res_log2 != height or res_log2 < MIN_RES_LOG2:
        raise ValueError(
            f"expected a square image with a power-of-two side of at least "
            f"{2**MIN_RES_LOG2}, got shape {image_chw.shape}"
        )

    levels = [image_chw]
    while levels[-1].shape[1] > 2**MIN_RES_LOG2:
        levels.append(downsample_2x2(levels[-1]))
    return levels
