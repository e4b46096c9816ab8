"""GAN losses over multi-scale image lists, returned per sample.

Every loss takes `images` lists ordered coarse to fine (4x4 first), NHWC, and a
discriminator `D(images, training=True) -> [N, 1]` scores. Scores are cast to
float32 before use, so a discriminator running in bfloat16 or float16 works.

All losses return per-sample values of shape [N] (float32), never batch means,
because the training step reduces them with
`tf.nn.compute_average_loss(per_sample, global_batch_size=...)` so that
`tf.distribute` replicas sum to the global mean.

Gradient penalties use a nested `tf.GradientTape` inside the loss. The caller's
outer tape then differentiates the penalty with respect to D's weights (double
backprop), which works eagerly, inside `tf.function` and in a
`tf.distribute` replica context.
"""

import dataclasses
from typing import Callable, Optional, Sequence

import tensorflow as tf

__all__ = [
    "LOSS_NAMES",
    "LossConfig",
    "check_loss_name",
    "discriminator_loss",
    "generator_loss",
]

LOSS_NAMES = ("wgan_gp", "ns_r1", "ra_hinge", "hinge", "lsgan")

# Added under the square root of a squared gradient norm so that the gradient of
# the norm stays finite (zero) where an input gradient is exactly zero, for
# example for a discriminator whose output is constant.
_NORM_EPSILON = 1e-12

Discriminator = Callable[..., tf.Tensor]
Images = Sequence[tf.Tensor]


