"""Tests of FID, KID, IS, SWD, the Inception network and the metric entry points."""

import glob
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from metrics import fid, images, inception, inception_score, kid, registry, swd
from msg_tf import dataset as msg_dataset
from tests.conftest import EMOJI_DIR


def _emoji(count, size=None):
    paths = sorted(glob.glob(os.path.join(EMOJI_DIR, "*.png")))[:count]
    loaded = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size:
                image = image.resize((size, size), Image.LANCZOS)
            loaded.append(np.asarray(image))
    return np.stack(loaded)


# ---------------------------------------------------------------------------
# FID


def _reference_fid(features1, features2):
    """FID with the square root of S1 S2 from its (general, non-symmetric) eigenvalues."""
    mu1, mu2 = features1.mean(0), features2.mean(0)
    sigma1 = np.cov(features1, rowvar=False)
    sigma2 = np.cov(features2, rowvar=False)
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
            - 2 * trace_sqrt)


@pytest.mark.parametrize("count", [40, 300])  # fewer and more samples than dimensions
def test_fid_matches_numpy_reference(count):
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((64, 64))
    features1 = rng.standard_normal((count, 64)) @ mixing
    features2 = rng.standard_normal((count + 7, 64)) @ (mixing + 0.3) + 0.5
    expected = _reference_fid(features1, features2)

    from_features = fid.fid_from_features(features1, features2)
    from_statistics = fid.frechet_distance(*fid.feature_statistics(features1),
                                           *fid.feature_statistics(features2))

    # The reference takes square roots of near-zero eigenvalues when N < D, which
    # costs it some digits.
    assert from_features == pytest.approx(expected, rel=1e-6)
    assert from_statistics == pytest.approx(expected, rel=1e-6)


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    var1, var2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        expected, rel=1e-10)


@pytest.mark.parametrize("count", [50, 200])
def test_fid_of_set_with_itself(count):
    features = np.random.default_rng(2).standard_normal((count, 100)) * 3
    assert fid.fid_from_features(features, features) == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------------------
# KID


def _reference_mmd2(x, y):
    """Unbiased MMD^2 with explicit loops over the pairs."""
    m, dim = x.shape

    def k(a, b):
        return (a @ b / dim + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_numpy_reference():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((30, 8))
    fake = rng.standard_normal((30, 8)) * 1.5 + 0.2
    # One subset holding every feature: the estimate does not depend on the order.
    value = kid.kernel_inception_distance(real, fake, num_subsets=1, max_subset_size=1000)
    assert value == pytest.approx(_reference_mmd2(fake, real), rel=1e-10)


def test_kid_subsets_mean():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((50, 8))
    fake = rng.standard_normal((60, 8)) + 0.5
    value = kid.kernel_inception_distance(real, fake, num_subsets=5, max_subset_size=20,
                                          seed=9)
    draw = np.random.default_rng(9)
    expected = []
    for _ in range(5):
        x = fake[draw.choice(60, 20, replace=False)]
        y = real[draw.choice(50, 20, replace=False)]
        expected.append(_reference_mmd2(x, y))
    assert value == pytest.approx(np.mean(expected), rel=1e-10)


def test_kid_same_distribution_near_zero():
    rng = np.random.default_rng(5)
    same = kid.kernel_inception_distance(rng.standard_normal((400, 16)),
                                         rng.standard_normal((400, 16)), num_subsets=10)
    shifted = kid.kernel_inception_distance(rng.standard_normal((400, 16)),
                                            rng.standard_normal((400, 16)) + 1,
                                            num_subsets=10)
    assert abs(same) < 0.01
    assert shifted > 0.5


# ---------------------------------------------------------------------------
# IS


def _reference_inception_score(logits, splits):
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    n = len(probs)
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0)
        kl = [np.sum(p * (np.log(p) - np.log(marginal))) for p in part]
        scores.append(np.exp(np.mean(kl)))
    return np.mean(scores), np.std(scores)


