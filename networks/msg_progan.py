"""MSG-ProGAN generator: the ProGAN generator with an RGB output after every block."""

import math

import keras
import tensorflow as tf

from networks.layers import (EqualizedConv2D, EqualizedDense, channels_at, leaky_relu,
                             pixel_norm, upsample_nearest)


def scales_for(resolution: int) -> list[int]:
    """Return the model's resolutions coarse to fine: [4, 8, ..., resolution]."""
    res_log2 = int(round(math.log2(resolution)))
    if resolution < 8 or 2 ** res_log2 != resolution:
        raise ValueError(
            f"invalid resolution {resolution}: expected a power of two of at least 8")
    return [2 ** k for k in range(2, res_log2 + 1)]


class MsgProGanGenerator(keras.Model):
    """Map latents `z` [N, latent_size] to a list of images, one per scale, coarse to fine.

    Block 4x4: the normalised latent goes through a dense layer to a 4x4 map (the
    paper's 4x4 "deconv" from a 1x1 input is the same linear map), then a 3x3 conv.
    Every finer block: nearest 2x upsampling and two 3x3 convs. Each conv is followed by
    leaky ReLU and pixel norm. A linear 1x1 toRGB after each block gives that scale's
    image. Outputs have no tanh, as in ProGAN: they are only pulled into [-1, 1] by the
    discriminator's comparison with real images.
    """

    def __init__(self, resolution, latent_size=512, num_channels=3, channel_base=16384,
                 channel_max=512, normalize_latents=True, **kwargs):
        super().__init__(**kwargs)
        self.resolution = resolution
        self.latent_size = latent_size
        self.num_channels = num_channels
        self.normalize_latents = normalize_latents
        self.scales = scales_for(resolution)

        def nf(res):
            return channels_at(res, channel_base, channel_max)

        # ProGAN uses gain sqrt(2) / 4 for the first dense layer so that each of the
        # 16 output pixels starts with the variance of an ordinary He-initialised layer.
        self.dense_4 = EqualizedDense(nf(4) * 16, gain=math.sqrt(2) / 4, name="b4_dense")
        # Lists indexed like `self.scales`: checkpoint keys stay plain strings.
        self.block_convs = [[EqualizedConv2D(nf(4), 3, name="b4_conv")]]
        for res in self.scales[1:]:
            self.block_convs.append([EqualizedConv2D(nf(res), 3, name=f"b{res}_conv0"),
                                     EqualizedConv2D(nf(res), 3, name=f"b{res}_conv1")])
        self.to_rgb = [EqualizedConv2D(num_channels, 1, gain=1.0, name=f"b{res}_torgb")
                       for res in self.scales]
        self._channels_4 = nf(4)

    def call(self, z, training=None):
        if self.normalize_latents:
            z = pixel_norm(z)
        x = self.dense_4(z)
        x = tf.reshape(x, [-1, 4, 4, self._channels_4])                  # [N, 4, 4, C]
        x = pixel_norm(leaky_relu(x))
        images = []
        for index, res in enumerate(self.scales):
            if res > 4:
                x = upsample_nearest(x)
            for conv in self.block_convs[index]:
                x = pixel_norm(leaky_relu(conv(x)))
            images.append(self.to_rgb[index](x))                         # [N, res, res, C]
        return images
