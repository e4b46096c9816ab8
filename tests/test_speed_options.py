"""--mixed_precision, --xla and --reuse_fakes against the plain float32 training step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from msg_tf import dataset as dataset_lib
from msg_tf import losses, training
from networks import MsgDiscriminator
from tests.test_training import make_trainer, one_replica, small_config

STEPS = 25          # 400 images at batch 16


def run_steps(dataset, tmp_path, steps, **overrides):
    """Train `steps` iterations on the same unshuffled batches and return losses [steps, 2]."""
    options = {"batch_size": 16, "loss": "ns_r1", "seed": 3, "ema_rampup": 0.05, **overrides}
    config = small_config(dataset, tmp_path, **options)
    trainer, info, config = make_trainer(config, one_replica(), dataset)
    batches = iter(dataset_lib.make_dataset(info, config.resolution, config.batch_size,
                                            shuffle=False))
    losses = []
    for step in range(steps):
        stats = trainer.train_step(next(batches), step)
        losses.append([float(stats["Loss/D"]), float(stats["Loss/G"])])
    return np.array(losses), trainer


@pytest.fixture(scope="module")
def float32_losses(emoji_dataset, tmp_path_factory):
    losses, _ = run_steps(emoji_dataset, tmp_path_factory.mktemp("f32"), STEPS)
    return losses


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_tracks_float32(emoji_dataset, tmp_path, float32_losses, precision):
    losses, trainer = run_steps(emoji_dataset, tmp_path, STEPS, mixed_precision=precision)
    assert np.all(np.isfinite(losses))
    assert trainer.D.compute_dtype == precision
    assert trainer.G.compute_dtype == precision
    assert trainer.G_ema.compute_dtype == "float32"
    for model in (trainer.G, trainer.D, trainer.G_ema):
        assert {v.dtype for v in model.weights} == {"float32"}
    difference = np.abs(losses - float32_losses)
    # The runs drift apart slowly, as any two GAN runs with different rounding do. On
    # the development machine the mean difference was 0.01 to 0.03 and the largest 0.2.
    assert difference[:10].max() < 0.05, difference[:10]
    assert difference.mean() < 0.1, difference


def test_float16_uses_loss_scaling(emoji_dataset, tmp_path):
    _, trainer = run_steps(emoji_dataset, tmp_path, 2, mixed_precision="float16")
    assert isinstance(trainer.G_opt, keras.optimizers.LossScaleOptimizer)
    assert isinstance(trainer.D_opt, keras.optimizers.LossScaleOptimizer)
    assert int(training.inner_optimizer(trainer.G_opt).iterations.numpy()) == 2


def test_checkpoints_move_between_precisions(emoji_dataset, tmp_path):
    _, source = run_steps(emoji_dataset, tmp_path / "a", 2, mixed_precision="float32")
    prefix = source.checkpoint.save(str(tmp_path / "ckpt"))
    for precision in ("bfloat16", "float16"):
        config = small_config(emoji_dataset, tmp_path / precision,
                              mixed_precision=precision, batch_size=16, loss="ns_r1")
        target, _, _ = make_trainer(config, one_replica(), emoji_dataset)
        target.restore(prefix)
        assert training.weights_digest(target) == training.weights_digest(source)


@pytest.mark.parametrize("loss", ["ns_r1", "ra_hinge"])
def test_reuse_fakes_matches_two_pass_step(emoji_dataset, tmp_path, loss):
    # With --xla the step still runs G twice on the same latents, so it computes what
    # the single-pass step computes, up to rounding.
    one_pass, _ = run_steps(emoji_dataset, tmp_path / "one", 3, reuse_fakes=True,
                            loss=loss, adam_epsilon=1e-3)
    two_pass, _ = run_steps(emoji_dataset, tmp_path / "two", 3, reuse_fakes=True,
                            loss=loss, adam_epsilon=1e-3, xla=True)
    np.testing.assert_allclose(two_pass, one_pass, rtol=1e-3, atol=1e-4)


def test_reuse_fakes_differs_from_new_latents(emoji_dataset, tmp_path):
    reused, _ = run_steps(emoji_dataset, tmp_path / "one", 2, reuse_fakes=True)
    fresh, _ = run_steps(emoji_dataset, tmp_path / "two", 2)
    assert reused[0, 0] == pytest.approx(fresh[0, 0], abs=0.2)
    assert not np.allclose(reused, fresh, rtol=1e-4, atol=1e-5)


def test_reuse_fakes_stylegan(emoji_dataset, tmp_path):
    losses, trainer = run_steps(emoji_dataset, tmp_path, 2, arch="stylegan",
                                reuse_fakes=True, style_mixing_prob=0.5,
                                mapping_depth=2, mapping_width=16)
    assert np.all(np.isfinite(losses))
    assert float(tf.reduce_max(tf.abs(trainer.G.w_avg))) > 0


def test_float16_input_gradients_keep_small_values():
    # At 256x256 with 64 feature maps, unscaled float16 backpropagation flushed 0.02% to
    # 0.2% of the three finest scales' input gradients to zero.
    images = [tf.random.stateless_uniform([4, r, r, 3], seed=[1, r], minval=-1.0,
                                          maxval=1.0) for r in (4, 8, 16, 32, 64, 128, 256)]
    discriminators = {}
    for precision in ("float32", "float16"):
        keras.utils.set_random_seed(1)
        with training.dtype_policy(training.DTYPE_POLICIES[precision]):
            discriminators[precision] = MsgDiscriminator(256, 3, channel_base=2048,
                                                         channel_max=64)
            discriminators[precision](images)
    for source, target in zip(discriminators["float32"].weights,
                              discriminators["float16"].weights):
        target.assign(source)

    _, reference = losses._input_gradients(discriminators["float32"], images)
    _, half = losses._input_gradients(discriminators["float16"], images)
    for image, expected, actual in zip(images, reference, half):
        assert actual.dtype == tf.float32
        zeros = float(tf.reduce_mean(tf.cast(actual == 0.0, tf.float32)))
        # With the scale, at most one value in 100,000 is zero (measured: 1 of 786,432).
        assert zeros < 1e-5, f"{image.shape[1]}x{image.shape[1]}: {zeros:.6f} flushed to zero"
        np.testing.assert_allclose(
            tf.reduce_sum(tf.square(actual), axis=[1, 2, 3]).numpy(),
            tf.reduce_sum(tf.square(expected), axis=[1, 2, 3]).numpy(), rtol=0.03)
