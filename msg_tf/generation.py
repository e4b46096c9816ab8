"""Figures and exports from a trained generator (G_ema).

Sample grids, multi-scale sheets, latent interpolation animations, style-mixing figures
and a SavedModel export for serving. Every figure draws the latent of seed `s` as
`np.random.RandomState(s).randn(latent_size)`, so a seed names the same image in every
figure made from one checkpoint.

Options are validated and all images are rendered before the output folder is created or
any file is written, so a user error leaves no partial output. Each file is written under
a temporary name in its folder and then renamed into place.
"""

import dataclasses
import math
import os
import re
import secrets
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from msg_tf import inference
from msg_tf.config import ConfigError, TrainingConfig
from msg_tf.dataset import to_uint8
from networks import mix_styles
from networks.msg_stylegan import NOISE_MODES

SPACES = ("z", "w")
# Resolutions (inclusive) whose style layers each named --styles group replaces; None
# means no upper bound.
STYLE_GROUPS = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, None)}
MAX_SEED = 2**32 - 1            # the largest seed np.random.RandomState accepts
FILL_VALUE = 255                # separators and empty grid cells are white
SAVED_MODEL_DIR = "saved_model"


class GenerationError(ConfigError):
    """A user-facing problem with the generation options."""


@dataclasses.dataclass(frozen=True)
class Network:
    """A restored G_ema with the options of the run that trained it."""

    G: keras.Model
    config: TrainingConfig
    checkpoint: str

    @property
    def is_stylegan(self) -> bool:
        return self.config.arch == "stylegan"

    @property
    def scales(self) -> list[int]:
        return list(self.G.scales)

    @property
    def latent_size(self) -> int:
        return self.config.latent_size


def load_network(path: str) -> Network:
    """Restore G_ema from a run directory or a checkpoint prefix."""
    if not path:
        raise GenerationError("missing --network: pass a run directory of train.py or a "
                              "checkpoint prefix such as RUN_DIR/checkpoints/ckpt-40000")
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise GenerationError(f"--network={path} not found: pass an existing run directory "
                              "of train.py or a checkpoint prefix such as "
                              "RUN_DIR/checkpoints/ckpt-40000")
    G, config, prefix = inference.load_generator(path)
    logging.info("loaded %s: MSG-%s, %dx%d, latent size %d", prefix,
                 "StyleGAN" if config.arch == "stylegan" else "ProGAN",
                 config.resolution, config.resolution, config.latent_size)
    return Network(G, config, prefix)


# ---------------------------------------------------------------------------------------
# Option parsing and validation

_SEED_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(spec: str, flag: str = "seeds") -> list[int]:
    """Parse a seed list such as '0-63', '0,5,9' or '1-3,7' (ranges are inclusive).

    Seeds keep their order and repeats. `flag` names the option in error messages.
    """
    hint = (f"expected comma-separated seeds or inclusive ranges from 0 to {MAX_SEED}, "
            f"e.g. --{flag}=0-63 or --{flag}=0,5,9")
    if spec is None or not str(spec).strip():
        raise GenerationError(f"missing --{flag}: {hint}")
    seeds = []
    for item in str(spec).split(","):
        match = _SEED_ITEM.match(item.strip())
        if not match:
            raise GenerationError(f"invalid --{flag}={spec!r}: {item.strip()!r} is not a seed "
                                  f"or a range; {hint}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise GenerationError(f"invalid --{flag}={spec!r}: the range {item.strip()} ends "
                                  f"before it starts; write it as {last}-{first}")
        if last > MAX_SEED:
            raise GenerationError(f"invalid --{flag}={spec!r}: seed {last} is larger than "
                                  f"{MAX_SEED}; {hint}")
        seeds.extend(range(first, last + 1))
    return seeds


def latents_for_seeds(seeds: list[int], latent_size: int) -> np.ndarray:
    """Return float32 latents [len(seeds), latent_size]: RandomState(seed).randn(latent_size)."""
    return np.stack([np.random.RandomState(seed).randn(latent_size)
                     for seed in seeds]).astype(np.float32)


