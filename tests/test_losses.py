"""Tests for msg_tf.losses: known values, finite-difference penalties, double backprop."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from msg_tf import losses
from msg_tf.losses import LOSS_NAMES, LossConfig, discriminator_loss, generator_loss

# Two scales with different pixel counts and channels: 4x4x2 and 8x8x1.
SHAPES = [(4, 4, 2), (8, 8, 1)]


class SumDiscriminator:
    """D(images) = sum over s of weight_s * sum(images[s]), per sample.

    Its gradient w.r.t. scale s is weight_s at every element, so the norm is
    |weight_s| * sqrt(H * W * C) whatever the input.
    """

    def __init__(self, weights):
        self.weights = weights
        self.calls = []

    def __call__(self, images, training=False):
        self.calls.append(list(images))
        total = 0.0
        for weight, image in zip(self.weights, images):
            total += tf.cast(weight, image.dtype) * tf.reduce_sum(image, axis=[1, 2, 3])
        return total[:, None]

    def numpy(self, images):
        return sum(w * x.sum(axis=(1, 2, 3)) for w, x in zip(self.weights, images))


class TanhDiscriminator:
    """D(images) = tanh(concat(flatten(images)) @ W + b) @ v in float64.

    The per-scale rows of W are scaled differently so that the gradient norms of
    the two scales differ and stay away from 1.
    """

    def __init__(self, seed=0, hidden=6):
        rng = np.random.default_rng(seed)
        sizes = [h * w * c for h, w, c in SHAPES]
        row_scales = np.concatenate([np.full(n, s) for n, s in zip(sizes, (0.6, 0.15))])
        kernel = rng.normal(size=(sum(sizes), hidden)) * row_scales[:, None]
        self.kernel = tf.Variable(kernel, dtype=tf.float64)
        self.bias = tf.Variable(rng.normal(size=hidden) * 0.1, dtype=tf.float64)
        self.head = tf.Variable(rng.normal(size=(hidden, 1)), dtype=tf.float64)

    def __call__(self, images, training=False):
        flat = tf.concat([tf.reshape(x, [tf.shape(x)[0], -1]) for x in images], axis=1)
        return tf.tanh(flat @ self.kernel + self.bias) @ self.head

    def numpy(self, images):
        flat = np.concatenate([x.reshape(x.shape[0], -1) for x in images], axis=1)
        hidden = np.tanh(flat @ self.kernel.numpy() + self.bias.numpy())
        return (hidden @ self.head.numpy())[:, 0]


def _make_keras_discriminator(dtype=None):
    inputs = [keras.Input(shape) for shape in SHAPES]
    features = [keras.layers.Flatten(dtype=dtype)(x) for x in inputs]
    hidden = keras.layers.Concatenate(dtype=dtype)(features)
    hidden = keras.layers.Dense(8, activation="tanh", dtype=dtype)(hidden)
    score = keras.layers.Dense(1, dtype=dtype)(hidden)
    return keras.Model(inputs, score)


def _random_images(rng, batch_size, dtype=np.float32):
    return [rng.uniform(-1, 1, size=(batch_size, *shape)).astype(dtype) for shape in SHAPES]


def _to_tensors(images):
    return [tf.constant(x) for x in images]


def _relu(x):
    return np.maximum(x, 0)


def _softplus(x):
    return np.log1p(np.exp(x))


def _finite_difference_gradients(fn, images, step=1e-6):
    """Central differences of fn (per-sample scores) w.r.t. every element of every scale.

    Samples are scored independently, so one perturbed element per sample is
    evaluated for the whole batch at once.
    """
    gradients = []
    for s, image in enumerate(images):
        flat = image.reshape(image.shape[0], -1)
        gradient = np.zeros_like(flat)
        for j in range(flat.shape[1]):
            plus = [x.copy() for x in images]
            minus = [x.copy() for x in images]
            plus[s].reshape(image.shape[0], -1)[:, j] += step
            minus[s].reshape(image.shape[0], -1)[:, j] -= step
            gradient[:, j] = (fn(plus) - fn(minus)) / (2 * step)
        gradients.append(gradient)
    return gradients


# --- hand-written example ------------------------------------------------------
#
# Scales 4x4x1 and 8x8x1, D = 0.25 * sum(x_0) + 0.25 * sum(x_1). Constant images
# with value v score 0.25 * 16 * v + 0.25 * 64 * v = 20 * v. Reals v = [0.1, -0.05]
# give r = [2, -1]. Fakes v = [-0.05, 0] give f = [-1, 0]. Gradient norms are
# 0.25 * 4 = 1 and 0.25 * 8 = 2, so the WGAN penalties are 0 and 1 (GP = 0.5)
# and the squared norms 1 and 4 (R1 = 2.5).

HAND_SHAPES = [(4, 4, 1), (8, 8, 1)]


def _hand_inputs(dtype=tf.float32):
    def constant_images(values):
        return [
            tf.cast(tf.reshape(values, [-1, 1, 1, 1]) * tf.ones([1, *shape]), dtype)
            for shape in HAND_SHAPES
        ]

    return SumDiscriminator([0.25, 0.25]), constant_images([0.1, -0.05]), constant_images([-0.05, 0.0])


HAND_DISCRIMINATOR_LOSSES = {
    "wgan_gp": [-1 - 2 + 0.001 * 4 + 10 * 0.5, 0 + 1 + 0.001 * 1 + 10 * 0.5],
    "ns_r1": [
        math.log1p(math.exp(-1)) + math.log1p(math.exp(-2)) + 5 * 2.5,
        math.log(2) + math.log1p(math.exp(1)) + 5 * 2.5,
    ],
    # mean(f) = -0.5, mean(r) = 0.5: r_rel = [2.5, -0.5], f_rel = [-1.5, -0.5].
    "ra_hinge": [0.0 + 0.0, 1.5 + 0.5],
    "hinge": [0.0 + 0.0, 2.0 + 1.0],
    "lsgan": [0.5 * (1 + 1), 0.5 * (4 + 0)],
}

HAND_GENERATOR_LOSSES = {
    "wgan_gp": [1.0, 0.0],
    "ns_r1": [math.log1p(math.exp(1)), math.log(2)],
    "ra_hinge": [3.5 + 2.5, 0.5 + 1.5],
    "hinge": [1.0, 0.0],
    "lsgan": [0.5 * 4, 0.5 * 1],
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_discriminator_loss_hand_values(name):
    D, reals, fakes = _hand_inputs()
    loss, terms = discriminator_loss(LossConfig(name), D, reals, fakes)
    np.testing.assert_allclose(loss.numpy(), HAND_DISCRIMINATOR_LOSSES[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(terms["D/real_score"].numpy(), [2.0, -1.0], rtol=1e-6)
    np.testing.assert_allclose(terms["D/fake_score"].numpy(), [-1.0, 0.0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_generator_loss_hand_values(name):
    D, reals, fakes = _hand_inputs()
    loss, terms = generator_loss(LossConfig(name), D, reals, fakes)
    np.testing.assert_allclose(loss.numpy(), HAND_GENERATOR_LOSSES[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(terms["G/fake_score"].numpy(), [-1.0, 0.0], rtol=1e-6, atol=1e-7)


def test_penalties_average_over_scales():
    D, reals, fakes = _hand_inputs()
    norms = np.array([1.0, 2.0])
    gp_mean = np.mean((norms - 1) ** 2)
    gp_sum = np.sum((norms - 1) ** 2)
    gp_concatenated = (np.sqrt(np.sum(norms**2)) - 1) ** 2
    # The three candidate rules must disagree here, or the check below proves nothing.
    assert gp_mean == 0.5
    assert gp_sum == 1.0
    assert abs(gp_concatenated - 0.5) > 0.5

    _, terms = discriminator_loss(LossConfig("wgan_gp"), D, reals, fakes)
    np.testing.assert_allclose(terms["D/gp"].numpy(), [gp_mean] * 2, rtol=1e-6)
    np.testing.assert_allclose(terms["D/gp/res4"].numpy(), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(terms["D/gp/res8"].numpy(), [1.0, 1.0], rtol=1e-6)

    _, terms = discriminator_loss(LossConfig("ns_r1"), D, reals, fakes)
    r1_mean = np.mean(norms**2)
    assert r1_mean == 2.5
    np.testing.assert_allclose(terms["D/r1"].numpy(), [r1_mean] * 2, rtol=1e-6)
    np.testing.assert_allclose(terms["D/r1/res4"].numpy(), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(terms["D/r1/res8"].numpy(), [4.0, 4.0], rtol=1e-6)


# --- NumPy reference over random inputs -------------------------------------------


def _numpy_losses(config, r, f, norms):
    """Reference D and G losses from scores r, f and per-scale gradient norms [S, N]."""
    gp = np.mean((norms - 1) ** 2, axis=0)
    r1 = np.mean(norms**2, axis=0)
    r_rel = r - f.mean()
    f_rel = f - r.mean()
    d_losses = {
        "wgan_gp": f - r + config.drift_weight * r**2 + config.gp_weight * gp,
        "ns_r1": _softplus(f) + _softplus(-r) + 0.5 * config.r1_gamma * r1,
        "ra_hinge": _relu(1 - r_rel) + _relu(1 + f_rel),
        "hinge": _relu(1 - r) + _relu(1 + f),
        "lsgan": 0.5 * ((r - 1) ** 2 + f**2),
    }
    g_losses = {
        "wgan_gp": -f,
        "ns_r1": _softplus(-f),
        "ra_hinge": _relu(1 + r_rel) + _relu(1 - f_rel),
        "hinge": -f,
        "lsgan": 0.5 * (f - 1) ** 2,
    }
    return d_losses[config.name], g_losses[config.name]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_match_numpy_reference(name):
    rng = np.random.default_rng(1)
    batch_size = 7
    weights = [0.07, -0.03]
    D = SumDiscriminator(weights)
    reals = _random_images(rng, batch_size)
    fakes = _random_images(rng, batch_size)
    config = LossConfig(name, gp_weight=3.0, drift_weight=0.01, r1_gamma=2.0)

    r = D.numpy(reals)
    f = D.numpy(fakes)
    norms = np.array([[abs(w) * math.sqrt(h * wd * c)] * batch_size for w, (h, wd, c) in zip(weights, SHAPES)])
    expected_d, expected_g = _numpy_losses(config, r, f, norms)

    d_loss, _ = discriminator_loss(config, D, _to_tensors(reals), _to_tensors(fakes))
    g_loss, _ = generator_loss(config, D, _to_tensors(reals), _to_tensors(fakes))
    np.testing.assert_allclose(d_loss.numpy(), expected_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_loss.numpy(), expected_g, rtol=1e-5, atol=1e-5)


# --- penalties against finite differences -------------------------------------------


def test_gradient_penalty_matches_finite_differences():
    rng = np.random.default_rng(2)
    batch_size = 3
    D = TanhDiscriminator()
    reals = _random_images(rng, batch_size, np.float64)
    fakes = _random_images(rng, batch_size, np.float64)
    alpha = np.array([0.2, 0.55, 0.9])

    mixed = [r + alpha[:, None, None, None] * (f - r) for r, f in zip(reals, fakes)]
    gradients = _finite_difference_gradients(D.numpy, mixed)
    norms = np.stack([np.linalg.norm(g, axis=1) for g in gradients])  # [S, N]
    # Norms near 1 would make (norm - 1)^2 lose relative precision in float32.
    assert np.all(np.abs(norms - 1) > 0.1), norms
    penalties = (norms - 1) ** 2

    _, terms = discriminator_loss(
        LossConfig("wgan_gp"), D, _to_tensors(reals), _to_tensors(fakes), alpha=tf.constant(alpha)
    )
    np.testing.assert_allclose(terms["D/gp/res4"].numpy(), penalties[0], rtol=1e-5)
    np.testing.assert_allclose(terms["D/gp/res8"].numpy(), penalties[1], rtol=1e-5)
    np.testing.assert_allclose(terms["D/gp"].numpy(), penalties.mean(axis=0), rtol=1e-5)


def test_r1_penalty_matches_finite_differences():
    rng = np.random.default_rng(3)
    batch_size = 3
    D = TanhDiscriminator(seed=4)
    reals = _random_images(rng, batch_size, np.float64)
    fakes = _random_images(rng, batch_size, np.float64)

    gradients = _finite_difference_gradients(D.numpy, reals)
    squared_norms = np.stack([np.sum(g**2, axis=1) for g in gradients])

    _, terms = discriminator_loss(LossConfig("ns_r1"), D, _to_tensors(reals), _to_tensors(fakes))
    np.testing.assert_allclose(terms["D/r1/res4"].numpy(), squared_norms[0], rtol=1e-5)
    np.testing.assert_allclose(terms["D/r1/res8"].numpy(), squared_norms[1], rtol=1e-5)
    np.testing.assert_allclose(terms["D/r1"].numpy(), squared_norms.mean(axis=0), rtol=1e-5)


def test_interpolation_shares_alpha_across_scales():
    rng = np.random.default_rng(5)
    batch_size = 6
    D = SumDiscriminator([1.0, 1.0])
    reals = _random_images(rng, batch_size, np.float64)
    fakes = _random_images(rng, batch_size, np.float64)

    discriminator_loss(LossConfig("wgan_gp"), D, _to_tensors(reals), _to_tensors(fakes))
    # Calls are D(reals), D(fakes), then D(interpolated).
    mixed = [x.numpy() for x in D.calls[2]]
    ratios = [(m - r) / (f - r) for m, r, f in zip(mixed, reals, fakes)]
    alpha = ratios[0][:, 0, 0, 0]
    for ratio in ratios:
        np.testing.assert_allclose(ratio, np.broadcast_to(alpha[:, None, None, None], ratio.shape), rtol=1e-9)
    assert np.all((alpha >= 0) & (alpha < 1))
    assert np.unique(alpha).size == batch_size


# --- double backprop ----------------------------------------------------------------


@pytest.mark.parametrize("name,penalty_key", [("wgan_gp", "D/gp"), ("ns_r1", "D/r1")])
def test_penalty_weight_gradient_matches_finite_differences(name, penalty_key):
    """The outer tape's gradient of the penalty w.r.t. D's weights, inside tf.function."""
    rng = np.random.default_rng(6)
    batch_size = 3
    D = TanhDiscriminator(seed=7)
    reals = _to_tensors(_random_images(rng, batch_size, np.float64))
    fakes = _to_tensors(_random_images(rng, batch_size, np.float64))
    alpha = tf.constant([0.3, 0.6, 0.8], tf.float64)
    config = LossConfig(name)

    @tf.function
    def mean_penalty():
        _, terms = discriminator_loss(config, D, reals, fakes, alpha=alpha)
        return tf.reduce_mean(terms[penalty_key])

    @tf.function
    def penalty_and_gradients():
        with tf.GradientTape(persistent=True) as tape:
            loss, terms = discriminator_loss(config, D, reals, fakes, alpha=alpha)
            penalty = tf.reduce_mean(terms[penalty_key])
            total = tf.reduce_mean(loss)
        penalty_gradient = tape.gradient(penalty, D.kernel)
        total_gradients = tape.gradient(total, [D.kernel, D.bias, D.head])
        return penalty_gradient, total_gradients

    penalty_gradient, total_gradients = penalty_and_gradients()
    for gradient in total_gradients:
        assert gradient is not None
        assert np.all(np.isfinite(gradient.numpy()))

    # Directional derivative along a random direction of the kernel.
    direction = rng.normal(size=D.kernel.shape)
    direction /= np.linalg.norm(direction)
    analytic = float(np.sum(penalty_gradient.numpy() * direction))
    kernel = D.kernel.numpy()
    step = 1e-3
    D.kernel.assign(kernel + step * direction)
    plus = float(mean_penalty())
    D.kernel.assign(kernel - step * direction)
    minus = float(mean_penalty())
    D.kernel.assign(kernel)
    numeric = (plus - minus) / (2 * step)
    assert abs(analytic) > 1e-2, analytic
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", ["wgan_gp", "ns_r1"])
def test_keras_discriminator_weight_gradients_finite(name, jit_compile):
    rng = np.random.default_rng(8)
    D = _make_keras_discriminator()
    reals = _to_tensors(_random_images(rng, 4))
    fakes = _to_tensors(_random_images(rng, 4))

    @tf.function(jit_compile=jit_compile)
    def gradients():
        with tf.GradientTape() as tape:
            loss, _ = discriminator_loss(LossConfig(name), D, reals, fakes)
            mean_loss = tf.reduce_mean(loss)
        return tape.gradient(mean_loss, D.trainable_variables)

    for gradient in gradients():
        assert gradient is not None
        assert np.all(np.isfinite(gradient.numpy()))
        assert np.any(gradient.numpy() != 0)


def test_gradient_penalty_under_mirrored_strategy():
    # tests/conftest.py splits the CPU into two logical devices, so this runs two
    # replicas. Without that split it runs one, still in a replica context.
    devices = [device.name for device in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    rng = np.random.default_rng(9)
    batch_size = 4
    with strategy.scope():
        D = _make_keras_discriminator()
    reals = _to_tensors(_random_images(rng, batch_size))
    fakes = _to_tensors(_random_images(rng, batch_size))
    alpha = tf.constant([0.1, 0.4, 0.7, 0.95])
    config = LossConfig("wgan_gp")

    def replica_step(reals, fakes, alpha):
        with tf.GradientTape() as tape:
            loss, _ = discriminator_loss(config, D, reals, fakes, alpha=alpha)
            scaled = tf.nn.compute_average_loss(
                loss, global_batch_size=batch_size * strategy.num_replicas_in_sync
            )
        return loss, tape.gradient(scaled, D.trainable_variables)

    @tf.function
    def distributed_step():
        return strategy.run(replica_step, args=(reals, fakes, alpha))

    per_replica_loss, per_replica_gradients = distributed_step()
    expected, _ = discriminator_loss(config, D, reals, fakes, alpha=alpha)
    replica_losses = strategy.experimental_local_results(per_replica_loss)
    assert len(replica_losses) == strategy.num_replicas_in_sync
    for replica_loss in replica_losses:
        np.testing.assert_allclose(replica_loss.numpy(), expected.numpy(), rtol=1e-5)
    for gradient in per_replica_gradients:
        for value in strategy.experimental_local_results(gradient):
            assert np.all(np.isfinite(value.numpy()))


# --- bfloat16 discriminators ----------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bfloat16_inputs_and_scores(name):
    D, reals, fakes = _hand_inputs(tf.bfloat16)
    loss, terms = discriminator_loss(LossConfig(name), D, reals, fakes)
    g_loss, _ = generator_loss(LossConfig(name), D, reals, fakes)
    assert loss.dtype == tf.float32
    assert g_loss.dtype == tf.float32
    # 0.1 and -0.05 are inexact in bfloat16 (8 significant bits).
    np.testing.assert_allclose(loss.numpy(), HAND_DISCRIMINATOR_LOSSES[name], rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(g_loss.numpy(), HAND_GENERATOR_LOSSES[name], rtol=2e-2, atol=2e-2)
    for value in terms.values():
        assert value.dtype == tf.float32
    if name == "wgan_gp":
        # Gradients of 0.25 * sum(x) are exact in bfloat16, so the penalty is too.
        np.testing.assert_allclose(terms["D/gp"].numpy(), [0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize("name", ["wgan_gp", "ns_r1"])
def test_mixed_bfloat16_keras_discriminator(name):
    rng = np.random.default_rng(10)
    D32 = _make_keras_discriminator()
    D16 = _make_keras_discriminator(dtype="mixed_bfloat16")
    D16.set_weights(D32.get_weights())
    reals = _to_tensors(_random_images(rng, 4))
    fakes = _to_tensors(_random_images(rng, 4))
    alpha = tf.constant([0.2, 0.4, 0.6, 0.8])
    config = LossConfig(name)

    @tf.function
    def loss_and_gradients(D):
        with tf.GradientTape() as tape:
            loss, _ = discriminator_loss(config, D, reals, fakes, alpha=alpha)
            mean_loss = tf.reduce_mean(loss)
        return loss, tape.gradient(mean_loss, D.trainable_variables)

    loss32, _ = loss_and_gradients(D32)
    loss16, gradients16 = loss_and_gradients(D16)
    assert loss16.dtype == tf.float32
    np.testing.assert_allclose(loss16.numpy(), loss32.numpy(), rtol=5e-2, atol=5e-2)
    for gradient in gradients16:
        assert np.all(np.isfinite(gradient.numpy()))


# --- shapes and input checks ------------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_and_terms_are_per_sample(name):
    rng = np.random.default_rng(11)
    batch_size = 5
    D = _make_keras_discriminator()
    reals = _to_tensors(_random_images(rng, batch_size))
    fakes = _to_tensors(_random_images(rng, batch_size))

    d_loss, d_terms = discriminator_loss(LossConfig(name), D, reals, fakes)
    g_loss, g_terms = generator_loss(LossConfig(name), D, reals, fakes)
    for key, value in {"D loss": d_loss, "G loss": g_loss, **d_terms, **g_terms}.items():
        assert value.shape == (batch_size,), key
        assert value.dtype == tf.float32, key


def test_generator_loss_accepts_missing_reals():
    D, _, fakes = _hand_inputs()
    loss, _ = generator_loss(LossConfig("hinge"), D, None, fakes)
    np.testing.assert_allclose(loss.numpy(), [1.0, 0.0], atol=1e-6)


def test_unknown_loss_name_rejected():
    with pytest.raises(ValueError) as error:
        losses.check_loss_name("wgan")
    message = str(error.value)
    assert "'wgan'" in message
    for name in LOSS_NAMES:
        assert name in message

    with pytest.raises(ValueError, match="'bogus'.*wgan_gp, ns_r1, ra_hinge, hinge, lsgan"):
        LossConfig("bogus")


def test_negative_weight_rejected():
    with pytest.raises(ValueError, match=r"LossConfig.gp_weight -1.0: expected a number >= 0"):
        LossConfig("wgan_gp", gp_weight=-1.0)
    with pytest.raises(ValueError, match=r"LossConfig.r1_gamma nan"):
        LossConfig("ns_r1", r1_gamma=float("nan"))


def test_mismatched_scale_counts_rejected():
    D, reals, fakes = _hand_inputs()
    with pytest.raises(ValueError, match="reals has 2 scales but fakes has 1"):
        discriminator_loss(LossConfig("hinge"), D, reals, fakes[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        discriminator_loss(LossConfig("hinge"), D, [], [])


def test_wide_discriminator_output_rejected():
    _, reals, fakes = _hand_inputs()

    def two_scores(images, training=False):
        return tf.zeros([2, 2])

    with pytest.raises(ValueError, match=r"discriminator output shape \(2, 2\)"):
        discriminator_loss(LossConfig("hinge"), two_scores, reals, fakes)


def test_scale_missing_from_score_rejected():
    _, reals, fakes = _hand_inputs()
    coarse_only = SumDiscriminator([1.0])  # zip() stops after the first scale
    with pytest.raises(ValueError, match="output does not depend on the input of shape"):
        discriminator_loss(LossConfig("wgan_gp"), coarse_only, reals, fakes)
