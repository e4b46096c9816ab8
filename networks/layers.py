"""Building blocks shared by the MSG generators and the MSG discriminator.

All layers work on NHWC tensors. Weights of the equalized-learning-rate layers are
stored at N(0, 1 / lr_multiplier) and scaled at run time by He's constant, so that
Adam's per-parameter step sizes are the same for every layer (Karras et al., 2018).
"""

import math

import keras
import tensorflow as tf

LEAKY_RELU_SLOPE = 0.2
HE_GAIN = math.sqrt(2.0)


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Return the feature-map count at resolution `res` (pixels).

    `min(channel_base // res, channel_max)`: with the defaults 16384 and 512 this gives
    512 up to 32x32, then 256, 128, 64, 32 and 16 at 1024x1024. Never below 1.
    """
    return max(1, min(channel_base // res, channel_max))


def leaky_relu(x):
    return tf.nn.leaky_relu(x, alpha=LEAKY_RELU_SLOPE)


class EqualizedDense(keras.layers.Layer):
    """Fully connected layer with equalized learning rate.

    Args:
      units: output width.
      gain: He gain; the run-time weight scale is `gain / sqrt(fan_in) * lr_multiplier`.
      lr_multiplier: scales the effective learning rate of this layer (the StyleGAN
        mapping network uses 0.01).
      use_bias: add a bias, initialised at `bias_init` and scaled by `lr_multiplier`.
    """

    def __init__(self, units, gain=HE_GAIN, lr_multiplier=1.0, use_bias=True,
                 bias_init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.gain = gain
        self.lr_multiplier = lr_multiplier
        self.use_bias = use_bias
        self.bias_init = bias_init

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.weight_scale = self.gain / math.sqrt(fan_in) * self.lr_multiplier
        self.kernel = self.add_weight(
            name="kernel", shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / self.lr_multiplier))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,),
                initializer=keras.initializers.Constant(self.bias_init / self.lr_multiplier))

    def call(self, x):
        y = tf.matmul(x, self.kernel * self.weight_scale)
        if self.use_bias:
            y = y + self.bias * self.lr_multiplier
        return y


class EqualizedConv2D(keras.layers.Layer):
    """Square 2-D convolution (stride 1) with equalized learning rate.

    `padding` is "same" for the 1x1 and 3x3 convolutions and "valid" for the 4x4
    convolution that ends the discriminator.
    """

    def __init__(self, filters, kernel_size, gain=HE_GAIN, padding="same",
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.gain = gain
        self.padding = padding.upper()
        self.use_bias = use_bias

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        fan_in = in_channels * self.kernel_size * self.kernel_size
        self.weight_scale = self.gain / math.sqrt(fan_in)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=1.0))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer="zeros")

    def call(self, x):
        y = tf.nn.conv2d(x, self.kernel * self.weight_scale, strides=1,
                         padding=self.padding)
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return y


def pixel_norm(x, epsilon=1e-8):
    """Normalise each pixel's feature vector to unit root mean square over channels.

    The mean square is taken in float32, so bfloat16 and float16 activations lose no
    precision in the sum and cannot overflow it.
    """
    mean_square = tf.reduce_mean(tf.square(tf.cast(x, tf.float32)), axis=-1, keepdims=True)
    return x * tf.cast(tf.math.rsqrt(mean_square + epsilon), x.dtype)


def upsample_nearest(x, factor=2):
    """Nearest-neighbour upsampling of NHWC `x` by an integer factor."""
    if factor == 1:
        return x
    shape = tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
    x = tf.reshape(x, [n, h, 1, w, 1, c])
    x = tf.tile(x, [1, 1, factor, 1, factor, 1])
    return tf.reshape(x, [n, h * factor, w * factor, c])


def downsample_avg(x):
    """2x2 average pooling, the inverse of the dataset's box-filter pyramid."""
    return tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")


def minibatch_stddev(x, group_size=4):
    """Append one feature map holding the mean standard deviation within each group.

    Groups are consecutive samples of the batch ([N, ...] -> [N / G, G, ...]). ProGAN's
    code groups strided samples instead. Consecutive groups give the same result whether
    a global batch runs on one replica or is split over several, as long as the
    per-replica batch is a multiple of the group size. The caller checks divisibility:
    `group_size` is clipped to the batch size only when the batch is smaller.
    """
    n = tf.shape(x)[0]
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    group = tf.minimum(group_size, n)
    y = tf.reshape(x, [-1, group, h, w, c])                       # [M, G, H, W, C]
    y = tf.cast(y, tf.float32)
    y = y - tf.reduce_mean(y, axis=1, keepdims=True)
    y = tf.sqrt(tf.reduce_mean(tf.square(y), axis=1) + 1e-8)      # [M, H, W, C]
    y = tf.reduce_mean(y, axis=[1, 2, 3])                         # [M]
    y = tf.cast(y, x.dtype)
    y = tf.repeat(y, group)                                       # [N]
    y = tf.tile(tf.reshape(y, [-1, 1, 1, 1]), [1, h, w, 1])       # [N, H, W, 1]
    return tf.concat([x, y], axis=-1)
