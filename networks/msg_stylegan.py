"""MSG-StyleGAN generator: the StyleGAN (v1) generator with an RGB output after every block.

Mapping network z -> w, a learned constant 4x4 input, and per conv layer: noise with
learned per-channel strength, bias and leaky ReLU, then AdaIN (instance norm, then a
per-channel scale and bias computed from w). A 1x1 toRGB after each block gives one
image per scale. StyleGAN's toRGB outputs at the lower resolutions only served progressive
growing; here every one of them feeds the discriminator.
"""

import keras
import numpy as np
import tensorflow as tf

from networks.layers import (EqualizedConv2D, EqualizedDense, channels_at, leaky_relu,
                             pixel_norm, upsample_nearest)
from networks.msg_progan import scales_for

NOISE_MODES = ("random", "const", "none")


def blur_121(x):
    """Filter NHWC `x` with the normalised separable [1, 2, 1] kernel, per channel."""
    channels = x.shape[-1]
    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    kernel = kernel / kernel.sum()
    kernel = np.tile(kernel[:, :, np.newaxis, np.newaxis], [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(x, tf.constant(kernel, x.dtype), strides=[1, 1, 1, 1],
                                  padding="SAME")


def adaptive_instance_norm(x, style_scale, style_bias, epsilon=1e-8):
    """Normalise each feature map of `x` [N, H, W, C] per sample, then apply the style.

    `style_scale` and `style_bias` are [N, C], applied as given. The style layers of
    `StyleEpilogue` start the scale's bias at 1, so AdaIN starts as plain instance norm.
    The statistics are taken in float32 when `x` is bfloat16 or float16.
    """
    x32 = tf.cast(x, tf.float32)
    x32 = x32 - tf.reduce_mean(x32, axis=[1, 2], keepdims=True)
    x32 = x32 * tf.math.rsqrt(tf.reduce_mean(tf.square(x32), axis=[1, 2], keepdims=True)
                              + epsilon)
    x = tf.cast(x32, x.dtype)
    return x * style_scale[:, tf.newaxis, tf.newaxis, :] + style_bias[:, tf.newaxis, tf.newaxis, :]


class NoiseInput(keras.layers.Layer):
    """Add per-pixel Gaussian noise scaled by a learned per-channel strength (starts at 0).

    `noise_mode`: "random" draws new noise every call, "const" uses a fixed noise image
    stored with the layer (for repeatable figures), "none" adds nothing.
    """

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        self.strength = self.add_weight(name="strength", shape=(channels,), initializer="zeros")
        self.const_noise = self.add_weight(
            name="const_noise", shape=(1, height, width, 1), trainable=False,
            initializer=keras.initializers.RandomNormal(stddev=1.0))

    def call(self, x, noise_mode="random"):
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            noise = tf.cast(self.const_noise, x.dtype)
        else:
            shape = tf.shape(x)
            noise = tf.random.normal([shape[0], shape[1], shape[2], 1], dtype=x.dtype)
        return x + noise * tf.cast(self.strength, x.dtype)


class StyleEpilogue(keras.layers.Layer):
    """Noise, bias, leaky ReLU and AdaIN after a conv layer (or after the constant input)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.noise = NoiseInput(name="noise")
        # Style scale and bias from w; the scale's bias starts at 1 so AdaIN starts at the
        # identity on the normalised features.
        self.style_scale = EqualizedDense(channels, gain=1.0, bias_init=1.0, name="style_scale")
        self.style_bias = EqualizedDense(channels, gain=1.0, name="style_bias")

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")

    def call(self, x, w, noise_mode="random"):
        x = self.noise(x, noise_mode=noise_mode)
        x = leaky_relu(x + self.bias)
        return adaptive_instance_norm(x, self.style_scale(w), self.style_bias(w))


class MappingNetwork(keras.layers.Layer):
    """Map z [N, latent_size] to w [N, w_size] with `depth` leaky-ReLU dense layers."""

    def __init__(self, depth=8, width=512, w_size=512, lr_multiplier=0.01,
                 normalize_latents=True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_latents = normalize_latents
        self.dense_layers = [
            EqualizedDense(w_size if i == depth - 1 else width, lr_multiplier=lr_multiplier,
                           name=f"dense{i}")
            for i in range(depth)]

    def call(self, z):
        x = pixel_norm(z) if self.normalize_latents else z
        for dense in self.dense_layers:
            x = leaky_relu(dense(x))
        return x


class MsgStyleGanGenerator(keras.Model):
    """Map latents z [N, latent_size] to a list of images, one per scale, coarse to fine.

    The synthesis network has two style layers per resolution, so `num_ws = 2 *
    len(scales)`; layer 2k and 2k + 1 belong to resolution `scales[k]`. `ws` below is
    always [N, num_ws, w_size].
    """

    def __init__(self, resolution, latent_size=512, num_channels=3, channel_base=16384,
                 channel_max=512, mapping_depth=8, mapping_width=512, mapping_lr_multiplier=0.01,
                 w_avg_beta=0.995, blur=True, **kwargs):
        super().__init__(**kwargs)
        self.resolution = resolution
        self.latent_size = latent_size
        self.num_channels = num_channels
        self.scales = scales_for(resolution)
        self.num_ws = 2 * len(self.scales)
        self.w_size = mapping_width
        self.w_avg_beta = w_avg_beta
        self.blur = blur

        def nf(res):
            return channels_at(res, channel_base, channel_max)

        self.mapping = MappingNetwork(mapping_depth, mapping_width, mapping_width,
                                      mapping_lr_multiplier, name="mapping")
        # StyleGAN v1 starts the constant at ones. The first AdaIN then normalises a flat
        # map whose spatial spread is rounding error, which amplifies that error by orders
        # of magnitude. A N(0, 1) start, as in StyleGAN2, avoids it.
        self.const_input = self.add_weight(
            name="const", shape=(1, 4, 4, nf(4)),
            initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.w_avg = self.add_weight(name="w_avg", shape=(mapping_width,), initializer="zeros",
                                     trainable=False)
        self.convs = [None, EqualizedConv2D(nf(4), 3, name="b4_conv")]
        self.epilogues = [StyleEpilogue(nf(4), name="b4_const_epilogue"),
                          StyleEpilogue(nf(4), name="b4_conv_epilogue")]
        for res in self.scales[1:]:
            self.convs += [EqualizedConv2D(nf(res), 3, name=f"b{res}_conv0"),
                           EqualizedConv2D(nf(res), 3, name=f"b{res}_conv1")]
            self.epilogues += [StyleEpilogue(nf(res), name=f"b{res}_conv0_epilogue"),
                               StyleEpilogue(nf(res), name=f"b{res}_conv1_epilogue")]
        self.to_rgb = [EqualizedConv2D(num_channels, 1, gain=1.0, name=f"b{res}_torgb")
                       for res in self.scales]

    def map(self, z, truncation_psi=1.0, truncation_cutoff=None):
        """Return ws [N, num_ws, w_size] for z, with the truncation trick applied.

        Truncation moves w towards the tracked average `w_avg` by `truncation_psi` for
        the style layers below `truncation_cutoff` (None: all layers). psi 1 is the
        identity and psi 0 gives `w_avg` for every latent.
        """
        w = self.mapping(z)
        ws = tf.tile(w[:, tf.newaxis, :], [1, self.num_ws, 1])
        return self.truncate(ws, truncation_psi, truncation_cutoff)

    def truncate(self, ws, truncation_psi=1.0, truncation_cutoff=None):
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1.0:
            return ws
        cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
        layer_psi = tf.where(tf.range(self.num_ws) < cutoff,
                             tf.cast(truncation_psi, ws.dtype), tf.ones([], ws.dtype))
        w_avg = tf.cast(self.w_avg, ws.dtype)
        return w_avg + (ws - w_avg) * layer_psi[tf.newaxis, :, tf.newaxis]

    def synthesize(self, ws, noise_mode="random"):
        """Return the list of images (coarse to fine) for ws [N, num_ws, w_size]."""
        batch = tf.shape(ws)[0]
        x = tf.tile(tf.cast(self.const_input, ws.dtype), [batch, 1, 1, 1])  # [N, 4, 4, C]
        images = []
        for index, res in enumerate(self.scales):
            for layer in (2 * index, 2 * index + 1):
                conv = self.convs[layer]
                if conv is not None:
                    if layer == 2 * index and res > 4:
                        x = upsample_nearest(x)
                        x = conv(x)
                        if self.blur:
                            x = blur_121(x)
                    else:
                        x = conv(x)
                x = self.epilogues[layer](x, ws[:, layer], noise_mode=noise_mode)
            images.append(self.to_rgb[index](x))                            # [N, res, res, C]
        return images

    def call(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="random",
             training=None):
        return self.synthesize(self.map(z, truncation_psi, truncation_cutoff), noise_mode)

    def update_w_avg(self, batch_mean_w):
        """Move the tracked average of w towards a batch mean [w_size] (training only)."""
        self.w_avg.assign(batch_mean_w + (self.w_avg - batch_mean_w) * self.w_avg_beta)


def mix_styles(ws_a, ws_b, first_layer, last_layer=None):
    """Return ws_a with the style layers [first_layer, last_layer) taken from ws_b."""
    num_ws = ws_a.shape[1]
    last_layer = num_ws if last_layer is None else last_layer
    layers = tf.range(num_ws)
    take_b = (layers >= first_layer) & (layers < last_layer)
    return tf.where(take_b[tf.newaxis, :, tf.newaxis], ws_b, ws_a)
