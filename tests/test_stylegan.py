import os

import numpy as np
import pytest
import tensorflow as tf

from msg_tf import training
from msg_tf.config import ConfigError, TrainingConfig, validate
from networks import MsgStyleGanGenerator, mix_styles, scales_for
from networks.msg_stylegan import NoiseInput, adaptive_instance_norm, blur_121


def tiny_generator(resolution=16, **kwargs):
    options = dict(latent_size=8, channel_base=64, channel_max=8, mapping_depth=2,
                   mapping_width=8)
    options.update(kwargs)
    G = MsgStyleGanGenerator(resolution, **options)
    G(tf.zeros([1, options["latent_size"]]))
    return G


@pytest.mark.parametrize("resolution", [8, 32, 64])
def test_outputs_every_scale(resolution):
    G = tiny_generator(resolution, num_channels=1)
    images = G(tf.random.normal([3, 8]))
    assert [tuple(image.shape) for image in images] == [(3, r, r, 1)
                                                       for r in scales_for(resolution)]
    assert all(image.dtype == tf.float32 for image in images)
    assert G.num_ws == 2 * len(scales_for(resolution))


def test_adain_matches_numpy():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 3, 4).astype(np.float32)
    scale = rng.randn(2, 4).astype(np.float32)
    bias = rng.randn(2, 4).astype(np.float32)
    y = adaptive_instance_norm(tf.constant(x), tf.constant(scale), tf.constant(bias)).numpy()
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=(1, 2), keepdims=True) + 1e-8)
    expected = (x - mean) / std * scale[:, None, None, :] + bias[:, None, None, :]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_noise_input_matches_numpy():
    layer = NoiseInput()
    x = np.random.RandomState(1).randn(2, 4, 4, 3).astype(np.float32)
    layer(tf.constant(x))
    strength = np.array([0.5, -1.0, 2.0], np.float32)
    layer.strength.assign(strength)
    y = layer(tf.constant(x), noise_mode="const").numpy()
    expected = x + layer.const_noise.numpy() * strength
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_array_equal(layer(tf.constant(x), noise_mode="none").numpy(), x)
    random = layer(tf.constant(x), noise_mode="random").numpy() - x
    # Random noise is one map per sample, scaled per channel: channel 1 is -2x channel 0.
    np.testing.assert_allclose(random[..., 1], -2.0 * random[..., 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(random[0], random[1])


def test_blur_matches_numpy():
    x = np.random.RandomState(2).randn(1, 5, 5, 2).astype(np.float32)
    y = blur_121(tf.constant(x)).numpy()
    kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    padded = np.pad(x[0], [(1, 1), (1, 1), (0, 0)])
    expected = np.zeros_like(x[0])
    for i in range(5):
        for j in range(5):
            expected[i, j] = np.einsum("hwc,hw->c", padded[i:i + 3, j:j + 3], kernel)
    np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-6)


def test_truncation_psi_one_is_identity():
    G = tiny_generator()
    G.w_avg.assign(np.random.RandomState(3).randn(8).astype(np.float32))
    z = tf.random.normal([4, 8])
    np.testing.assert_array_equal(G.map(z, truncation_psi=1.0).numpy(), G.map(z).numpy())


def test_truncation_psi_zero_gives_average():
    G = tiny_generator()
    w_avg = np.random.RandomState(4).randn(8).astype(np.float32)
    G.w_avg.assign(w_avg)
    ws = G.map(tf.random.normal([4, 8]), truncation_psi=0.0).numpy()
    np.testing.assert_allclose(ws, np.broadcast_to(w_avg, ws.shape), atol=1e-6)


def test_truncation_cutoff_limits_layers():
    G = tiny_generator()
    G.w_avg.assign(np.zeros(8, np.float32))
    z = tf.random.normal([2, 8])
    plain = G.map(z).numpy()
    truncated = G.map(z, truncation_psi=0.5, truncation_cutoff=2).numpy()
    np.testing.assert_allclose(truncated[:, :2], 0.5 * plain[:, :2], rtol=1e-6)
    np.testing.assert_array_equal(truncated[:, 2:], plain[:, 2:])


def test_mixing_equal_latents_is_no_mixing():
    G = tiny_generator()
    ws = G.map(tf.random.normal([2, 8]))
    mixed = mix_styles(ws, ws, 2)
    for a, b in zip(G.synthesize(mixed, noise_mode="const"), G.synthesize(ws, noise_mode="const")):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mix_styles_takes_chosen_layers():
    G = tiny_generator()
    ws_a = G.map(tf.random.normal([2, 8])).numpy()
    ws_b = G.map(tf.random.normal([2, 8])).numpy()
    mixed = mix_styles(tf.constant(ws_a), tf.constant(ws_b), 2, 4).numpy()
    np.testing.assert_array_equal(mixed[:, :2], ws_a[:, :2])
    np.testing.assert_array_equal(mixed[:, 2:4], ws_b[:, 2:4])
    np.testing.assert_array_equal(mixed[:, 4:], ws_a[:, 4:])


def test_coarse_mixing_leaves_coarse_scale_alone():
    # Styles from layer 2 on only act at 8x8 and finer, so the 4x4 image is unchanged.
    G = tiny_generator()
    ws_a = G.map(tf.random.normal([2, 8]))
    ws_b = G.map(tf.random.normal([2, 8]))
    plain = G.synthesize(ws_a, noise_mode="const")
    mixed = G.synthesize(mix_styles(ws_a, ws_b, 2), noise_mode="const")
    np.testing.assert_array_equal(plain[0].numpy(), mixed[0].numpy())
    assert not np.allclose(plain[-1].numpy(), mixed[-1].numpy())


def test_w_avg_update_formula():
    G = tiny_generator(w_avg_beta=0.9)
    G.w_avg.assign(np.ones(8, np.float32))
    batch_mean = np.full(8, 3.0, np.float32)
    G.update_w_avg(tf.constant(batch_mean))
    np.testing.assert_allclose(G.w_avg.numpy(), 0.9 * 1.0 + 0.1 * 3.0, rtol=1e-6)


def test_style_mixing_needs_stylegan():
    config = TrainingConfig(dataset="x", arch="progan", style_mixing_prob=0.5)
    with pytest.raises(ConfigError, match=r"--style_mixing_prob=0.5 needs --arch=stylegan"):
        validate(config)
    with pytest.raises(ConfigError, match=r"invalid --style_mixing_prob=1.5"):
        validate(TrainingConfig(dataset="x", arch="stylegan", style_mixing_prob=1.5))


def test_stylegan_training_tracks_w_avg(emoji_dataset, tmp_path):
    config = TrainingConfig(
        dataset=emoji_dataset, run_dir=str(tmp_path / "run"), arch="stylegan", resolution=16,
        channel_base=64, channel_max=8, latent_size=8, mapping_depth=2, mapping_width=8,
        batch_size=8, total_kimg=0.032, tick_kimg=0.016, loss="ns_r1", combine="cat_lin",
        style_mixing_prob=0.9, image_snapshot_ticks=1, network_snapshot_ticks=1)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    run_dir = training.train(config, strategy)
    for res in (4, 8, 16):
        assert os.path.exists(os.path.join(run_dir, f"fakes000000-{res}x{res}.png"))

    from msg_tf.inference import load_generator
    G, loaded_config, prefix = load_generator(run_dir)
    assert loaded_config.arch == "stylegan"
    assert prefix.endswith("ckpt-32")
    # w_avg moved away from its zero start and G_ema carries the same value as G.
    w_avg = G.w_avg.numpy()
    assert np.abs(w_avg).max() > 0
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map() if "w_avg" in k]
    assert len(keys) == 2
    values = [reader.get_tensor(k) for k in keys]
    np.testing.assert_array_equal(values[0], values[1])