def check_loss_name(name) -> None:
    """Raise ValueError unless `name` is one of LOSS_NAMES."""
    if name not in LOSS_NAMES:
        raise ValueError(
            f"Invalid loss name {name!r}: expected one of {', '.join(LOSS_NAMES)}."
        )


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Options for the GAN loss.

    Attributes:
      name: one of LOSS_NAMES.
      gp_weight: lambda, weight of the gradient penalty in `wgan_gp`.
      drift_weight: epsilon, weight of the D(real)^2 drift term in `wgan_gp`.
      r1_gamma: gamma of the R1 penalty in `ns_r1`. The D loss adds gamma / 2 * R1.
    """

    name: str
    gp_weight: float = 10.0
    drift_weight: float = 0.001
    r1_gamma: float = 10.0

    def __post_init__(self):
        check_loss_name(self.name)
        for field in ("gp_weight", "drift_weight", "r1_gamma"):
            value = getattr(self, field)
            if not value >= 0:
                raise ValueError(
                    f"Invalid LossConfig.{field} {value!r}: expected a number >= 0."
                )


def _check_image_lists(reals: Images, fakes: Images) -> None:
    if len(reals) == 0:
        raise ValueError("Invalid reals: expected a non-empty list with one image per scale.")
    if len(fakes) != len(reals):
        raise ValueError(
            f"Invalid image lists: reals has {len(reals)} scales but fakes has "
            f"{len(fakes)}; both must hold one image per scale, coarse to fine."
        )


def _scores(D: Discriminator, images: Images) -> tf.Tensor:
    """Run D and return its scores as float32 of shape [N]."""
    scores = tf.cast(D(list(images), training=True), tf.float32)
    if scores.shape.rank == 2 and scores.shape[-1] in (1, None):
        return scores[:, 0]
    if scores.shape.rank == 1:
        return scores
    raise ValueError(
        f"Invalid discriminator output shape {scores.shape}: expected [N, 1] or [N]."
    )


def _paired_scores(D: Discriminator, reals: Images, fakes: Images):
    """Return (D(reals), D(fakes)) as float32 [N], from one D call where that is exact.

    One call on the concatenated batch halves the number of D's kernel launches and
    gives its convolutions larger batches. The result is the same as two calls because
    D scores each sample on its own, except for minibatch stddev, whose groups of
    consecutive samples stay within one half when the batch is a multiple of the group
    size. Otherwise D runs twice.
    """
    reals, fakes = list(reals), list(fakes)
    batch = reals[0].shape[0]
    group = getattr(D, "mbstd_group_size", None)
    if batch is None or fakes[0].shape[0] != batch or group is None or (
            group > 1 and batch % group):
        return _scores(D, reals), _scores(D, fakes)
    both = [tf.concat([real, tf.cast(fake, real.dtype)], axis=0)
            for real, fake in zip(reals, fakes)]
    scores = _scores(D, both)
    return scores[:batch], scores[batch:]


def _scale_key(prefix: str, index: int, image: tf.Tensor) -> str:
    """Name a per-scale term by its resolution in pixels, e.g. 'D/gp/res8'."""
    height = image.shape[1]
    return f"{prefix}/res{height}" if height is not None else f"{prefix}/scale{index}"


# float16 input gradients of D are often below float16's smallest normal number (6e-5)
# at fine scales, so they lose precision or flush to zero. The score sum is scaled up by
# this power of two before backpropagation and the float32 gradients scaled back down,
# which is exact. 2**10 keeps the scaled gradients far below float16's maximum (65504).
_FLOAT16_INPUT_GRADIENT_SCALE = 2.0 ** 10


def _input_gradients(D: Discriminator, images: Images):
    """Return (scores [N], gradients of sum(scores) w.r.t. each image, in float32).

    The tape is created here, so an enclosing tape records the gradient
    computation and can differentiate the returned gradients again.
    """
    images = list(images)
    scale = (_FLOAT16_INPUT_GRADIENT_SCALE
             if getattr(D, "compute_dtype", "float32") == "float16" else 1.0)
    with tf.GradientTape() as tape:
        tape.watch(images)
        scores = _scores(D, images)
        # Summing over the batch is exact for the per-sample gradient as long as
        # D scores each sample independently (no batch statistics in D).
        total = tf.reduce_sum(scores) * scale
    gradients = tape.gradient(total, images)
    for image, gradient in zip(images, gradients):
        if gradient is None:
            raise ValueError(
                f"Invalid discriminator: its output does not depend on the input of shape "
                f"{image.shape}. The gradient penalty needs every scale to reach the score."
            )
    # bfloat16 or float16 gradients are cast before squaring, so that the
    # squares neither lose precision nor overflow.
    return scores, [tf.cast(g, tf.float32) / scale for g in gradients]


def _squared_norms(gradient: tf.Tensor) -> tf.Tensor:
    """Return the squared L2 norm over all axes but the batch axis, shape [N]."""
    axes = list(range(1, gradient.shape.rank))
    return tf.reduce_sum(tf.square(gradient), axis=axes)


def _interpolate(reals: Images, fakes: Images, alpha: Optional[tf.Tensor]):
    """Mix each real scale with its fake scale using one per-sample alpha for all scales."""
    batch_size = tf.shape(reals[0])[0]
    if alpha is None:
        alpha = tf.random.uniform([batch_size, 1, 1, 1], 0.0, 1.0, dtype=tf.float32)
    else:
        alpha = tf.reshape(tf.convert_to_tensor(alpha), [batch_size, 1, 1, 1])
    mixed = []
    for real, fake in zip(reals, fakes):
        fake = tf.cast(fake, real.dtype)
        mixed.append(real + tf.cast(alpha, real.dtype) * (fake - real))
    return mixed


def _wgan_gradient_penalty(D: Discriminator, reals: Images, fakes: Images, alpha):
    """Return (GP [N], per-scale terms) for WGAN-GP on multi-scale inputs.

    x_s = real_s + alpha * (fake_s - real_s) at every scale s with the same
    alpha ~ U(0, 1) per sample, penalty_s = (||dD(x_0..x_k)/dx_s||_2 - 1)^2 with the
    norm over H, W and C, and GP = mean over scales of penalty_s.
    """
    mixed = _interpolate(reals, fakes, alpha)
    _, gradients = _input_gradients(D, mixed)
    per_scale = {}
    penalties = []
    for index, (image, gradient) in enumerate(zip(mixed, gradients)):
        norm = tf.sqrt(_squared_norms(gradient) + _NORM_EPSILON)
        penalty = tf.square(norm - 1.0)
        penalties.append(penalty)
        per_scale[_scale_key("D/gp", index, image)] = penalty
    return tf.add_n(penalties) / float(len(penalties)), per_scale


def _discriminator_wgan_gp(config, D, reals, fakes, alpha):
    """WGAN-GP with drift: D(fake) - D(real) + drift * D(real)^2 + gp_weight * GP.

    GP is the mean over scales of the per-scale penalties (x_s mixed from real_s
    and fake_s with one alpha per sample shared by all scales, penalty_s =
    (||grad_s||_2 - 1)^2). Averaging the per-scale penalties is the MSG-GAN rule
    for a discriminator with several inputs (Karnewar and Wang, "MSG-GAN",
    arXiv:1903.06048, section 2). One gradient norm over all scales together,
    or a sum over scales, gives different values.

    The official code differs from this rule. The TensorFlow MSG-StyleGAN code
    (akanimax/msg-stylegan-tf at 309fa18, training/loss.py) interpolates and
    differentiates a single image tensor in `D_wgan_gp`, not the list of scales.
    The PyTorch code (akanimax/BMSG-GAN at 2c69cba, Losses.py) averages over
    scales but adds the penalty only when `WGAN_GP` is built with
    `use_gp=True` (default False).
    """
    real, fake = _paired_scores(D, reals, fakes)
    gp, per_scale = _wgan_gradient_penalty(D, reals, fakes, alpha)
    drift = tf.square(real)
    total = fake - real + config.drift_weight * drift + config.gp_weight * gp
    terms = {"D/real_score": real, "D/fake_score": fake, "D/drift": drift, "D/gp": gp}
    terms.update(per_scale)
    return total, terms


def _discriminator_ns_r1(config, D, reals, fakes, alpha):
    """Logistic loss with R1: softplus(D(fake)) + softplus(-D(real)) + gamma / 2 * R1.

    R1 = mean over scales of ||dD(reals)/dreal_s||_2^2, the squared norm over H, W
    and C per sample, with gradients taken w.r.t. each real scale as given to D.
    As for WGAN-GP, the per-scale penalties are averaged (the MSG-GAN rule),
    where single-input R1 has one squared norm.
    """
    real, gradients = _input_gradients(D, reals)
    fake = _scores(D, fakes)
    per_scale = {}
    penalties = []
    for index, (image, gradient) in enumerate(zip(reals, gradients)):
        penalty = _squared_norms(gradient)
        penalties.append(penalty)
        per_scale[_scale_key("D/r1", index, image)] = penalty
    r1 = tf.add_n(penalties) / float(len(penalties))
    total = tf.nn.softplus(fake) + tf.nn.softplus(-real) + 0.5 * config.r1_gamma * r1
    terms = {"D/real_score": real, "D/fake_score": fake, "D/r1": r1}
    terms.update(per_scale)
    return total, terms


def _relativistic_scores(D, reals, fakes, paired):
    """Return (r, f, r - mean(f), f - mean(r)) for the relativistic average losses.

    `paired` runs D once on reals and fakes together. The G step passes False, because
    there only the fakes need D's input gradient, and a joint call would backpropagate
    through the reals too.

    NOTE: the means are over the local batch. Under `tf.distribute` each replica
    centers on its own per-replica batch, not on the global batch.
    """
    if paired:
        real, fake = _paired_scores(D, reals, fakes)
    else:
        real, fake = _scores(D, reals), _scores(D, fakes)
    real_relative = real - tf.reduce_mean(fake)
    fake_relative = fake - tf.reduce_mean(real)
    return real, fake, real_relative, fake_relative


def _discriminator_ra_hinge(config, D, reals, fakes, alpha):
    """Relativistic average hinge: relu(1 - (r - mean(f))) + relu(1 + (f - mean(r)))."""
    real, fake, real_relative, fake_relative = _relativistic_scores(D, reals, fakes, True)
    total = tf.nn.relu(1.0 - real_relative) + tf.nn.relu(1.0 + fake_relative)
    return total, {"D/real_score": real, "D/fake_score": fake}


def _discriminator_hinge(config, D, reals, fakes, alpha):
    """Hinge loss: relu(1 - D(real)) + relu(1 + D(fake))."""
    real, fake = _paired_scores(D, reals, fakes)
    total = tf.nn.relu(1.0 - real) + tf.nn.relu(1.0 + fake)
    return total, {"D/real_score": real, "D/fake_score": fake}


def _discriminator_lsgan(config, D, reals, fakes, alpha):
    """Least squares with targets 1 (real) and 0 (fake): 0.5 * ((r - 1)^2 + f^2)."""
    real, fake = _paired_scores(D, reals, fakes)
    total = 0.5 * (tf.square(real - 1.0) + tf.square(fake))
    return total, {"D/real_score": real, "D/fake_score": fake}


def _generator_wgan(config, D, reals, fakes):
    """WGAN generator loss: -D(fake)."""
    fake = _scores(D, fakes)
    return -fake, {"G/fake_score": fake}


def _generator_non_saturating(config, D, reals, fakes):
    """Non-saturating logistic generator loss: softplus(-D(fake))."""
    fake = _scores(D, fakes)
    return tf.nn.softplus(-fake), {"G/fake_score": fake}


def _generator_ra_hinge(config, D, reals, fakes):
    """Relativistic average hinge for G: relu(1 + (r - mean(f))) + relu(1 - (f - mean(r)))."""
    real, fake, real_relative, fake_relative = _relativistic_scores(D, reals, fakes, False)
    total = tf.nn.relu(1.0 + real_relative) + tf.nn.relu(1.0 - fake_relative)
    return total, {"G/real_score": real, "G/fake_score": fake}


def _generator_lsgan(config, D, reals, fakes):
    """Least squares generator loss with target 1: 0.5 * (D(fake) - 1)^2."""
    fake = _scores(D, fakes)
    return 0.5 * tf.square(fake - 1.0), {"G/fake_score": fake}


_DISCRIMINATOR_LOSSES = {
    "wgan_gp": _discriminator_wgan_gp,
    "ns_r1": _discriminator_ns_r1,
    "ra_hinge": _discriminator_ra_hinge,
    "hinge": _discriminator_hinge,
    "lsgan": _discriminator_lsgan,
}

_GENERATOR_LOSSES = {
    "wgan_gp": _generator_wgan,
    "ns_r1": _generator_non_saturating,
    "ra_hinge": _generator_ra_hinge,
    "hinge": _generator_wgan,
    "lsgan": _generator_lsgan,
}


def discriminator_loss(
    config: LossConfig,
    D: Discriminator,
    reals: Images,
    fakes: Images,
    alpha: Optional[tf.Tensor] = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Compute the per-sample discriminator loss selected by `config.name`.

    With r = D(reals) and f = D(fakes):
      wgan_gp:  f - r + drift_weight * r^2 + gp_weight * GP
      ns_r1:    softplus(f) + softplus(-r) + r1_gamma / 2 * R1
      ra_hinge: relu(1 - (r - mean(f))) + relu(1 + (f - mean(r)))
      hinge:    relu(1 - r) + relu(1 + f)
      lsgan:    0.5 * ((r - 1)^2 + f^2)
    GP and R1 are the means over scales of the per-scale penalties (the MSG-GAN
    rule); see `_discriminator_wgan_gp` and `_discriminator_ns_r1`.

    Args:
      config: the loss options.
      D: discriminator, called as `D(images, training=True)` and returning [N, 1].
      reals: real images, one [N, H, W, C] tensor per scale, coarse to fine.
      fakes: generated images in the same layout.
      alpha: optional per-sample mixing factors for the WGAN-GP interpolation,
        shape [N] or [N, 1, 1, 1]. Drawn from U(0, 1) when None. Other losses
        ignore it.

    Returns:
      (loss, terms): the loss of shape [N] in float32, and a dict of per-sample
      [N] float32 tensors for logging: "D/real_score", "D/fake_score", plus
      "D/gp" and "D/drift" (wgan_gp) or "D/r1" (ns_r1), and the per-scale
      penalties as "D/gp/res<H>" or "D/r1/res<H>".

    Raises:
      ValueError: if the image lists are empty or differ in length, D's output
        is not [N, 1] or [N], or a penalised scale does not reach D's output.
    """
    _check_image_lists(reals, fakes)
    return _DISCRIMINATOR_LOSSES[config.name](config, D, reals, fakes, alpha)


def generator_loss(
    config: LossConfig,
    D: Discriminator,
    reals: Optional[Images],
    fakes: Images,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Compute the per-sample generator loss selected by `config.name`.

    With r = D(reals) and f = D(fakes):
      wgan_gp, hinge: -f
      ns_r1:          softplus(-f)
      ra_hinge:       relu(1 + (r - mean(f))) + relu(1 - (f - mean(r)))
      lsgan:          0.5 * (f - 1)^2
    Only ra_hinge evaluates D on `reals`; the other losses ignore them, so they
    accept `reals=None`. `fakes`
    must be computed by the caller inside its own GradientTape so that the loss
    reaches G's weights.

    Returns:
      (loss, terms): the loss of shape [N] in float32, and per-sample logging
      terms "G/fake_score" (and "G/real_score" for ra_hinge).

    Raises:
      ValueError: if `fakes` is empty, the image lists differ in length
        (ra_hinge), or D's output is not [N, 1] or [N].
    """
    if config.name == "ra_hinge":
        _check_image_lists(reals, fakes)
    elif len(fakes) == 0:
        raise ValueError("Invalid fakes: expected a non-empty list with one image per scale.")
    return _GENERATOR_LOSSES[config.name](config, D, reals, fakes)
