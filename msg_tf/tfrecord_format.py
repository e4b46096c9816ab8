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

Any other file in a dataset directory is ignored with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

# Re-exported: the dataset code and its callers import these from this module.
from msg_tf.errors import DatasetError
from msg_tf.record_encoding import (  # noqa: F401
    MAX_RES_LOG2,
    MIN_RES_LOG2,
    build_pyramid,
    downsample_2x2,
    serialize_example,
)

_LEVEL_FILE_RE = re.compile(r"^(?P<name>.+)-r(?P<res_log2>\d{2})\.tfrecords$")

# Feature spec for `tf.io.parse_single_example` in a tf.data pipeline.
FEATURE_SPEC = {
    "shape": tf.io.FixedLenFeature([3], tf.int64),
    "data": tf.io.FixedLenFeature([], tf.string),
}


# Unknown files named in the warning of find_levels; the rest are only counted.
_MAX_LISTED_UNKNOWN_FILES = 5

# An uncompressed TFRecord record is framed as: uint64 data length, uint32 masked
# CRC-32C of the length, the data, uint32 masked CRC-32C of the data (little-endian).
_RECORD_HEADER = struct.Struct("<QI")
_RECORD_FOOTER_BYTES = 4


@dataclasses.dataclass
class LevelInfo:
    """Facts about one level file of a dataset."""

    res_log2: int
    path: str
    num_records: int
    shape: list[int] | None  # [C, H, W] of the first record; None if the file is empty


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
    other_files = []
    for file_name in sorted(os.listdir(dataset_dir)):
        match = _LEVEL_FILE_RE.match(file_name)
        if match is None:
            other_files.append(file_name)
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
    _warn_unknown_files(dataset_dir, name, other_files)
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


def _warn_unknown_files(dataset_dir: str, name: str, file_names: Sequence[str]) -> None:
    # A warning rather than an error: stray files such as notes or `.DS_Store` do
    # no harm, but a misnamed level file (`-r3.tfrecords`) would otherwise vanish silently.
    unknown = [f for f in file_names if f != labels_file_name(name)]
    if not unknown:
        return
    listed = ", ".join(repr(f) for f in unknown[:_MAX_LISTED_UNKNOWN_FILES])
    if len(unknown) > _MAX_LISTED_UNKNOWN_FILES:
        listed += f" and {len(unknown) - _MAX_LISTED_UNKNOWN_FILES} more"
    logging.warning(
        "ignoring %d entries in %r that are not files of dataset %r: %s. Level files "
        "must be named %s ... %s.",
        len(unknown), dataset_dir, name, listed,
        level_file_name(name, MIN_RES_LOG2), level_file_name(name, MAX_RES_LOG2),
    )


def _iterate_record_frames(path: str):
    # Yields (data offset, data length) of each record without reading the data,
    # so counting the records of a multi-gigabyte level costs one small read per record.
    file_size = os.path.getsize(path)
    offset = 0
    with open(path, "rb") as file:
        while offset < file_size:
            header = file.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                _raise_bad_framing(path, offset, file_size)
            length, _ = _RECORD_HEADER.unpack(header)
            data_offset = offset + _RECORD_HEADER.size
            offset = data_offset + length + _RECORD_FOOTER_BYTES
            if offset > file_size:
                _raise_bad_framing(path, data_offset - _RECORD_HEADER.size, file_size)
            yield data_offset, length
            file.seek(offset)


def _raise_bad_framing(path: str, offset: int, file_size: int):
    raise DatasetError(
        f"{path!r} is truncated or not an uncompressed TFRecord file: the record at byte "
        f"{offset} runs past the end of the file ({file_size} bytes). Rebuild the dataset "
        f"with `dataset_tool.py create_from_images`."
    )


def count_records(path: str) -> int:
    """Count the records of an uncompressed TFRecord file from its record headers.

    Reads only the 12-byte header of each record and seeks over the data, so
    the cost grows with the number of records, not with the file size. CRCs
    are not verified here; TensorFlow verifies them when it reads the records.
    Raises DatasetError if the records do not fill the file exactly.
    """
    return sum(1 for _ in _iterate_record_frames(path))


def read_first_record(path: str) -> bytes | None:
    """Return the first serialized record of a TFRecord file, or None if it is empty."""
    frames = _iterate_record_frames(path)
    first = next(frames, None)
    frames.close()
    if first is None:
        return None
    data_offset, length = first
    with open(path, "rb") as file:
        file.seek(data_offset)
        return file.read(length)


def read_level_info(res_log2: int, path: str) -> LevelInfo:
    """Count the records of one level file and read the shape of its first record."""
    first = read_first_record(path)
    shape = None if first is None else list(parse_example_numpy(first).shape)
    return LevelInfo(res_log2, path, count_records(path), shape)


def check_levels(dataset_dir: str, levels: Sequence[LevelInfo]) -> None:
    """Raise DatasetError unless all levels contain the same number of records of matching shape.

    `levels` is coarse to fine, as `find_levels` returns them. Every level must
    contain at least one record, and the first record of level k must have shape
    [C, 2**k, 2**k] with the C of the top level, which must be 1 or 3.
    """
    counts = {level.num_records for level in levels}
    if len(counts) > 1:
        per_level = ", ".join(f"r{level.res_log2:02d}: {level.num_records}" for level in levels)
        raise DatasetError(
            f"the levels of {dataset_dir!r} contain different numbers of records "
            f"({per_level}), but every level must contain one record per image. The "
            f"dataset is incomplete or mixes files of several builds: rebuild it with "
            f"`dataset_tool.py create_from_images`."
        )
    if counts == {0}:
        raise DatasetError(
            f"the level files in {dataset_dir!r} contain no records. Rebuild the dataset with "
            f"`dataset_tool.py create_from_images`."
        )

    top = levels[-1]
    top_side = 2**top.res_log2
    if top.shape[0] not in (1, 3) or top.shape[1:] != [top_side, top_side]:
        _raise_wrong_shape(top, f"[1 or 3, {top_side}, {top_side}]")
    channels = top.shape[0]
    for level in levels[:-1]:
        side = 2**level.res_log2
        if level.shape != [channels, side, side]:
            _raise_wrong_shape(level, f"[{channels}, {side}, {side}]")


def _raise_wrong_shape(level: LevelInfo, expected: str):
    raise DatasetError(
        f"records in {level.path!r} have shape {level.shape} (C, H, W), expected "
        f"{expected}: the file does not match its name or the other levels. Rebuild "
        f"the dataset with `dataset_tool.py create_from_images`."
    )


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
