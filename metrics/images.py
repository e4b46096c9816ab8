"""Image sources for metrics: a generator, a TFRecord dataset or a folder of image files.

Every source yields batches as a list with one uint8 array [B, H, W, C] per scale, coarse
to fine. Generated images are quantized to uint8 like saved images, so that generated
and real images reach the feature network in the same form.
"""

import dataclasses
import math
import os
from typing import Callable, Iterator

import numpy as np

from msg_tf import dataset as msg_dataset


class ImageSourceError(ValueError):
    """An image source cannot deliver the requested images."""


@dataclasses.dataclass
class ImageSource:
    """A finite stream of image batches and what identifies it for caching."""
    description: str
    num_images: int
    resolutions: list[int]           # of the scales in each batch, coarse to fine
    batches: Callable[[], Iterator[list[np.ndarray]]]
    # Identifies the images for the real-statistics cache; None disables caching.
    cache_identity: dict | None = None


def generator_source(generate_fn, num_images: int, *, latent_size: int, batch_size: int,
                     num_channels: int, seed: int = 0) -> ImageSource:
    """Wrap `generate_fn(z [n, latent_size]) -> list of [n, R, R, C] in [-1, 1]`.

    Latents are drawn from N(0, 1) with NumPy's default_rng(seed), so a seed always
    gives the same latents. One probe batch of 1 latent finds the scales.
    """
    probe = generate_fn(np.zeros((1, latent_size), np.float32))
    resolutions = [int(np.shape(images)[1]) for images in probe]
    for images in probe:
        if np.shape(images)[-1] != num_channels:
            raise ImageSourceError(
                f"the generator outputs {np.shape(images)[-1]} channels at "
                f"{np.shape(images)[1]}x{np.shape(images)[1]}, but num_channels is "
                f"{num_channels}: pass the channel count of the dataset it was trained on")

    def batches():
        rng = np.random.default_rng(seed)
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            z = rng.standard_normal((count, latent_size)).astype(np.float32)
            yield [msg_dataset.to_uint8(np.asarray(images)) for images in generate_fn(z)]

    return ImageSource(f"{num_images} generated images", num_images, resolutions, batches)


def dataset_source(info: msg_dataset.DatasetInfo, resolution: int, num_images: int, *,
                   batch_size: int) -> ImageSource:
    """Read the first `num_images` records of a dataset at every level up to `resolution`."""
    msg_dataset.check_resolution(info, resolution)
    if num_images > info.num_images:
        raise ImageSourceError(f"dataset {info.path} has {info.num_images} images, fewer "
                               f"than the {num_images} requested")
    resolutions = [2 ** k for k in range(2, int(math.log2(resolution)) + 1)]

    def batches():
        # make_dataset drops the last partial batch, so it reads single images that are
        # batched again here without dropping any.
        ds = msg_dataset.make_dataset(info, resolution, 1, shuffle=False, repeat=False)
        ds = ds.unbatch().take(num_images).batch(batch_size)
        for levels in ds:
            yield [msg_dataset.to_uint8(level.numpy()) for level in levels]

    identity = {"dataset": os.path.abspath(info.path), "dataset_bytes": info.total_bytes,
                "count": num_images}
    return ImageSource(f"{num_images} images of {info.path}", num_images, resolutions,
                       batches, identity)


def _load_image(path: str) -> np.ndarray:
    from msg_tf import dataset_builder

    with dataset_builder.open_image(path) as image:
        array = np.asarray(dataset_builder.to_base_mode(image))
    return array[..., np.newaxis] if array.ndim == 2 else array


def folder_source(folder: str, max_images: int | None, *, batch_size: int) -> ImageSource:
    """Read up to `max_images` image files of a folder (sorted, recursive), all one size.

    Alpha is composited onto white and modes are converted as the dataset tool does.
    """
    from msg_tf import dataset_builder

    paths, _ = dataset_builder.discover_images(folder)
    if not paths:
        raise ImageSourceError(f"no image files found in {folder}: expected PNG or JPEG "
                               "files (searched recursively)")
    paths = paths[:max_images] if max_images else paths
    first = _load_image(paths[0])

    def batches():
        for start in range(0, len(paths), batch_size):
            images = [_load_image(path) for path in paths[start:start + batch_size]]
            for path, image in zip(paths[start:start + batch_size], images):
                if image.shape != first.shape:
                    raise ImageSourceError(
                        f"{path} has shape {list(image.shape)} (H, W, C), but {paths[0]} has "
                        f"{list(first.shape)}: all images of a folder must share one size "
                        "and channel count")
            yield [np.stack(images)]

    if first.shape[0] != first.shape[1]:
        raise ImageSourceError(f"{paths[0]} is {first.shape[1]}x{first.shape[0]} pixels; "
                               "metrics expect square images")
    return ImageSource(f"{len(paths)} images of {folder}", len(paths), [first.shape[0]],
                       batches)

