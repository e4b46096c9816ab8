import math

import numpy as np
import pytest
import tensorflow as tf

from networks import MsgDiscriminator, MsgProGanGenerator, channels_at, scales_for
from networks.layers import (EqualizedConv2D, EqualizedDense, minibatch_stddev, pixel_norm,
                             upsample_nearest)


def test_channels_match_paper_tables():
    widths = [channels_at(2 ** k, 16384, 512) for k in range(2, 11)]
    assert widths == [512, 512, 512, 512, 256, 128, 64, 32, 16]


def test_scales_rejects_bad_resolution():
    assert scales_for(32) == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="invalid resolution 48"):
        scales_for(48)
    with pytest.raises(ValueError, match="invalid resolution 4"):
        scales_for(4)


def test_equalized_dense_matches_numpy():
    layer = EqualizedDense(3, gain=2.0, lr_multiplier=0.5, bias_init=1.0)
    x = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    y = layer(x).numpy()
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    expected = x @ (kernel * 2.0 / math.sqrt(4) * 0.5) + bias * 0.5
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # Stored weights are N(0, 1 / lr_multiplier^2) and the bias starts at bias_init.
    np.testing.assert_allclose(bias * 0.5, np.ones(3), rtol=1e-6)


def test_equalized_conv_matches_numpy():
    layer = EqualizedConv2D(2, 3)
    x = np.random.RandomState(1).randn(1, 5, 5, 3).astype(np.float32)
    y = layer(x).numpy()
    kernel = layer.kernel.numpy() * math.sqrt(2) / math.sqrt(3 * 3 * 3)
    padded = np.pad(x[0], [(1, 1), (1, 1), (0, 0)])
    expected = np.zeros((5, 5, 2), np.float32)
    for i in range(5):
        for j in range(5):
            expected[i, j] = np.einsum("hwc,hwco->o", padded[i:i + 3, j:j + 3], kernel)
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-5)


def test_pixel_norm_gives_unit_rms():
    x = np.random.RandomState(2).randn(2, 3, 3, 8).astype(np.float32) * 5
    y = pixel_norm(x).numpy()
    expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(y, expected, rtol=1e-5)


def test_minibatch_stddev_matches_numpy():
    x = np.random.RandomState(3).randn(8, 4, 4, 5).astype(np.float32)
    y = minibatch_stddev(tf.constant(x), group_size=4).numpy()
    assert y.shape == (8, 4, 4, 6)
    np.testing.assert_array_equal(y[..., :5], x)
    for group in range(2):
        members = x[group * 4:(group + 1) * 4]
        expected = np.mean(np.sqrt(np.var(members, axis=0) + 1e-8))
        np.testing.assert_allclose(y[group * 4:(group + 1) * 4, :, :, 5], expected, rtol=1e-5)


def test_upsample_nearest_repeats_pixels():
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    y = upsample_nearest(tf.constant(x)).numpy()
    np.testing.assert_array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))


@pytest.mark.parametrize("resolution", [8, 16, 64])
def test_generator_outputs_every_scale(resolution):
    G = MsgProGanGenerator(resolution, latent_size=16, num_channels=3, channel_base=128,
                           channel_max=16)
    images = G(tf.random.normal([4, 16]))
    assert [image.shape for image in images] == [(4, r, r, 3) for r in scales_for(resolution)]
    assert all(image.dtype == tf.float32 for image in images)


@pytest.mark.parametrize("combine, expected_in_channels", [
    # Input channels of the block-8 first conv: stddev map + features + combined image.
    ("simple", 1 + 8 + 1),   # 1-channel images concatenated to 8 features at 8x8
    ("lin_cat", 1 + 8 + 4),  # the image's 1x1 conv gives half of the 8 feature channels
    ("cat_lin", 1 + 8),      # the 1x1 conv maps the concatenation back to 8 channels
])
def test_discriminator_combine_widths(combine, expected_in_channels):
    D = MsgDiscriminator(16, num_channels=1, channel_base=128, channel_max=8,
                         combine=combine)
    images = [tf.random.normal([4, r, r, 1]) for r in (4, 8, 16)]
    scores = D(images)
    assert scores.shape == (4, 1)
    block_8_conv0 = D.block_convs[1][0]
    assert block_8_conv0.kernel.shape[2] == expected_in_channels


def test_discriminator_rejects_wrong_scale_count():
    D = MsgDiscriminator(16, num_channels=3, channel_base=64, channel_max=8)
    with pytest.raises(ValueError, match="expects 3 images"):
        D([tf.zeros([4, 16, 16, 3])])


def test_discriminator_unknown_combine():
    with pytest.raises(ValueError, match="unknown combine function 'sum'.*simple, lin_cat, cat_lin"):
        MsgDiscriminator(16, combine="sum")


def test_discriminator_depends_on_every_scale():
    D = MsgDiscriminator(16, num_channels=3, channel_base=64, channel_max=8)
    images = [tf.random.normal([4, r, r, 3]) for r in (4, 8, 16)]
    with tf.GradientTape() as tape:
        tape.watch(images)
        score = tf.reduce_sum(D(images))
    for grad in tape.gradient(score, images):
        assert float(tf.reduce_sum(tf.abs(grad))) > 0
