"""Fault injection: training killed at several points resumes from its last checkpoint."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msg_tf import training
from msg_tf.config import TrainingConfig
from tests.conftest import REPO_ROOT

# Ticks of 16 images (2 steps of 8); a checkpoint and grids every second tick.
TRAIN_FLAGS = ["--resolution=16", "--channel_base=128", "--channel_max=16",
               "--latent_size=16", "--batch_size=8", "--tick_kimg=0.016",
               "--network_snapshot_ticks=2", "--image_snapshot_ticks=2", "--seed=5",
               "--metrics=swd16", "--metric_ticks=2"]
TOTAL_KIMG = 0.096


def run_training(dataset, run_dir, total_kimg, fault=None):
    flags = [f"--dataset={dataset}", f"--run_dir={run_dir}", f"--total_kimg={total_kimg}",
             *TRAIN_FLAGS]
    if fault:
        command = [sys.executable, os.path.join("tests", "fault_runner.py"), *fault, "--",
                   *flags]
    else:
        command = [sys.executable, "train.py", *flags]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def read_jsonl(path):
    with open(path) as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), f"torn last line in {path}"
    return [json.loads(line) for line in text.splitlines()]


def saved_state(run_dir, config):
    """Restore the newest checkpoint into a fresh trainer; return it and its prefix."""
    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    trainer = training.Trainer(config, strategy)
    trainer.restore(prefix)
    return trainer, prefix


@pytest.mark.parametrize("point, count, expected_nimg", [
    ("step", 5, 32),         # killed after step 5 (nimg 40): ticks 1-2 and ckpt-32 are saved
    ("checkpoint", 2, 32),   # killed while saving ckpt-64: ckpt-32 stays the newest
    # Grids are written as 3 PNGs (one per scale): 6 at the start (reals and fakes), 3 at
    # tick 2, so the 10th rename is the first grid of tick 4, before ckpt-64 is saved.
    ("image", 10, 32),
])
def test_kill_and_resume(emoji_dataset, tmp_path, point, count, expected_nimg):
    run_dir = tmp_path / "run"
    killed = run_training(emoji_dataset, run_dir, TOTAL_KIMG, fault=[point, str(count)])
    assert killed.returncode == -9, killed.stderr[-3000:]

    # The newest complete checkpoint loads and contains what the run had saved.
    config = TrainingConfig(dataset=emoji_dataset, resolution=16, num_channels=3,
                            channel_base=128, channel_max=16, latent_size=16, batch_size=8)
    trainer, prefix = saved_state(str(run_dir), config)
    assert prefix.endswith(f"ckpt-{expected_nimg}")
    assert int(trainer.cur_nimg.numpy()) == expected_nimg
    assert int(trainer.G_opt.iterations.numpy()) == expected_nimg // 8
    ema_saved = [v.numpy() for v in trainer.G_ema.weights]
    assert not np.allclose(ema_saved[0], trainer.G.weights[0].numpy())

    # Logs written so far have no torn lines, and every PNG under its final name is whole.
    read_jsonl(run_dir / "stats.jsonl")
    for path in glob.glob(str(run_dir / "metric-*.jsonl")):
        read_jsonl(path)
    for path in glob.glob(str(run_dir / "*.png")):
        with Image.open(path) as image:
            image.load()

    resumed = run_training(emoji_dataset, run_dir, TOTAL_KIMG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {prefix} at kimg {expected_nimg / 1000:.3f}" in resumed.stderr
    stats = read_jsonl(run_dir / "stats.jsonl")
    assert [row["tick"] for row in stats] == [1, 2, 3, 4, 5, 6]
    assert stats[-1]["kimg"] == pytest.approx(TOTAL_KIMG)
    metric_lines = read_jsonl(run_dir / "metric-swd16.jsonl")
    assert metric_lines[-1]["kimg"] == pytest.approx(TOTAL_KIMG)
    assert not glob.glob(str(run_dir / "*.tmp"))

    # The resumed run started from the saved optimizer state: 12 steps in all.
    final, _ = saved_state(str(run_dir), config)
    assert int(final.G_opt.iterations.numpy()) == TOTAL_KIMG * 1000 // 8
