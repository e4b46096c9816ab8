"""Shared test setup: two logical CPU devices and a small real dataset."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# MirroredStrategy tests need two devices. The CPU can only be split before TensorFlow
# initialises it, so this runs at import, before any test touches a tensor.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI_DIR = os.path.join(REPO_ROOT, "data", "emoji64")


@pytest.fixture(scope="session")
def emoji_dataset(tmp_path_factory):
    """A TFRecord pyramid of the first 64 bundled emoji at 32x32 (levels 4 to 32)."""
    from PIL import Image

    from msg_tf import dataset_builder

    image_dir = tmp_path_factory.mktemp("emoji_images")
    names = sorted(n for n in os.listdir(EMOJI_DIR) if n.endswith(".png"))[:64]
    for name in names:
        with Image.open(os.path.join(EMOJI_DIR, name)) as image:
            image.resize((32, 32), Image.LANCZOS).save(image_dir / name)
    out = tmp_path_factory.mktemp("datasets") / "emoji32"
    dataset_builder.create_from_images(str(out), str(image_dir))
    return str(out)
