"""Build the pyramid of one image and encode each level as a record, without TensorFlow.

The record is a serialized `tf.train.Example`, written here from the protocol
buffer wire format so that the worker processes of the dataset tool need not
import TensorFlow. `msg_tf.tfrecord_format` describes the dataset layout and
re-exports these names.
"""

from __future__ import annotations

import numpy as np

MIN_RES_LOG2 = 2
MAX_RES_LOG2 = 10

# Protocol buffer wire type of length-delimited fields (bytes, strings, messages, packed lists).
_WIRE_TYPE_LEN = 2


def _varint(value: int) -> bytes:
    # Base-128 varint: 7 bits per byte, least significant group first, high bit set on all
    # bytes but the last.
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _field(field_number: int, payload: list) -> list:
    # A length-delimited field as a list of byte strings (the header, then the payload's
    # parts), so that nesting messages does not copy the pixel bytes again at every level.
    length = sum(len(part) for part in payload)
    header = _varint(field_number << 3 | _WIRE_TYPE_LEN) + _varint(length)
    return [header, *payload]


def _map_entry(key: bytes, value: list) -> list:
    # A protobuf map is a repeated field of entry messages, with the key in field 1 and the
    # value in field 2.
    return _field(1, [*_field(1, [key]), *_field(2, value)])


def serialize_example(image_chw: np.ndarray) -> bytes:
    """Encode one uint8 CHW image as a serialized `tf.train.Example`.

    The output is byte-identical to `SerializeToString(deterministic=True)` of
    an Example with the features `data` (bytes) and `shape` (int64 list), as
    the tests check against TensorFlow's own class. Deterministic serialization
    writes map entries sorted by key, so `data` comes before `shape`. The
    default serialization orders them differently from process to process
    (seen with protobuf 7.36 and its upb backend), so it could give different
    bytes for the same image in two runs.
    """
    if image_chw.dtype != np.uint8 or image_chw.ndim != 3:
        raise ValueError(
            f"expected a uint8 array of shape [C, H, W], got {image_chw.dtype} {image_chw.shape}"
        )
    data = memoryview(np.ascontiguousarray(image_chw)).cast("B")
    packed_shape = b"".join(_varint(int(size)) for size in image_chw.shape)

    # Feature.bytes_list (field 1) contains BytesList.value (field 1). Feature.int64_list
    # (field 3) contains Int64List.value (field 1), packed.
    data_feature = _field(1, _field(1, [data]))
    shape_feature = _field(3, _field(1, [packed_shape]))
    # Features.feature (field 1) is the map in Example.features (field 1).
    features = [*_map_entry(b"data", data_feature), *_map_entry(b"shape", shape_feature)]
    return b"".join(_field(1, features))


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