def require_stylegan(network: Network, feature: str) -> None:
    """Raise GenerationError naming `feature` unless the network is an MSG-StyleGAN."""
    if not network.is_stylegan:
        raise GenerationError(
            f"{feature} needs an MSG-StyleGAN network, but {network.checkpoint} is MSG-ProGAN "
            "(--arch=progan), which has no mapping network and no styles: use a run "
            "trained with --arch=stylegan")


def check_generation_options(network: Network, truncation_psi: float = 1.0,
                             truncation_cutoff: int | None = None,
                             noise_mode: str = "const", batch_size: int = 16) -> None:
    """Raise GenerationError for options the network cannot use."""
    if not math.isfinite(truncation_psi):
        raise GenerationError(f"invalid --truncation_psi={truncation_psi}: expected a finite "
                              "number (1 = no truncation, 0 = the average w)")
    if truncation_psi != 1.0:
        require_stylegan(network, f"--truncation_psi={truncation_psi}")
    if truncation_cutoff is not None:
        require_stylegan(network, f"--truncation_cutoff={truncation_cutoff}")
        if not 0 <= truncation_cutoff <= network.G.num_ws:
            raise GenerationError(
                f"invalid --truncation_cutoff={truncation_cutoff}: this network has "
                f"{network.G.num_ws} style layers, so expected 0 to {network.G.num_ws} "
                "(truncation applies to the layers below the cutoff)")
    if noise_mode not in NOISE_MODES:
        raise GenerationError(f"invalid --noise_mode={noise_mode!r}: expected one of "
                              f"{', '.join(NOISE_MODES)}")
    if batch_size < 1:
        raise GenerationError(f"invalid --batch_size={batch_size}: expected a positive number")


def _check_layout(display_size: int, separator: int) -> None:
    """Raise GenerationError for a negative --display_size or --separator."""
    if display_size < 0:
        raise GenerationError(f"invalid --display_size={display_size}: expected 0 (the "
                              "finest resolution) or a size in pixels")
    if separator < 0:
        raise GenerationError(f"invalid --separator={separator}: expected a width in pixels, "
                              "0 or more")


def _check_positive(flag: str, value) -> None:
    if not value > 0:
        raise GenerationError(f"invalid --{flag}={value}: expected a positive number")


