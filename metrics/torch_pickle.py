"""Read tensors from PyTorch zip archives without PyTorch and without running their code.

Both `torch.save` (zip format, PyTorch >= 1.6) and `torch.jit.save` write a zip archive
whose `<prefix>/data.pkl` pickle describes the objects and whose `<prefix>/data/<key>`
entries hold the raw bytes of each tensor storage. The pickle is read by
`RestrictedUnpickler`, which resolves only the handful of globals that tensors and
containers need, each mapped to a NumPy stand-in. Any other global (such as `os.system`)
raises `UnsafePickleError` naming it, so a hostile file cannot run code.
"""

import collections
import io
import pickle
import zipfile

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class TorchFileError(ValueError):
    """A file is not a PyTorch zip archive this reader understands."""


class StorageType:
    """Stand-in for `torch.FloatStorage` and friends: records the element type."""

    def __init__(self, torch_name: str, dtype):
        self.torch_name = torch_name
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def __repr__(self):
        return f"StorageType({self.torch_name})"


# Storage classes that `torch.save` names in persistent ids. BFloat16 has no NumPy
# dtype, so such files are rejected by the allow-list instead of misread.
STORAGE_TYPES = {
    name: StorageType(name, dtype) for name, dtype in [
        ("FloatStorage", np.float32), ("DoubleStorage", np.float64),
        ("HalfStorage", np.float16), ("LongStorage", np.int64), ("IntStorage", np.int32),
        ("ShortStorage", np.int16), ("CharStorage", np.int8), ("ByteStorage", np.uint8),
        ("BoolStorage", np.bool_),
    ]
}


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Build the NumPy array that `torch._utils._rebuild_tensor_v2` would build as a tensor.

    `storage` is a 1-D array, and offset and strides count elements, as in PyTorch.
    """
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if not size:
        return storage[storage_offset].copy()
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
    if any(n == 0 for n in size):
        return np.zeros(size, storage.dtype)
    if storage_offset < 0 or last >= storage.size:
        raise TorchFileError(f"a tensor of size {list(size)} and stride {list(stride)} at "
                             f"offset {storage_offset} reads past its storage of "
                             f"{storage.size} elements: the file is corrupt")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size,
        strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    return data


class ScriptObject:
    """Stand-in for a TorchScript module class (`__torch__.*`): keeps its attributes."""

    torch_class = "?"

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self):
        return f"ScriptObject({self.torch_class})"


_SCRIPT_CLASSES: dict[str, type] = {}


def _script_class(qualified_name: str) -> type:
    if qualified_name not in _SCRIPT_CLASSES:
        _SCRIPT_CLASSES[qualified_name] = type(
            "ScriptObject", (ScriptObject,), {"torch_class": qualified_name})
    return _SCRIPT_CLASSES[qualified_name]


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # TorchScript pickles List[int] and similar attributes (conv padding) through these.
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    **{("torch", name): storage for name, storage in STORAGE_TYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS` (and, if enabled, `__torch__.*`).

    `load_storage(storage_type, key, numel)` returns the 1-D array for a persistent id
    ('storage', storage_type, key, location, numel).
    """

    def __init__(self, file, load_storage, allow_script_classes=False):
        super().__init__(file)
        self._load_storage = load_storage
        self._allow_script_classes = allow_script_classes

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        # TorchScript archives pickle each module as an instance of its compiled class.
        # The stand-in only stores attributes, so allowing these names runs no code.
        if self._allow_script_classes and module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        raise UnsafePickleError(
            f"the pickle references the global {module}.{name}, which is not allowed: "
            "only tensor storages, tensor rebuild functions and OrderedDict are read, so "
            "the file is not a plain PyTorch weights file or it tries to run code")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r} in the pickle: "
                                 "expected ('storage', type, key, location, numel)")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise TorchFileError(f"persistent id {pid!r} names no known storage type")
        return self._load_storage(storage_type, str(key), int(numel))


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise TorchFileError(f"{path} has {len(pickles)} top-level */data.pkl entries, "
                             "expected 1: it is not a PyTorch zip archive")
    return pickles[0][:-len("data.pkl")]


def load_torch_zip(path: str, allow_script_classes: bool = False):
    """Load the object pickled in a PyTorch zip archive, with tensors as NumPy arrays.

    Raises TorchFileError when the file is not such an archive (for example the
    pre-1.6 PyTorch format) and UnsafePickleError when the pickle names a global
    outside the allow-list.
    """
    if not zipfile.is_zipfile(path):
        raise TorchFileError(
            f"{path} is not a zip archive. Only the zip format of torch.save (PyTorch >= "
            "1.6) and torch.jit.save is supported. Re-save an older file with a recent "
            "PyTorch: torch.save(torch.load(path), new_path)")
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive, path)
        names = set(archive.namelist())
        byteorder_entry = prefix + "byteorder"
        if byteorder_entry in names:
            byteorder = archive.read(byteorder_entry).decode().strip()
            if byteorder != "little":
                raise TorchFileError(f"{path} stores tensors in {byteorder}-endian byte "
                                     "order, and only little-endian is supported")
        cache = {}

        def load_storage(storage_type, key, numel):
            if key not in cache:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise TorchFileError(f"{path} lacks the storage entry {entry}")
                raw = archive.read(entry)
                expected = numel * storage_type.dtype.itemsize
                if len(raw) < expected:
                    raise TorchFileError(f"storage {entry} has {len(raw)} bytes, fewer than "
                                         f"the {expected} its {numel} elements need")
                cache[key] = np.frombuffer(raw[:expected], storage_type.dtype)
            return cache[key]

        data = archive.read(prefix + "data.pkl")
        unpickler = RestrictedUnpickler(io.BytesIO(data), load_storage, allow_script_classes)
        return unpickler.load()


def flatten_tensors(obj, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten nested dicts and TorchScript stand-ins into {"a.b.c": array}."""
    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    if isinstance(obj, ScriptObject):
        items = obj.__dict__.items()
    elif isinstance(obj, dict):
        items = obj.items()
    else:
        return {}
    result = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        result.update(flatten_tensors(value, name))
    return result