def test_inception_score_matches_reference():
    logits = np.random.default_rng(6).standard_normal((103, 12)) * 2
    mean, std = inception_score.inception_score(logits, splits=10)
    expected_mean, expected_std = _reference_inception_score(logits, 10)
    assert mean == pytest.approx(expected_mean, rel=1e-10)
    assert std == pytest.approx(expected_std, rel=1e-8)


def test_inception_score_closed_forms():
    uniform = np.zeros((100, 1008))
    assert inception_score.inception_score(uniform)[0] == pytest.approx(1.0)
    # Confident predictions spread evenly over 5 classes within every split: IS = 5.
    confident = np.full((100, 1008), -50.0)
    confident[np.arange(100), np.arange(100) % 5] = 50.0
    mean, std = inception_score.inception_score(confident)
    assert mean == pytest.approx(5.0, rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------
# SWD


def test_swd_decreases_toward_target():
    emoji = _emoji(128, size=32).astype(np.float32)
    target, others = emoji[:64], emoji[64:]
    noise = np.random.default_rng(7).uniform(0, 255, others.shape)
    values = []
    for noise_level in (1.0, 0.5, 0.2, 0.0):
        blended = (1 - noise_level) * others + noise_level * noise
        values.append(swd.swd(target, blended, seed=0, patches_per_image=32)["mean"])
    assert values == sorted(values, reverse=True), values
    assert values[0] > 1.5 * values[-1]


def test_laplacian_pyramid_reconstructs():
    image = np.random.default_rng(8).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    levels = swd.laplacian_pyramid(image, 3)
    assert [level.shape[1] for level in levels] == [32, 16, 8]
    rebuilt = levels[-1]
    for level in reversed(levels[:-1]):
        rebuilt = level + swd._pyramid_up(rebuilt)
    np.testing.assert_allclose(rebuilt, image, atol=1e-3)


# ---------------------------------------------------------------------------
# Metric names and weight lookup


@pytest.mark.parametrize("name, kind, count, full, per_scale", [
    ("fid10k", "fid", 10000, False, False),
    ("fid50k_full", "fid", 50000, True, False),
    ("kid10k_perscale", "kid", 10000, False, True),
    ("is50k", "is", 50000, False, False),
    ("swd1k", "swd", 1000, False, False),
    ("fid500", "fid", 500, False, False),
])
def test_parse_metric_name(name, kind, count, full, per_scale):
    spec = registry.parse_metric_name(name)
    assert (spec.kind, spec.num_generated, spec.full, spec.per_scale) == (
        kind, count, full, per_scale)


@pytest.mark.parametrize("name", ["fid", "ppl10k", "is10k_full", "swd1k_perscale", "fid1",
                                  "is5"])
def test_parse_metric_name_invalid(name):
    with pytest.raises(ValueError, match=f"invalid metric name '{name}'.*fid10k, fid50k"):
        registry.parse_metric_name(name)


def test_missing_weights_names_locations(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(inception.InceptionWeightsError) as error:
        inception.find_weights(None)
    message = str(error.value)
    assert "--inception_weights" in message
    assert inception.WEIGHTS_ENV_VAR in message
    assert str(tmp_path / ".cache/msg_tf/inception-2015-12-05.weights.h5") in message
    assert "calc_metrics.py convert_inception" in message


def test_weights_lookup_order(tmp_path, monkeypatch):
    flag_file, env_file = tmp_path / "flag.weights.h5", tmp_path / "env.weights.h5"
    flag_file.touch()
    env_file.touch()
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(env_file))
    assert inception.find_weights(str(flag_file)) == str(flag_file)
    assert inception.find_weights(None) == str(env_file)
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "gone.weights.h5"))
    with pytest.raises(inception.InceptionWeightsError, match="gone.weights.h5"):
        inception.find_weights(None)


# ---------------------------------------------------------------------------
# Inception network (random weights)


@pytest.fixture(scope="module")
def random_extractor():
    return inception.InceptionFeatures.random(seed=0, with_logits=True)


