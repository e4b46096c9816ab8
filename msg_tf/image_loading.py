"""Decode, check and convert input images, and encode them as pyramid records.

The dataset tool runs these functions in worker processes, one chunk of paths
per task (see `check_image_chunk` and `encode_image_chunk`). This module and
its imports load no TensorFlow, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from msg_tf.errors import DatasetError
from msg_tf.record_encoding import build_pyramid, serialize_example

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


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Header facts of one fully decoded input image."""

    path: str
    mode: str
    width: int
    height: int


def open_image(path: str) -> Image.Image:
    """Open and fully decode one image file, turned upright by its EXIF orientation.

    A photo whose EXIF Orientation tag requests a rotation or flip is
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
# Tasks for worker processes, one chunk of paths each


@dataclasses.dataclass(frozen=True)
class BadImage:
    """An input image that failed its check, with the reason to log."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """The serialized pyramid levels of one image, with what was done to the image."""

    mode: str  # Pillow mode of the decoded file
    conversion: str | None  # such as "RGBA->RGB"; None if the file already had the target mode
    resized_or_cropped: bool
    records: list[bytes]  # one serialized tf.train.Example per level, finest first


def check_image_chunk(paths: Sequence[str], skip_bad: bool) -> list[ImageInfo | BadImage]:
    """Decode each image once to check it, and return its ImageInfo, in input order.

    An image is bad if Pillow cannot decode it or its mode has no conversion
    (see `to_base_mode`). With `skip_bad` a bad image is returned as a BadImage.
    Without it the first bad image raises DatasetError.
    """
    results: list[ImageInfo | BadImage] = []
    for path in paths:
        try:
            with open_image(path) as image:
                check_mode(image.mode, path)
                results.append(ImageInfo(path, image.mode, image.width, image.height))
        except DatasetError as error:
            if not skip_bad:
                raise
            # The cause is Pillow's own error, without the advice that --skip_bad already took.
            results.append(BadImage(path, str(error.__cause__ or error)))
    return results


def encode_image_chunk(
    paths: Sequence[str], channels: int, resolution: int
) -> list[EncodedImage]:
    """Convert, centre-crop and resize each image and serialize its pyramid, in input order.

    Raises DatasetError naming the file if an image cannot be decoded, for
    example because it changed after `check_image_chunk` checked it.
    """
    results: list[EncodedImage] = []
    for path in paths:
        with open_image(path) as image:
            mode = image.mode
            converted, conversion = convert_mode(image, channels)
        converted, changed = fit_to_square(converted, resolution)
        levels = build_pyramid(image_to_chw(converted))
        records = [serialize_example(level) for level in levels]
        results.append(EncodedImage(mode, conversion, changed, records))
    return results