def test_load_generator_rejects_wrong_checkpoints(tmp_path):
    import json

    from msg_tf.inference import load_generator
    from msg_tf.config import ConfigError as Error

    # A discriminator-only checkpoint where a generator checkpoint is expected.
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = TrainingConfig(dataset="x", resolution=8, num_channels=3, channel_base=32,
                            channel_max=8, latent_size=8)
    (run_dir / "training_options.json").write_text(json.dumps(config.to_dict()))
    D = training.build_discriminator(config)
    prefix = tf.train.Checkpoint(D=training.variables_by_path(D.weights)).write(
        str(run_dir / "checkpoints" / "ckpt-1"))
    with pytest.raises(Error, match=r"contains no G_ema variables.*pass a run directory"):
        load_generator(prefix)

    # A generator checkpoint whose options file describes a different architecture.
    G = training.build_generator(config, "G_ema")
    prefix = tf.train.Checkpoint(G_ema=training.variables_by_path(G.weights)).write(
        str(run_dir / "checkpoints" / "ckpt-2"))
    wider = TrainingConfig(**{**config.to_dict(), "channel_max": 16})
    (run_dir / "training_options.json").write_text(json.dumps(wider.to_dict()))
    with pytest.raises(Error, match=r"does not match the generator described by"):
        load_generator(prefix)

    with pytest.raises(Error, match=r"neither a run directory nor a checkpoint prefix"):
        load_generator(str(tmp_path / "missing"))
