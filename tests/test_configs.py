import glob
import os

import pytest
from absl import flags

import train
from msg_tf.config import validate
from tests.conftest import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.cfg")))


@pytest.fixture
def parsed_flags():
    def parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train.py", *args])
        return train.config_from_flags()
    yield parse
    flags.FLAGS.unparse_flags()


def test_configs_exist():
    names = {os.path.basename(path) for path in CONFIGS}
    assert {"demo_emoji64.cfg", "demo_emoji64_stylegan.cfg",
            "paper_progan_cifar10_32.cfg", "paper_stylegan_ffhq_1024.cfg"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_and_validates(path, parsed_flags):
    config = parsed_flags(f"--flagfile={path}")
    validate(config)
    assert config.dataset
    if "paper_stylegan" in path:
        assert (config.arch, config.loss, config.combine) == ("stylegan", "ns_r1", "cat_lin")
        assert config.mapping_depth == 8
        assert config.mapping_lr_multiplier == 0.01
    if "paper_progan" in path:
        assert (config.arch, config.loss, config.combine) == ("progan", "wgan_gp", "simple")
    if "paper_" in path:
        assert (config.lr, config.latent_size, config.channel_base) == (0.003, 512, 16384)


@pytest.mark.parametrize("text, expected", [("false", False), ("False", False),
                                            ("0", False), ("true", True)])
def test_bool_flag_parses_false(text, expected, parsed_flags):
    config = parsed_flags("--dataset=x", f"--mirror_augment={text}")
    assert config.mirror_augment is expected
