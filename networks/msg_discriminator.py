"""The MSG discriminator, shared by MSG-ProGAN and MSG-StyleGAN."""

import keras
import tensorflow as tf

from networks.layers import (EqualizedConv2D, EqualizedDense, channels_at,
                             downsample_avg, leaky_relu, minibatch_stddev)
from networks.msg_progan import scales_for

COMBINE_NAMES = ("simple", "lin_cat", "cat_lin")


def check_combine_name(name: str) -> None:
    if name not in COMBINE_NAMES:
        raise ValueError(
            f"unknown combine function {name!r}: expected one of {', '.join(COMBINE_NAMES)}")


class MsgDiscriminator(keras.Model):
    """Score a list of images (coarse to fine, one per scale) with one logit per sample.

    The finest image enters through a 1x1 fromRGB conv. Each block from the finest
    resolution down to 8x8 runs minibatch stddev, a 3x3 conv keeping the block's width,
    a 3x3 conv to the next coarser width, and 2x2 average pooling. The image of the next
    coarser scale is then combined with the pooled features by `combine`:

    - `simple`:  concat(image, features)
    - `lin_cat`: concat(1x1 conv(image), features), the conv giving half the features'
      channel count
    - `cat_lin`: 1x1 conv(concat(image, features)) back to the features' channel count

    The 1x1 convs of `lin_cat` and `cat_lin` use leaky ReLU like fromRGB. The 4x4 block
    ends with minibatch stddev, a 3x3 conv, a 4x4 valid conv and a linear dense layer.
    """

    def __init__(self, resolution, num_channels=3, channel_base=16384, channel_max=512,
                 combine="simple", mbstd_group_size=4, **kwargs):
        super().__init__(**kwargs)
        check_combine_name(combine)
        self.resolution = resolution
        self.num_channels = num_channels
        self.combine = combine
        self.mbstd_group_size = mbstd_group_size
        self.scales = scales_for(resolution)

        def nf(res):
            return channels_at(res, channel_base, channel_max)

        self.from_rgb = EqualizedConv2D(nf(resolution), 1, name=f"b{resolution}_fromrgb")
        # Blocks fine to coarse, all but the 4x4 one; lists keep checkpoint keys simple.
        self.block_convs = []
        self.combine_convs = []
        for res in reversed(self.scales[1:]):
            self.block_convs.append([EqualizedConv2D(nf(res), 3, name=f"b{res}_conv0"),
                                     EqualizedConv2D(nf(res // 2), 3, name=f"b{res}_conv1")])
            coarser = res // 2
            if combine == "lin_cat":
                self.combine_convs.append(EqualizedConv2D(
                    max(1, nf(coarser) // 2), 1, name=f"b{coarser}_lincat"))
            elif combine == "cat_lin":
                self.combine_convs.append(EqualizedConv2D(
                    nf(coarser), 1, name=f"b{coarser}_catlin"))
        self.conv_4 = EqualizedConv2D(nf(4), 3, name="b4_conv")
        self.conv_4x4 = EqualizedConv2D(nf(4), 4, padding="valid", name="b4_conv4x4")
        self.dense_out = EqualizedDense(1, gain=1.0, name="b4_out")

    def _combine(self, index, image, features):
        if self.combine == "simple":
            return tf.concat([image, features], axis=-1)
        if self.combine == "lin_cat":
            return tf.concat([leaky_relu(self.combine_convs[index](image)), features], axis=-1)
        return leaky_relu(self.combine_convs[index](tf.concat([image, features], axis=-1)))

    def _mbstd(self, x):
        # A group of one has zero spread, so group sizes below 2 turn the layer off.
        if self.mbstd_group_size < 2:
            return x
        return minibatch_stddev(x, self.mbstd_group_size)

    def call(self, images, training=None):
        if len(images) != len(self.scales):
            raise ValueError(
                f"the discriminator expects {len(self.scales)} images (scales "
                f"{self.scales}), got {len(images)}")
        # images[-1] is the finest scale; walk the list from fine to coarse.
        x = leaky_relu(self.from_rgb(images[-1]))                     # [N, R, R, nf(R)]
        for index, convs in enumerate(self.block_convs):
            x = self._mbstd(x)
            for conv in convs:
                x = leaky_relu(conv(x))
            x = downsample_avg(x)
            coarser_image = images[len(images) - 2 - index]
            x = self._combine(index, coarser_image, x)
        x = self._mbstd(x)                                            # [N, 4, 4, C + 1]
        x = leaky_relu(self.conv_4(x))
        x = leaky_relu(self.conv_4x4(x))                              # [N, 1, 1, nf(4)]
        x = tf.reshape(x, [-1, x.shape[-1]])
        return self.dense_out(x)                                      # [N, 1]