def test_features_independent_of_batch_size(random_extractor):
    emoji = _emoji(6)
    whole = random_extractor(emoji)["pool3"]
    pairs = np.concatenate([random_extractor(emoji[i:i + 2])["pool3"] for i in (0, 2, 4)])
    singles = np.concatenate([random_extractor(emoji[i:i + 1])["pool3"] for i in range(6)])
    assert whole.shape == (6, 2048)
    assert np.abs(whole).max() > 1e-3
    np.testing.assert_allclose(pairs, whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(singles, whole, rtol=1e-4, atol=1e-5)


def test_grayscale_replicated(random_extractor):
    gray = _emoji(2, size=16).mean(axis=-1, keepdims=True).round().astype(np.uint8)
    np.testing.assert_allclose(random_extractor(gray)["pool3"],
                               random_extractor(np.repeat(gray, 3, -1))["pool3"], rtol=1e-6)


def _legacy_bilinear(x, out):
    """TF1 resize_bilinear without half-pixel centers: output i samples input i * n / out."""
    n = x.shape[1]
    s = np.arange(out) * n / out
    i0 = np.floor(s).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = s - i0
    rows = x[:, i0] * (1 - f)[None, :, None, None] + x[:, i1] * f[None, :, None, None]
    return rows[:, :, i0] * (1 - f)[None, None, :, None] + rows[:, :, i1] * f[None, None, :,
                                                                              None]


def test_resize_is_tf1_bilinear():
    x = np.random.default_rng(9).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    result = inception.LegacyBilinearResize(299)(x).numpy()
    np.testing.assert_allclose(result, _legacy_bilinear(x.astype(np.float64), 299), atol=1e-3)


def test_average_pool_excludes_padding():
    # Counting the zero padding would pull border averages of a constant image below 1.
    ones = np.ones((1, 5, 5, 1), np.float32)
    np.testing.assert_allclose(inception._avg_pool_3x3(ones, "pool").numpy(), ones, rtol=1e-6)


# ---------------------------------------------------------------------------
# Entry points


@pytest.fixture(scope="module")
def emoji_pyramid(emoji_dataset):
    """The dataset info and all images of the 32x32 emoji dataset, one array per level."""
    info = msg_dataset.inspect_dataset(emoji_dataset)
    batches = list(msg_dataset.make_dataset(info, 32, 8, shuffle=False, repeat=False))
    return info, [np.concatenate([batch[i].numpy() for batch in batches]) for i in range(4)]


def _pyramid_generator(emoji_pyramid, noise_level):
    """A stand-in generator that returns real images plus noise at every scale."""
    info, reals = emoji_pyramid

    def generate(z):
        rng = np.random.default_rng(int(np.abs(z[0, 0]) * 1e6))
        index = rng.integers(0, len(reals[0]), len(z))
        return [np.clip(level[index] + noise_level * rng.standard_normal(level[index].shape),
                        -1, 1).astype(np.float32) for level in reals]

    return info, generate


def test_compute_metric_swd(emoji_pyramid):
    info, generate = _pyramid_generator(emoji_pyramid, 0.5)
    result = registry.compute_metric("swd32", generate, info, num_channels=3, latent_size=4,
                                     batch_size=16)
    assert sorted(result) == ["swd32", "swd32/16x16", "swd32/32x32"]
    assert result["swd32"] == pytest.approx(
        (result["swd32/16x16"] + result["swd32/32x32"]) / 2)


def test_compute_metric_channel_mismatch(emoji_pyramid):
    info, generate = _pyramid_generator(emoji_pyramid, 0.0)
    with pytest.raises(images.ImageSourceError, match="has 3 channels, but num_channels is 1"):
        registry.compute_metric("fid10", generate, info, num_channels=1, latent_size=4)


def test_compute_metric_fid_per_scale_cached(emoji_pyramid, tmp_path, monkeypatch,
                                             random_extractor):
    monkeypatch.setattr(registry, "load_extractor", lambda path: random_extractor)
    info, generate = _pyramid_generator(emoji_pyramid, 0.3)
    cache_dir = tmp_path / "cache"

    first = registry.compute_metric("fid4_perscale", generate, info, num_channels=3,
                                    latent_size=4, batch_size=4, cache_dir=str(cache_dir))
    cached = sorted(os.listdir(cache_dir))
    second = registry.compute_metric("fid4_perscale", generate, info, num_channels=3,
                                     latent_size=4, batch_size=4, cache_dir=str(cache_dir))

    assert sorted(first) == [f"fid4_perscale/{r}x{r}" for r in (16, 32, 4, 8)]
    assert all(value > 0 for value in first.values())
    assert len(cached) == 4
    assert second == pytest.approx(first, rel=1e-6)


def test_inception_score_needs_logits(emoji_pyramid, monkeypatch, random_extractor):
    without_logits = inception.InceptionFeatures(random_extractor.model, has_logits=False,
                                                 weights_sha256=None,
                                                 weights_path="features-only.weights.h5")
    monkeypatch.setattr(registry, "load_extractor", lambda path: without_logits)
    info, generate = _pyramid_generator(emoji_pyramid, 0.0)
    with pytest.raises(inception.InceptionWeightsError,
                       match="is10 needs the 1008-class classifier.*features-only"):
        registry.compute_metric("is10", generate, info, num_channels=3, latent_size=4)


def test_calc_metrics_cli_folders(tmp_path, capsys):
    import calc_metrics
    from absl import flags

    for name, offset in (("a", 0), ("b", 40)):
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(_emoji(offset + 40, size=16)[offset:]):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    flags.FLAGS(["calc_metrics", "--metrics=swd40", f"--data={tmp_path / 'a'}",
                 f"--images={tmp_path / 'b'}"])
    try:
        calc_metrics.run(["calc_metrics"])
    finally:
        flags.FLAGS.unparse_flags()
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["metric"] == "swd40"
    assert record["value"] == record["results"]["swd40"]
    assert sorted(record["results"]) == ["swd40", "swd40/16x16"]


def test_calc_metrics_warns_on_short_folder(tmp_path, capsys, caplog):
    import calc_metrics
    from absl import flags

    for name, offset in (("a", 0), ("b", 8)):
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(_emoji(offset + 8, size=16)[offset:]):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    flags.FLAGS(["calc_metrics", "--metrics=swd100", f"--data={tmp_path / 'a'}",
                 f"--images={tmp_path / 'b'}"])
    try:
        with caplog.at_level(logging.WARNING, logger="absl"):
            calc_metrics.run(["calc_metrics"])
    finally:
        flags.FLAGS.unparse_flags()
    assert f"swd100: --images {tmp_path / 'b'} holds only 8 images, fewer than the 100" \
        in caplog.text
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["metric"] == "swd100"


def test_calc_metrics_cli_network(emoji_dataset, tmp_path, capsys):
    import calc_metrics
    import tensorflow as tf
    from absl import flags

    from msg_tf import training
    from msg_tf.config import TrainingConfig

    run_dir = tmp_path / "run"
    config = TrainingConfig(dataset=emoji_dataset, run_dir=str(run_dir), resolution=32,
                            num_channels=3, latent_size=8, channel_base=64, channel_max=8)
    G = training.build_generator(config, name="G_ema")
    G(np.zeros((1, 8), np.float32))
    run_dir.mkdir()
    with open(run_dir / "training_options.json", "w") as f:
        json.dump(config.to_dict(), f)
    checkpoint = tf.train.Checkpoint(G_ema=training.variables_by_path(G.weights))
    tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"), 1).save(
        checkpoint_number=4000)

    flags.FLAGS(["calc_metrics", "--metrics=swd16", f"--network={run_dir}"])
    try:
        calc_metrics.run(["calc_metrics"])
    finally:
        flags.FLAGS.unparse_flags()

    with open(run_dir / "metric-swd16.jsonl") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["metric"] == "swd16"
    assert record["kimg"] == 4.0
    assert record["snapshot"].endswith("ckpt-4000")
    assert record["value"] == record["results"]["swd16"] > 0
    assert json.loads(capsys.readouterr().out.strip()) == record
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
