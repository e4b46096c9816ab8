"""Flagfiles parse with train.py's flags and pass validation.

train.py and calc_metrics.py both define --metrics on absl's global flags, so importing
both in one process fails. The flags are therefore parsed in a child process.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.cfg")))

PARSE_SCRIPT = """
import dataclasses, json, sys
from absl import flags
import train
from msg_tf.config import validate
results = []
for args in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", *args])
    config = train.config_from_flags()
    validate(config)
    results.append(dataclasses.asdict(config))
print(json.dumps(results))
"""


def parse_all(argument_lists):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, json.dumps(argument_lists)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed_configs():
    configs = parse_all([[f"--flagfile={path}"] for path in CONFIGS])
    return dict(zip(CONFIGS, configs))


def test_configs_exist():
    names = {os.path.basename(path) for path in CONFIGS}
    assert {"demo_emoji64.cfg", "demo_emoji64_stylegan.cfg",
            "paper_progan_cifar10_32.cfg", "paper_stylegan_ffhq_1024.cfg"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses_and_validates(path, parsed_configs):
    config = parsed_configs[path]
    assert config["dataset"]
    if "paper_stylegan" in path:
        assert (config["arch"], config["loss"], config["combine"]) == ("stylegan", "ns_r1",
                                                                       "cat_lin")
        assert config["mapping_depth"] == 8
        assert config["mapping_lr_multiplier"] == 0.01
    if "paper_progan" in path:
        assert (config["arch"], config["loss"], config["combine"]) == ("progan", "wgan_gp",
                                                                       "simple")
    if "paper_" in path:
        assert (config["lr"], config["latent_size"], config["channel_base"]) == (0.003, 512,
                                                                                 16384)


def test_bool_flag_parses_false():
    texts = ["false", "False", "0", "true"]
    configs = parse_all([["--dataset=x", f"--mirror_augment={text}"] for text in texts])
    assert [config["mirror_augment"] for config in configs] == [False, False, False, True]
