"""Sliced Wasserstein distance on Laplacian-pyramid patches (ProGAN's SWD).

Each image set becomes a Laplacian pyramid from full resolution down to 16x16. From
every level, 128 random 7x7 patches per image are taken and each channel is normalized
to zero mean and unit variance over the set's patches. The distance per level is the
sliced Wasserstein distance: project both patch sets onto random unit directions, sort
each projection and average the absolute differences. Values are multiplied by 1e3. No
pretrained network is involved.
"""

import numpy as np

PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
DIRECTIONS_PER_REPEAT = 128
NUM_REPEATS = 4
MIN_RESOLUTION = 16
_GAUSSIAN_1D = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def _blur(images: np.ndarray) -> np.ndarray:
    """Separable 5x5 binomial filter over H and W of [N, H, W, C], mirrored at the edges."""
    # NumPy's "reflect" mirrors about the edge pixel without repeating it.
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    rows = sum(w * padded[:, i:i + height] for i, w in enumerate(_GAUSSIAN_1D))
    return sum(w * rows[:, :, i:i + width] for i, w in enumerate(_GAUSSIAN_1D))


def _pyramid_down(images):
    return _blur(images)[:, ::2, ::2]


def _pyramid_up(images):
    batch, height, width, channels = images.shape
    upsampled = np.zeros((batch, height * 2, width * 2, channels), images.dtype)
    upsampled[:, ::2, ::2] = images
    # Zero insertion keeps a quarter of the samples, so the filter gain is 4.
    return _blur(upsampled) * np.float32(4.0)


def laplacian_pyramid(images: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Return `num_levels` levels of [N, H, W, C], finest first.

    All but the last are band-pass levels, and the last is the low-pass residual, so
    upsampling and adding them from coarse to fine rebuilds the input.
    """
    levels = [np.asarray(images, np.float32)]
    for _ in range(1, num_levels):
        levels.append(_pyramid_down(levels[-1]))
        height, width = levels[-2].shape[1:3]
        # Cropping handles odd sizes, where downsampling rounds up.
        levels[-2] = levels[-2] - _pyramid_up(levels[-1])[:, :height, :width]
    return levels


def num_pyramid_levels(resolution: int) -> int:
    """Return the number of pyramid levels from `resolution` down to 16x16.

    Images smaller than 32x32 get a single level.
    """
    if resolution < PATCH_SIZE:
        raise ValueError(f"SWD needs images of at least {PATCH_SIZE}x{PATCH_SIZE} pixels, "
                         f"got {resolution}x{resolution}")
    levels = 1
    while resolution // 2 >= MIN_RESOLUTION:
        resolution //= 2
        levels += 1
    return levels


def extract_patches(level: np.ndarray, patches_per_image: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Return random 7x7 patches [N * patches_per_image, 7, 7, C] of a level [N, H, W, C]."""
    batch, height, width, _ = level.shape
    half = PATCH_SIZE // 2
    count = batch * patches_per_image
    image_index = np.repeat(np.arange(batch), patches_per_image)
    ys = rng.integers(half, height - half, size=count)
    xs = rng.integers(half, width - half, size=count)
    offsets = np.arange(-half, half + 1)
    rows = (ys[:, None] + offsets)[:, :, None]
    cols = (xs[:, None] + offsets)[:, None, :]
    return level[image_index[:, None, None], rows, cols]


def normalize_patches(patches: np.ndarray) -> np.ndarray:
    """Normalize each channel over all patches and flatten to [count, 7 * 7 * C]."""
    patches = patches - patches.mean(axis=(0, 1, 2), keepdims=True)
    patches = patches / np.maximum(patches.std(axis=(0, 1, 2), keepdims=True), 1e-8)
    return patches.reshape(len(patches), -1).astype(np.float32)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                       num_repeats: int = NUM_REPEATS,
                       directions_per_repeat: int = DIRECTIONS_PER_REPEAT) -> float:
    """Return the mean over random directions of the 1-D Wasserstein-1 distance.

    `a` and `b` are [count, dim] with equal counts.
    """
    if a.shape != b.shape:
        raise ValueError(f"patch sets differ in shape: {a.shape} vs {b.shape}")
    results = []
    for _ in range(num_repeats):
        directions = rng.standard_normal((directions_per_repeat, a.shape[1]))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        directions = directions.astype(a.dtype)
        # [directions, count] keeps each sorted row contiguous, which sorts much faster.
        projected_a = np.sort(directions @ a.T, axis=1)
        projected_b = np.sort(directions @ b.T, axis=1)
        results.append(np.abs(projected_a - projected_b).mean(dtype=np.float64))
    return float(np.mean(results))


def level_patches(images: np.ndarray, rng: np.random.Generator,
                  patches_per_image: int = PATCHES_PER_IMAGE) -> list[np.ndarray]:
    """Return normalized patches for every pyramid level of images [N, R, R, C] in [0, 255]."""
    num_levels = num_pyramid_levels(images.shape[1])
    pyramid = laplacian_pyramid(images, num_levels)
    return [normalize_patches(extract_patches(level, patches_per_image, rng))
            for level in pyramid]


def swd(images_a: np.ndarray, images_b: np.ndarray, seed: int = 0,
        patches_per_image: int = PATCHES_PER_IMAGE) -> dict[str, float]:
    """Return SWD x 1e3 per pyramid level ("32x32", ...) and their mean ("mean").

    Both sets are [N, R, R, C] pixel values in [0, 255] with the same R and C. Unequal
    set sizes are handled by randomly dropping patches of the larger set.
    """
    images_a = np.asarray(images_a, np.float32)
    images_b = np.asarray(images_b, np.float32)
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"image sets differ in shape: {images_a.shape[1:]} vs "
                         f"{images_b.shape[1:]}")
    rng = np.random.default_rng(seed)
    patches_a = level_patches(images_a, rng, patches_per_image)
    patches_b = level_patches(images_b, rng, patches_per_image)
    results = {}
    resolution = images_a.shape[1]
    for a, b in zip(patches_a, patches_b):
        count = min(len(a), len(b))
        a = a[rng.permutation(len(a))[:count]]
        b = b[rng.permutation(len(b))[:count]]
        results[f"{resolution}x{resolution}"] = sliced_wasserstein(a, b, rng) * 1e3
        resolution //= 2
    results["mean"] = float(np.mean(list(results.values())))
    return results