def style_layers(network: Network, styles: str) -> tuple[int, int]:
    """Return the first and last style layer (inclusive) that `styles` selects.

    `styles` is a group name (coarse: the layers of 4x4 and 8x8, middle: 16x16 and 32x32,
    fine: 64x64 and up) or an explicit layer range 'A-B' (a single 'A' means A-A).
    Layers 2k and 2k + 1 belong to scale k.
    """
    require_stylegan(network, "style mixing")
    num_ws = network.G.num_ws
    valid = (f"expected coarse, middle, fine or a layer range A-B with "
             f"0 <= A <= B <= {num_ws - 1}")
    if styles in STYLE_GROUPS:
        low, high = STYLE_GROUPS[styles]
        layers = [layer for layer in range(num_ws)
                  if low <= network.scales[layer // 2] and
                  (high is None or network.scales[layer // 2] <= high)]
        if not layers:
            finest = network.scales[-1]
            raise GenerationError(
                f"--styles={styles} selects no style layers of this {finest}x{finest} "
                f"network: {styles} starts at {low}x{low}; {valid}")
        return layers[0], layers[-1]
    match = re.match(r"^(\d+)(?:-(\d+))?$", str(styles).strip())
    if not match:
        raise GenerationError(f"unknown --styles={styles!r}: {valid}")
    first = int(match.group(1))
    last = first if match.group(2) is None else int(match.group(2))
    if not 0 <= first <= last < num_ws:
        raise GenerationError(f"invalid --styles={styles!r} for a network with {num_ws} style "
                              f"layers: {valid}")
    return first, last


# ---------------------------------------------------------------------------------------
# Running the generator

def map_latents(network: Network, latents: np.ndarray, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, batch_size: int = 16) -> np.ndarray:
    """Return ws [N, num_ws, w_size] for latents [N, latent_size], truncated (StyleGAN only)."""
    require_stylegan(network, "mapping latents to w")
    ws = [network.G.map(latents[start:start + batch_size], truncation_psi,
                        truncation_cutoff).numpy()
          for start in range(0, len(latents), batch_size)]
    return np.concatenate(ws)


def _batches(network, inputs, from_ws, truncation_psi, truncation_cutoff, noise_mode,
             batch_size):
    """Yield one list of images (coarse to fine, float32 numpy) per batch of `inputs`."""
    for start in range(0, len(inputs), batch_size):
        batch = tf.constant(inputs[start:start + batch_size])
        if from_ws:
            images = network.G.synthesize(batch, noise_mode=noise_mode)
        elif network.is_stylegan:
            images = network.G(batch, truncation_psi=truncation_psi,
                               truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
        else:
            images = network.G(batch)
        yield [image.numpy() for image in images]


def _run(network, inputs, from_ws=False, truncation_psi=1.0, truncation_cutoff=None,
         noise_mode="const", batch_size=16, as_uint8=False) -> list[np.ndarray]:
    per_scale = [[] for _ in network.scales]
    for images in _batches(network, inputs, from_ws, truncation_psi, truncation_cutoff,
                           noise_mode, batch_size):
        for scale, image in enumerate(images):
            # uint8 keeps long animations at high resolution at a quarter of the memory.
            per_scale[scale].append(to_uint8(image) if as_uint8 else image)
    return [np.concatenate(parts) for parts in per_scale]


def generate_images(network: Network, latents: np.ndarray, truncation_psi: float = 1.0,
                    truncation_cutoff: int | None = None, noise_mode: str = "const",
                    batch_size: int = 16) -> list[np.ndarray]:
    """Return the images of latents [N, latent_size]: one float32 array per scale.

    Outputs are not clipped. `noise_mode` and truncation apply to MSG-StyleGAN only.
    """
    return _run(network, latents, False, truncation_psi, truncation_cutoff, noise_mode,
                batch_size)


def synthesize_images(network: Network, ws: np.ndarray, noise_mode: str = "const",
                      batch_size: int = 16) -> list[np.ndarray]:
    """Return the images of ws [N, num_ws, w_size]: one float32 array per scale."""
    require_stylegan(network, "synthesis from w")
    return _run(network, ws, True, noise_mode=noise_mode, batch_size=batch_size)


# ---------------------------------------------------------------------------------------
# Layout

def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Resize square images [N, h, h, C] to [N, size, size, C] by nearest neighbour.

    Each output pixel takes the input pixel under its centre, so an integer factor
    repeats every pixel exactly factor x factor times.
    """
    height = images.shape[1]
    if height == size:
        return images
    index = np.floor((np.arange(size) + 0.5) * height / size).astype(np.int64)
    return images[:, index][:, :, index]


def tile(cells: np.ndarray, separator: int = 0) -> np.ndarray:
    """Tile uint8 cells [rows, columns, H, W, C] into one image with white separators.

    The result is [rows * H + (rows - 1) * separator, columns * W + (columns - 1) *
    separator, C].
    """
    rows, columns, height, width, channels = cells.shape
    canvas = np.full((rows * height + (rows - 1) * separator,
                      columns * width + (columns - 1) * separator, channels),
                     FILL_VALUE, np.uint8)
    for row in range(rows):
        for column in range(columns):
            top = row * (height + separator)
            left = column * (width + separator)
            canvas[top:top + height, left:left + width] = cells[row, column]
    return canvas


def grid_cells(images: np.ndarray, columns: int) -> np.ndarray:
    """Arrange uint8 images [N, H, W, C] row by row into cells [rows, columns, H, W, C].

    Cells after the last image stay white.
    """
    count = len(images)
    rows = -(-count // columns)
    cells = np.full((rows * columns,) + images.shape[1:], FILL_VALUE, np.uint8)
    cells[:count] = images
    return cells.reshape((rows, columns) + images.shape[1:])


def default_columns(count: int) -> int:
    """Return the column count of a near-square grid of `count` images."""
    return max(1, math.ceil(math.sqrt(count)))


# ---------------------------------------------------------------------------------------
# Writing files atomically

def _temporary_path(path: str, suffix: str = ".tmp") -> str:
    """Return an unused hidden name beside `path`.

    Unlike tempfile.mkstemp, the caller creates the file, so it gets the usual
    umask-based permissions instead of owner-only access.
    """
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _write_atomic(path: str, write) -> None:
    """Call write(temporary_path), then rename the file to `path`.

    The temporary name keeps the extension because ffmpeg picks the container from it.
    """
    tmp = _temporary_path(path, ".tmp" + os.path.splitext(path)[1])
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logging.info("wrote %s", path)


def _pil_image(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(image: np.ndarray, path: str) -> None:
    """Save a uint8 image [H, W, 1 or 3] as PNG."""
    _write_atomic(path, lambda tmp: _pil_image(image).save(tmp, format="PNG"))


def save_gif(frames: np.ndarray, path: str, fps: float) -> None:
    """Save uint8 frames [F, H, W, C] as a looping GIF.

    GIF stores frame delays in hundredths of a second, so the delay is 1 / fps rounded
    down to 10 ms. Pillow merges identical consecutive frames into one longer frame, so
    a GIF of repeated frames contains fewer frames but plays for the same time.
    """
    images = [_pil_image(frame) for frame in frames]
    duration_ms = 1000.0 / fps

    def write(tmp):
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=duration_ms, loop=0)

    _write_atomic(path, write)


def save_mp4_if_available(frames: np.ndarray, path: str, fps: float) -> bool:
    """Save frames [F, H, W, C] as MP4 when imageio and imageio-ffmpeg are installed.

    Returns whether the file was written; without the packages it logs and skips.
    """
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the FFMPEG format of imageio needs it)
    except ImportError:
        logging.info("skipped %s: install imageio and imageio-ffmpeg to get MP4 videos as "
                     "well as GIFs", path)
        return False

    # NOTE: this path has not run in this project's tests because imageio is not a
    # dependency. imageio pads frames to multiples of 16 pixels for the H.264 encoder.
    def write(tmp):
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps)
        try:
            for frame in frames:
                writer.append_data(frame[..., 0] if frame.shape[-1] == 1 else frame)
        finally:
            writer.close()

    _write_atomic(path, write)
    return True


# ---------------------------------------------------------------------------------------
# Sample grids and multi-scale sheets

def render_samples(network: Network, seeds: list[int], truncation_psi: float = 1.0,
                   truncation_cutoff: int | None = None, noise_mode: str = "const",
                   batch_size: int = 16) -> list[np.ndarray]:
    """Return uint8 images [len(seeds), res, res, C] of the seeds, one array per scale."""
    check_generation_options(network, truncation_psi, truncation_cutoff, noise_mode,
                             batch_size)
    latents = latents_for_seeds(seeds, network.latent_size)
    return _run(network, latents, False, truncation_psi, truncation_cutoff, noise_mode,
                batch_size, as_uint8=True)


def write_samples(network: Network, outdir: str, seeds: list[int], columns: int = 0,
                  individual: bool = False, truncation_psi: float = 1.0,
                  truncation_cutoff: int | None = None, noise_mode: str = "const",
                  batch_size: int = 16) -> list[str]:
    """Write one grid per scale, `samples-RxR.png`, and with `individual` one PNG per seed.

    The grids fill rows left to right in seed order, `columns` wide (0: near-square).
    Individual files are `seedNNNN.png` at the finest scale. Returns the paths written.
    """
    if columns < 0:
        raise GenerationError(f"invalid --columns={columns}: expected 0 (near-square) or a "
                              "positive number")
    per_scale = render_samples(network, seeds, truncation_psi, truncation_cutoff,
                               noise_mode, batch_size)
    columns = columns or default_columns(len(seeds))
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for res, images in zip(network.scales, per_scale):
        path = os.path.join(outdir, f"samples-{res}x{res}.png")
        save_png(tile(grid_cells(images, columns)), path)
        paths.append(path)
    if individual:
        for seed, image in zip(seeds, per_scale[-1]):
            path = os.path.join(outdir, f"seed{seed:04d}.png")
            save_png(image, path)
            paths.append(path)
    return paths


def render_sheet(network: Network, seeds: list[int], display_size: int = 0,
                 separator: int = 2, truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None, noise_mode: str = "const",
                 batch_size: int = 16) -> np.ndarray:
    """Return a uint8 sheet: one row per scale (coarse on top), one column per seed.

    Every image is resized by nearest neighbour to `display_size` D (0: the finest
    resolution), and cells are `separator` pixels apart. For S scales and N seeds the
    sheet is [S * D + (S - 1) * separator, N * D + (N - 1) * separator, C].
    """
    _check_layout(display_size, separator)
    per_scale = render_samples(network, seeds, truncation_psi, truncation_cutoff,
                               noise_mode, batch_size)
    size = display_size or network.scales[-1]
    cells = np.stack([resize_nearest(images, size) for images in per_scale])
    return tile(cells, separator)


def write_sheet(network: Network, outdir: str, seeds: list[int], **options) -> str:
    """Write `sheet.png` (see render_sheet for the layout and options); return its path."""
    sheet = render_sheet(network, seeds, **options)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "sheet.png")
    save_png(sheet, path)
    return path


# ---------------------------------------------------------------------------------------
# Interpolation

def slerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Interpolate spherically from vector `a` (t = 0) to vector `b` (t = 1).

    Returns sin((1 - t) w) / sin(w) * a + sin(t w) / sin(w) * b, where w is the angle
    between a and b, with one row per value of `t` when `t` is an array. For vectors of
    equal norm the path runs along the great circle through them at constant speed. For
    nearly parallel vectors, where sin(w) underflows, it falls back to linear
    interpolation. Opposite vectors have no unique great circle and also get the linear
    path, which passes through the origin.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    t = np.asarray(t, np.float64)[..., np.newaxis]
    cosine = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return (1.0 - t) * a + t * b
    return (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def interpolation_path(keyframes: np.ndarray, frames_per_transition: int,
                       space: str) -> np.ndarray:
    """Return frames_per_transition points from each keyframe to the next, looping back.

    `keyframes` is [K, ...]; the result is [K * frames_per_transition, ...] and starts at
    keyframes[0]. Each transition leaves out its end point because the next transition
    starts there. z-space uses slerp, w-space linear interpolation.
    """
    shape = keyframes.shape[1:]
    flat = keyframes.reshape(len(keyframes), -1).astype(np.float64)
    t = np.arange(frames_per_transition) / frames_per_transition
    path = []
    for index in range(len(flat)):
        start, end = flat[index], flat[(index + 1) % len(flat)]
        if space == "z":
            path.append(slerp(start, end, t))
        else:
            path.append((1.0 - t[:, np.newaxis]) * start + t[:, np.newaxis] * end)
    return np.concatenate(path).reshape((-1,) + shape).astype(np.float32)


def render_interpolation(network: Network, seeds: list[int], space: str = "z",
                         frames_per_transition: int = 30, truncation_psi: float = 1.0,
                         truncation_cutoff: int | None = None, noise_mode: str = "const",
                         batch_size: int = 16) -> list[np.ndarray]:
    """Return uint8 frames [len(seeds) * frames_per_transition, res, res, C] per scale.

    The animation visits the seeds in order and loops back to the first. With space "z"
    the latents are interpolated by slerp: both generators normalise z onto the
    hypersphere, so the great circle is the natural path. With space "w" (MSG-StyleGAN
    only) the mapped, truncated ws are interpolated linearly.
    """
    if space not in SPACES:
        raise GenerationError(f"invalid --space={space!r}: expected z or w")
    if space == "w":
        require_stylegan(network, "--space=w")
    if len(seeds) < 2:
        raise GenerationError(f"interpolation needs at least 2 seeds, got {seeds}: pass "
                              "e.g. --seeds=0,1,2")
    _check_positive("frames_per_transition", frames_per_transition)
    check_generation_options(network, truncation_psi, truncation_cutoff, noise_mode,
                             batch_size)
    latents = latents_for_seeds(seeds, network.latent_size)
    if space == "z":
        path = interpolation_path(latents, frames_per_transition, "z")
        return _run(network, path, False, truncation_psi, truncation_cutoff, noise_mode,
                    batch_size, as_uint8=True)
    ws = map_latents(network, latents, truncation_psi, truncation_cutoff, batch_size)
    path = interpolation_path(ws, frames_per_transition, "w")
    return _run(network, path, True, noise_mode=noise_mode, batch_size=batch_size,
                as_uint8=True)


def write_interpolation(network: Network, outdir: str, seeds: list[int], space: str = "z",
                        frames_per_transition: int = 30, fps: float = 30.0,
                        all_scales: bool = False, display_size: int = 0,
                        separator: int = 2, **options) -> list[str]:
    """Write `interpolation.gif` of the finest scale, and an MP4 when imageio can.

    With `all_scales`, also `interpolation-all-scales.gif`: every frame shows all scales
    side by side (coarse on the left), each resized by nearest neighbour to
    `display_size` (0: the finest resolution). Returns the paths written.
    """
    _check_positive("fps", fps)
    _check_layout(display_size, separator)
    per_scale = render_interpolation(network, seeds, space, frames_per_transition, **options)
    animations = {"interpolation": per_scale[-1]}
    if all_scales:
        size = display_size or network.scales[-1]
        cells = np.stack([resize_nearest(frames, size) for frames in per_scale], axis=1)
        animations["interpolation-all-scales"] = np.stack(
            [tile(frame_cells[np.newaxis], separator) for frame_cells in cells])

    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, frames in animations.items():
        path = os.path.join(outdir, f"{name}.gif")
        save_gif(frames, path, fps)
        paths.append(path)
        mp4_path = os.path.join(outdir, f"{name}.mp4")
        if save_mp4_if_available(frames, mp4_path, fps):
            paths.append(mp4_path)
    return paths


# ---------------------------------------------------------------------------------------
# Style mixing

@dataclasses.dataclass(frozen=True)
class StyleMixing:
    """Finest-scale float32 images of a style-mixing figure."""

    row_images: np.ndarray      # [R, H, W, C], the row sources
    column_images: np.ndarray   # [K, H, W, C], the column sources
    cells: np.ndarray           # [R, K, H, W, C], see render_style_mixing
    layers: tuple[int, int]     # first and last mixed style layer, inclusive


def render_style_mixing(network: Network, row_seeds: list[int], column_seeds: list[int],
                        styles: str = "coarse", truncation_psi: float = 1.0,
                        truncation_cutoff: int | None = None, noise_mode: str = "const",
                        batch_size: int = 16) -> StyleMixing:
    """Mix the styles of row and column seeds (MSG-StyleGAN only), at the finest scale.

    Cell (r, c) is the image of row r's ws with the style layers chosen by `styles`
    replaced by column c's ws: `mix_styles(ws_row[r], ws_column[c], A, B + 1)`. So each
    row keeps its own layers outside A-B, and each column lends the same layers to every
    row (the layout of the StyleGAN paper's style-mixing figure).
    """
    require_stylegan(network, "style mixing")
    check_generation_options(network, truncation_psi, truncation_cutoff, noise_mode,
                             batch_size)
    first, last = style_layers(network, styles)
    row_ws = map_latents(network, latents_for_seeds(row_seeds, network.latent_size),
                         truncation_psi, truncation_cutoff, batch_size)
    column_ws = map_latents(network, latents_for_seeds(column_seeds, network.latent_size),
                            truncation_psi, truncation_cutoff, batch_size)
    mixed = np.concatenate([
        mix_styles(np.repeat(row_ws[r:r + 1], len(column_ws), axis=0), column_ws,
                   first, last + 1).numpy()
        for r in range(len(row_ws))])
    row_images = synthesize_images(network, row_ws, noise_mode, batch_size)[-1]
    column_images = synthesize_images(network, column_ws, noise_mode, batch_size)[-1]
    cells = synthesize_images(network, mixed, noise_mode, batch_size)[-1]
    cells = cells.reshape((len(row_ws), len(column_ws)) + cells.shape[1:])
    return StyleMixing(row_images, column_images, cells, (first, last))


def compose_style_mixing(mixing: StyleMixing, separator: int = 0) -> np.ndarray:
    """Lay out a uint8 figure: column sources on top, row sources on the left.

    The top-left cell is empty (white) and cell (r, c) of the mixing sits at figure
    cell (r + 1, c + 1).
    """
    rows, columns = mixing.cells.shape[:2]
    height, width, channels = mixing.cells.shape[2:]
    cells = np.full((rows + 1, columns + 1, height, width, channels), FILL_VALUE, np.uint8)
    cells[0, 1:] = to_uint8(mixing.column_images)
    cells[1:, 0] = to_uint8(mixing.row_images)
    cells[1:, 1:] = to_uint8(mixing.cells)
    return tile(cells, separator)


def write_style_mixing(network: Network, outdir: str, row_seeds: list[int],
                       column_seeds: list[int], styles: str = "coarse", separator: int = 0,
                       **options) -> str:
    """Write `style-mixing-layersA-B.png` (see render_style_mixing); return its path."""
    _check_layout(0, separator)
    mixing = render_style_mixing(network, row_seeds, column_seeds, styles, **options)
    figure = compose_style_mixing(mixing, separator)
    first, last = mixing.layers
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"style-mixing-layers{first}-{last}.png")
    save_png(figure, path)
    return path


# ---------------------------------------------------------------------------------------
# SavedModel export

class ExportedGenerator(tf.Module):
    """G_ema wrapped for tf.saved_model: `generate` plus the model's constants.

    `generate(latents [N, latent_size] float32, truncation_psi scalar float32)` returns
    {"image_RxR": [N, R, R, C] float32 clipped to [-1, 1]} for every scale R. MSG-StyleGAN
    uses noise_mode "const", so equal inputs give equal outputs. MSG-ProGAN has nothing to
    truncate: it asserts truncation_psi == 1 and fails with InvalidArgumentError otherwise.
    `describe()` returns the constants latent_size, resolutions and num_channels.
    """

    def __init__(self, network: Network):
        super().__init__(name="msg_gan_generator")
        self.generator = network.G
        # Keras 3 hands its tracked lists to tf.saved_model as plain lists, so layers in
        # nested lists (MsgProGanGenerator.block_convs) are not reachable from the model.
        # Tracking every weight here makes the SavedModel hold them all.
        self.generator_weights = list(network.G.weights)
        self.is_stylegan = network.is_stylegan
        self.latent_size = tf.Variable(network.latent_size, dtype=tf.int32, trainable=False,
                                       name="latent_size")
        self.resolutions = tf.Variable(network.scales, dtype=tf.int32, trainable=False,
                                       name="resolutions")
        self.num_channels = tf.Variable(network.G.num_channels, dtype=tf.int32,
                                        trainable=False, name="num_channels")
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec([None, network.latent_size], tf.float32, name="latents"),
            tf.TensorSpec([], tf.float32, name="truncation_psi")])
        self.describe = tf.function(self._describe, input_signature=[])

    def _generate(self, latents, truncation_psi):
        if self.is_stylegan:
            ws = self.generator.map(latents, truncation_psi)
            images = self.generator.synthesize(ws, noise_mode="const")
        else:
            check = tf.debugging.assert_equal(
                truncation_psi, 1.0, message="MSG-ProGAN has no truncation: pass "
                "truncation_psi=1.0")
            with tf.control_dependencies([check]):
                images = self.generator(tf.identity(latents))
        return {f"image_{image.shape[1]}x{image.shape[2]}": tf.clip_by_value(image, -1.0, 1.0)
                for image in images}

    def _describe(self):
        return {"latent_size": tf.identity(self.latent_size),
                "resolutions": tf.identity(self.resolutions),
                "num_channels": tf.identity(self.num_channels)}


def export_saved_model(network: Network, outdir: str) -> str:
    """Write G_ema as a SavedModel to `outdir/saved_model`; return that path.

    Signatures: "serving_default" (ExportedGenerator.generate) and "describe". An
    existing SavedModel there is replaced only after the new one is complete; any other
    existing folder of that name is an error.
    """
    target = os.path.join(outdir, SAVED_MODEL_DIR)
    if os.path.exists(target) and not os.path.exists(os.path.join(target, "saved_model.pb")):
        raise GenerationError(f"{target} exists and is not a SavedModel: move it away or "
                              "choose another --outdir")
    module = ExportedGenerator(network)
    os.makedirs(outdir, exist_ok=True)
    tmp = _temporary_path(target)
    old = None
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.generate,
                                                     "describe": module.describe})
        if os.path.exists(target):
            # os.replace cannot replace a non-empty folder, so the old export steps aside
            # first and is deleted once the new one is in place.
            old = _temporary_path(target, ".old")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old)
    logging.info("wrote SavedModel %s", target)
    return target
