"""Multi-worker training: two train.py processes on loopback ports of this machine."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from msg_tf import training
from msg_tf.config import ConfigError
from tests.conftest import REPO_ROOT
from tests.test_training import make_trainer, read_stats, small_config, two_replicas

DIGEST = re.compile(r"weights digest \(G, D, G_ema\): ([0-9a-f]{64})")
WORKER_TIMEOUT_SEC = 300


def free_ports(count):
    """Return `count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def train_flags(dataset, run_dir, total_kimg):
    return [f"--dataset={dataset}", f"--run_dir={run_dir}", "--resolution=16",
            "--channel_base=128", "--channel_max=16", "--latent_size=16", "--batch_size=8",
            "--tick_kimg=0.016", "--image_snapshot_ticks=2", "--network_snapshot_ticks=2",
            f"--total_kimg={total_kimg}", "--seed=7"]


def worker_env(cluster, index):
    """Return the environment of worker `index` of `cluster`, a TF_CONFIG cluster dict."""
    tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    return {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_alone(flags, index):
    """Run worker `index` of a two-worker cluster whose other worker never starts."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    return subprocess.run([sys.executable, "train.py", *flags], cwd=REPO_ROOT,
                          env=worker_env(cluster, index), capture_output=True, text=True,
                          timeout=120)


def run_workers(flags, count):
    """Run `count` train.py workers under one TF_CONFIG; return their stderr texts."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(count)]}
    processes = []
    for index in range(count):
        env = worker_env(cluster, index)
        processes.append(subprocess.Popen(
            [sys.executable, "train.py", *flags], cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=WORKER_TIMEOUT_SEC)
            outputs.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, (returncode, stderr) in enumerate(outputs):
        assert returncode == 0, f"worker {index} failed:\n{stderr[-3000:]}"
    return [stderr for _, stderr in outputs]


def test_two_workers_train_and_resume(emoji_dataset, tmp_path):
    run_dir = tmp_path / "run"
    logs = run_workers(train_flags(emoji_dataset, run_dir, 0.064), 2)

    assert "this is worker 0 of the cluster" in logs[0]
    assert "(chief: writes the run directory)" in logs[0]
    assert "(chief: writes the run directory)" not in logs[1]
    assert "2 replica(s)" in logs[0]
    digests = [DIGEST.findall(log) for log in logs]
    assert len(digests[0]) == 1
    assert len(digests[1]) == 1
    assert digests[0] == digests[1], "the workers' weights differ after training"

    # Only the chief wrote: one stats line per tick, one log file, its checkpoints.
    ticks = [row["tick"] for row in read_stats(run_dir)]
    assert ticks == [1, 2, 3, 4]
    assert (run_dir / "log.txt").exists()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-64")

    # The chief's checkpoint restores on one worker with two replicas, bit for bit.
    config = small_config(emoji_dataset, tmp_path)
    trainer, _, _ = make_trainer(config, two_replicas(), emoji_dataset)
    trainer.restore(latest)
    assert training.weights_digest(trainer) == digests[0][0]
    assert int(trainer.cur_nimg.numpy()) == 64

    # Training continues from it with a different worker count.
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.096)
    training.train(config, two_replicas())
    assert [row["tick"] for row in read_stats(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert "resumed from" in (run_dir / "log.txt").read_text()


def test_multiworker_needs_run_dir(emoji_dataset, tmp_path):
    flags = [f for f in train_flags(emoji_dataset, tmp_path / "unused", 0.016)
             if not f.startswith("--run_dir")]
    result = run_alone([*flags, f"--result_dir={tmp_path / 'results'}"], 1)
    assert result.returncode == 1
    assert "multi-worker training needs --run_dir" in result.stderr
    assert not (tmp_path / "results").exists()


def test_lone_worker_times_out(emoji_dataset, tmp_path):
    flags = train_flags(emoji_dataset, tmp_path / "run", 0.016)
    result = run_alone([*flags, "--worker_connect_timeout=5"], 0)
    assert result.returncode == 1
    assert "waiting up to 5 s for the 2 workers named in TF_CONFIG" in result.stderr
    assert "Timeout (0:00:05)!" in result.stderr
    assert "in make_strategy" in result.stderr
    assert not (tmp_path / "run").exists()


def test_batch_checked_against_workers_first(emoji_dataset, tmp_path):
    flags = train_flags(emoji_dataset, tmp_path / "run", 0.016) + ["--batch_size=15",
                                                                   "--mbstd_group_size=0"]
    result = run_alone(flags, 0)
    assert result.returncode == 1
    assert ("--batch_size=15 is not divisible by the 2 workers named in TF_CONFIG"
            in result.stderr)
    assert "waiting up to" not in result.stderr


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG needs a "cluster" object'),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
     '"task": {"type": "worker", "index": 2}}', "does not name one of the cluster's workers"),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
     '"task": {"type": "ps", "index": 0}}', "does not name one of the cluster's workers"),
])
def test_bad_tf_config_rejected(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=re.escape(message)):
        training.make_strategy()


def test_single_worker_tf_config_uses_mirrored(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}))
    strategy = training.make_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert training.is_chief(strategy)
