"""tf.data input pipeline over a multi-resolution TFRecord pyramid.

Every level file of a dataset contains the same records in the same order, so zipping the
level files yields all resolutions of one image together. The stored pyramid is used as
it is (not recomputed), which keeps the real images at each scale identical to those the
dataset tool wrote.
"""

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from msg_tf import tfrecord_format
from msg_tf.tfrecord_format import DatasetError

# Datasets whose level files together are smaller than this are cached in memory after
# the first pass, so later epochs skip file reads entirely.
CACHE_LIMIT_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Location, levels, shape and size of a dataset on disk."""
    path: str
    name: str
    level_paths: dict          # res_log2 -> file path, every level of the dataset
    max_resolution: int
    num_channels: int
    num_images: int
    total_bytes: int


def inspect_dataset(path: str) -> DatasetInfo:
    """Find a dataset's level files, check that they agree, and read its channel count and size.

    Counts the records of every level (from the record headers only, so the cost grows
    with the number of records, not with the bytes) and checks the shape of the first
    record of each level. A wrong shape further into a file is caught when
    `make_dataset` decodes it. Raises DatasetError (a ValueError) naming the path when
    the dataset is missing or malformed.
    """
    name, level_paths = tfrecord_format.find_levels(path)
    levels = [tfrecord_format.read_level_info(res_log2, level_path)
              for res_log2, level_path in level_paths.items()]
    tfrecord_format.check_levels(path, levels)
    top = levels[-1]
    total_bytes = sum(os.path.getsize(p) for p in level_paths.values())
    return DatasetInfo(path=path, name=name, level_paths=level_paths,
                       max_resolution=2 ** top.res_log2, num_channels=top.shape[0],
                       num_images=top.num_records, total_bytes=total_bytes)


def check_resolution(info: DatasetInfo, resolution: int) -> None:
    """Raise DatasetError unless the dataset has every level from 4x4 to `resolution`."""
    if resolution > info.max_resolution:
        raise DatasetError(
            f"dataset {info.path} goes up to {info.max_resolution}x{info.max_resolution}, "
            f"below the model resolution {resolution}: lower --resolution to "
            f"{info.max_resolution} or rebuild the dataset with --resolution={resolution}")
    missing = [2 ** k for k in range(2, int(math.log2(resolution)) + 1)
               if k not in info.level_paths]
    if missing:
        raise DatasetError(f"dataset {info.path} lacks the levels {missing}: rebuild it")


def _decode_level(serialized, record_index, res, channels, path):
    features = tf.io.parse_single_example(serialized, {
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "data": tf.io.FixedLenFeature([], tf.string),
    })
    expected_shape = tf.constant([channels, res, res], tf.int64)
    shape_ok = tf.logical_and(
        tf.reduce_all(tf.equal(features["shape"], expected_shape)),
        tf.equal(tf.strings.length(features["data"]), channels * res * res))
    # inspect_dataset checks only the first record of each level, so a bad record
    # further in surfaces here, as an InvalidArgumentError from the iterator. The path
    # is left unquoted because the Assert op would print quotes escaped (\').
    message = tf.strings.join([
        tf.strings.format("record {} of ", record_index),
        path,
        tf.strings.format(
            " has shape {} (C, H, W) and {} data bytes, expected shape {} and {} bytes. ",
            (features["shape"], tf.strings.length(features["data"]), expected_shape,
             channels * res * res)),
        "Rebuild the dataset with dataset_tool.py create_from_images.",
    ])
    # Without the control dependency, the reshape below may fail first with a message
    # that names neither the file nor the record.
    with tf.control_dependencies([tf.debugging.Assert(shape_ok, [message])]):
        image = tf.io.decode_raw(features["data"], tf.uint8)
    image = tf.reshape(image, [channels, res, res])
    image = tf.transpose(image, [1, 2, 0])                             # [H, W, C]
    return tf.cast(image, tf.float32) * (2.0 / 255.0) - 1.0


def make_dataset(info: DatasetInfo, resolution: int, batch_size: int, *,
                 mirror_augment: bool = False, shuffle: bool = True,
                 shuffle_buffer: int = 4096, repeat: bool = True, seed: int = 0,
                 cache: bool | None = None) -> tf.data.Dataset:
    """Build a dataset of image lists for a model of the given resolution.

    Yields tuples of `batch_size` images per scale, coarse to fine, NHWC float32 in
    [-1, 1]. Levels above `resolution` are not read. With `mirror_augment`, each sample
    is flipped left-right at all of its scales alike, decided by a stateless random draw
    from (`seed`, sample position), so a given seed always gives the same flips.
    """
    check_resolution(info, resolution)
    levels = list(range(2, int(math.log2(resolution)) + 1))
    channels = info.num_channels
    files = tuple(tf.data.TFRecordDataset(info.level_paths[k]) for k in levels)
    # The record index travels with the records through shuffling, so a decode error
    # names the bad record.
    ds = tf.data.Dataset.zip(files).enumerate()
    if cache is None:
        cache = info.total_bytes <= CACHE_LIMIT_BYTES
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, max(info.num_images, 1)), seed=seed,
                        reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()

    def decode(index, indexed_records):
        record_index, records = indexed_records
        images = [_decode_level(record, record_index, 2 ** k, channels, info.level_paths[k])
                  for k, record in zip(levels, records)]
        if mirror_augment:
            flip = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64),
                                                                  index])) < 0.5
            images = [tf.cond(flip, lambda im=im: tf.reverse(im, axis=[1]), lambda im=im: im)
                      for im in images]
        return tuple(images)

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    # Multi-worker training shards the batches' samples over the workers. The default
    # policy would shard by file and fail, because each level is a single file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Convert images in [-1, 1] to uint8 [0, 255], rounding and clipping."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)
