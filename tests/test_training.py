import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from msg_tf import dataset as dataset_lib
from msg_tf import training
from msg_tf.config import ConfigError, TrainingConfig, validate
from msg_tf.tfrecord_format import DatasetError
from tests.conftest import REPO_ROOT

SMALL = dict(resolution=16, channel_base=128, channel_max=16, latent_size=16, batch_size=8,
             tick_kimg=0.016, image_snapshot_ticks=2, network_snapshot_ticks=2,
             total_kimg=0.064, seed=7)


def small_config(dataset, tmp_path, **overrides):
    options = {**SMALL, "run_dir": str(tmp_path / "run"), **overrides}
    return TrainingConfig(dataset=dataset, **options)


# Several collective-op strategies in one process can mix up their collective keys, so
# the tests reduce through one device, which every strategy instance does independently.
def one_replica():
    return tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def two_replicas():
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def make_trainer(config, strategy, dataset):
    info = dataset_lib.inspect_dataset(dataset)
    config = training.resolve_config(config, info)
    keras.utils.set_random_seed(config.seed)
    return training.Trainer(config, strategy), info, config


@pytest.mark.parametrize("loss", ["ns_r1", "hinge"])
def test_two_replicas_match_one(emoji_dataset, tmp_path, loss):
    # Adam's first step with epsilon 1e-8 is lr * sign(gradient): a gradient within
    # rounding of zero would flip by 2 * lr between summation orders. A larger epsilon
    # keeps the update linear in such gradients, so rounding stays rounding.
    config = small_config(emoji_dataset, tmp_path, loss=loss, adam_epsilon=1e-3)
    single, info, config = make_trainer(config, one_replica(), emoji_dataset)
    double, _, _ = make_trainer(config, two_replicas(), emoji_dataset)
    for model in ("G", "D", "G_ema"):
        for a, b in zip(getattr(single, model).weights, getattr(double, model).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

    ds = dataset_lib.make_dataset(info, 16, 8, shuffle=False)
    reals = next(iter(ds))
    stats_single = single.train_step(reals, 0)
    half = 4

    def replica_slice(context):
        start = context.replica_id_in_sync_group * half
        return tuple(image[start:start + half] for image in reals)

    distributed = double.strategy.experimental_distribute_values_from_function(replica_slice)
    stats_double = double.train_step(distributed, 0)

    assert set(stats_single) == set(stats_double)
    for key in stats_single:
        np.testing.assert_allclose(float(stats_double[key]), float(stats_single[key]),
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    for model in ("G", "D", "G_ema"):
        for a, b in zip(getattr(single, model).weights, getattr(double, model).weights):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{model} {a.path}")
    # The step changed the weights, so the comparison above is not trivially true.
    before = make_trainer(config, one_replica(), emoji_dataset)[0]
    moved = [np.abs(a.numpy() - b.numpy()).max()
             for a, b in zip(single.D.weights, before.D.weights)]
    assert max(moved) > 1e-4


def test_ema_half_life():
    config = TrainingConfig(dataset="", batch_size=32, ema_kimg=10.0)
    beta = training.ema_beta(config, cur_nimg=123_456)
    steps_per_half_life = 10_000 / 32
    assert beta ** steps_per_half_life == pytest.approx(0.5, rel=1e-9)


def test_ema_rampup_caps_half_life():
    config = TrainingConfig(dataset="", batch_size=32, ema_kimg=10.0, ema_rampup=0.05)
    # After 40,000 images the half-life is 0.05 * 40,000 = 2,000 images = 62.5 steps.
    beta = training.ema_beta(config, cur_nimg=40_000)
    assert beta ** (2_000 / 32) == pytest.approx(0.5, rel=1e-9)
    # Past 200,000 images the fixed half-life of 10 kimg applies again.
    assert training.ema_beta(config, cur_nimg=400_000) == training.ema_beta(
        dataclasses.replace(config, ema_rampup=0.0), cur_nimg=0)


def test_batch_not_divisible_by_replicas(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, batch_size=7, mbstd_group_size=0)
    with pytest.raises(ConfigError, match=r"--batch_size=7 is not divisible by the 2 replicas.*multiple of 2"):
        training.train(config, two_replicas())


def test_batch_not_divisible_by_group(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, batch_size=12)
    with pytest.raises(ConfigError, match=r"batch per replica \(12 / 2 replicas = 6\) is not "
                                          r"divisible by --mbstd_group_size=4.*multiple of 8"):
        training.train(config, two_replicas())


def test_dataset_below_model_resolution(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, resolution=64)
    with pytest.raises(DatasetError, match=r"goes up to 32x32, below the model resolution 64"):
        training.train(config, one_replica())


def test_missing_dataset(tmp_path):
    config = small_config(str(tmp_path / "nowhere"), tmp_path)
    with pytest.raises(DatasetError, match="nowhere"):
        training.train(config, one_replica())


@pytest.mark.parametrize("flag, value, message", [
    ("loss", "wgan", r"invalid --loss='wgan': expected one of wgan_gp, ns_r1"),
    ("combine", "add", r"invalid --combine='add': expected one of simple, lin_cat, cat_lin"),
    ("resolution", 48, r"invalid --resolution=48: expected a power of two"),
    ("batch_size", 0, r"invalid --batch_size=0: expected a positive number"),
])
def test_invalid_options(flag, value, message):
    config = TrainingConfig(dataset="x", **{flag: value})
    with pytest.raises(ConfigError, match=message):
        validate(config)


def all_variables(trainer):
    return {f"{owner}/{variable.path}": variable
            for owner, variables in [("G", trainer.G.weights), ("D", trainer.D.weights),
                                     ("G_ema", trainer.G_ema.weights),
                                     ("G_opt", trainer.G_opt.variables),
                                     ("D_opt", trainer.D_opt.variables)]
            for variable in variables}


def test_truncate_stats_drops_later_and_torn_lines(tmp_path):
    from msg_tf import reporting
    rows = [{"tick": 1, "kimg": 1.0}, {"tick": 2, "kimg": 2.0}, {"tick": 3, "kimg": 3.0}]
    text = "".join(json.dumps(row) + "\n" for row in rows) + '{"tick": 4, "ki'
    (tmp_path / "stats.jsonl").write_text(text)
    assert reporting.truncate_stats(str(tmp_path), 2.0) == 2
    assert [row["tick"] for row in read_stats(tmp_path)] == [1, 2]


def read_stats(run_dir):
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_writes_run_dir_and_resumes(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path)
    run_dir = training.train(config, one_replica())
    files = set(os.listdir(run_dir))
    for res in (4, 8, 16):
        assert f"reals-{res}x{res}.png" in files
        assert f"fakes000000-{res}x{res}.png" in files
    assert any(name.startswith("events.out.tfevents") for name in files)
    assert {"log.txt", "training_options.json", "stats.jsonl", "checkpoints"} <= files
    stats = read_stats(run_dir)
    assert [row["tick"] for row in stats] == [1, 2, 3, 4]
    assert stats[-1]["kimg"] == pytest.approx(0.064)
    assert all(np.isfinite(row["Loss/D"]) and np.isfinite(row["Loss/G"]) for row in stats)

    # Restore the saved state into a fresh trainer to compare with the resumed run.
    saved, _, _ = make_trainer(config, one_replica(), emoji_dataset)
    fresh_values = {key: variable.numpy() for key, variable in all_variables(saved).items()}
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert latest.endswith("ckpt-64")
    saved.checkpoint.restore(latest).assert_consumed()
    assert int(saved.cur_nimg.numpy()) == 64
    assert int(saved.G_opt.iterations.numpy()) == 8
    # Every variable of every model and optimizer came from the checkpoint, none kept its
    # fresh initial value (the learning rate and the frozen constant noise excepted).
    unchanged = [key for key, variable in all_variables(saved).items()
                 if np.array_equal(variable.numpy(), fresh_values[key])
                 and not key.endswith("learning_rate")]
    assert unchanged == []

    resumed = dataclasses.replace(config, total_kimg=0.096)
    training.train(resumed, one_replica())
    stats = read_stats(run_dir)
    assert [row["tick"] for row in stats] == [1, 2, 3, 4, 5, 6]
    assert stats[-1]["kimg"] == pytest.approx(0.096)
    with open(os.path.join(run_dir, "log.txt")) as f:
        assert "resumed from" in f.read()
    after, _, _ = make_trainer(config, one_replica(), emoji_dataset)
    after.checkpoint.restore(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    assert int(after.G_opt.iterations.numpy()) == 12
    # One more step on the restored state moves G_ema by the EMA rule from its saved value.
    ema_before = [v.numpy() for v in saved.G_ema.weights]
    info = dataset_lib.inspect_dataset(emoji_dataset)
    saved.train_step(next(iter(dataset_lib.make_dataset(info, 16, 8))), 8)
    beta = training.ema_beta(config, 8 * 8)
    for before, ema, g in zip(ema_before, saved.G_ema.weights, saved.G.weights):
        np.testing.assert_allclose(ema.numpy(), g.numpy() + (before - g.numpy()) * beta,
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(saved.G_ema.weights[0].numpy(), saved.G.weights[0].numpy())


def test_same_seed_same_first_steps(emoji_dataset, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = small_config(emoji_dataset, tmp_path / name, total_kimg=0.032,
                              mirror_augment=True)
        runs.append(read_stats(training.train(config, one_replica())))
    for first, second in zip(*runs):
        for key in ("Loss/D", "Loss/G", "D/gp", "D/real_score"):
            assert first[key] == pytest.approx(second[key], rel=1e-5, abs=1e-6), key
    other = small_config(emoji_dataset, tmp_path / "c", total_kimg=0.032, seed=8)
    assert read_stats(training.train(other, one_replica()))[0]["Loss/D"] != runs[0][0]["Loss/D"]


def test_resume_rejects_changed_architecture(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.016)
    training.train(config, one_replica())
    changed = dataclasses.replace(config, channel_max=32, combine="cat_lin")
    with pytest.raises(ConfigError, match=r"--channel_max: saved 16, now 32; --combine: "
                                          r"saved 'simple', now 'cat_lin'"):
        training.train(changed, one_replica())


def test_non_finite_loss_stops_and_keeps_checkpoint(emoji_dataset, tmp_path, monkeypatch):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.032)
    run_dir = training.train(config, one_replica())
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    before = sorted(os.listdir(checkpoint_dir))

    real_loss = training.losses.generator_loss

    def diverging_loss(*args, **kwargs):
        per_sample, terms = real_loss(*args, **kwargs)
        return per_sample * float("nan"), terms

    monkeypatch.setattr(training.losses, "generator_loss", diverging_loss)
    longer = dataclasses.replace(config, total_kimg=0.064)
    with pytest.raises(training.TrainingDivergedError,
                       match=r"non-finite loss at step 4 \(kimg 0.032\).*Loss/G=nan.*"
                             r"last good checkpoint is .*ckpt-32"):
        training.train(longer, one_replica())
    assert sorted(os.listdir(checkpoint_dir)) == before


def test_on_nan_rollback_halves_lr(emoji_dataset, tmp_path, monkeypatch):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.048, network_snapshot_ticks=1,
                          on_nan="rollback")
    calls = tf.Variable(0, dtype=tf.int64)
    real_loss = training.losses.generator_loss

    def loss_diverging_once(*args, **kwargs):
        per_sample, terms = real_loss(*args, **kwargs)
        calls.assign_add(1)
        # The fourth G step (step 3, after the checkpoint at step 2) gives NaN.
        poison = tf.where(calls == 4, float("nan"), 1.0)
        return per_sample * poison, terms

    monkeypatch.setattr(training.losses, "generator_loss", loss_diverging_once)
    run_dir = training.train(config, one_replica())
    with open(os.path.join(run_dir, "log.txt")) as f:
        log = f.read()
    assert "non-finite loss at step 3 (kimg 0.024): Loss/G=nan; rolled back to" in log
    assert "ckpt-16 (kimg 0.016) with learning rate 0.0015" in log
    ticks = [row["tick"] for row in read_stats(run_dir)]
    assert ticks == [1, 2, 3]
    trainer, _, _ = make_trainer(config, one_replica(), emoji_dataset)
    trainer.restore(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    assert float(trainer.lr_scale.numpy()) == 0.5
    assert float(trainer.G_opt.learning_rate.numpy()) == pytest.approx(0.0015)


def test_resume_uses_new_lr(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.016)
    run_dir = training.train(config, one_replica())
    trainer, _, _ = make_trainer(dataclasses.replace(config, lr=0.001), one_replica(),
                                 emoji_dataset)
    trainer.restore(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    assert float(trainer.D_opt.learning_rate.numpy()) == pytest.approx(0.001)


def test_metrics_and_stability_during_training(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.048, image_snapshot_ticks=1,
                          network_snapshot_ticks=1, metrics=("swd64",), metric_ticks=2)
    run_dir = training.train(config, one_replica())
    with open(os.path.join(run_dir, "metric-swd64.jsonl")) as f:
        records = [json.loads(line) for line in f]
    # Ticks 2 and 3: every second tick and the last one.
    assert [record["kimg"] for record in records] == [0.032, 0.048]
    for record in records:
        assert record["metric"] == "swd64"
        assert np.isfinite(record["value"])
        assert record["value"] > 0
        assert record["snapshot"].endswith(f"ckpt-{int(record['kimg'] * 1000)}")
    stats = read_stats(run_dir)
    for row in stats:
        for res in (4, 8, 16):
            assert row[f"stability/mse_{res}x{res}"] > 0
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(run_dir)
    events.Reload()
    assert "Metrics/swd64" in events.Tags()["tensors"] or "Metrics/swd64" in events.Tags()["scalars"]


@pytest.mark.parametrize("names, message", [
    (("fid10", "sdw1k"), r"invalid --metrics=fid10,sdw1k: .*sdw1k"),
])
def test_invalid_metric_names(names, message, emoji_dataset):
    with pytest.raises(ConfigError, match=message):
        validate(TrainingConfig(dataset=emoji_dataset, metrics=names))


def test_fid_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("MSG_TF_INCEPTION_WEIGHTS", str(tmp_path / "none.weights.h5"))
    monkeypatch.setenv("HOME", str(tmp_path))
    config = TrainingConfig(dataset="x", metrics=("fid1k",),
                            inception_weights=str(tmp_path / "absent.weights.h5"))
    with pytest.raises(ConfigError, match=r"invalid --metrics=fid1k: .*absent.weights.h5"):
        validate(config)


def test_keep_checkpoints_and_milestones(emoji_dataset, tmp_path):
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.096, network_snapshot_ticks=1,
                          keep_checkpoints=2, milestone_kimg=0.04)
    run_dir = training.train(config, one_replica())
    kept = sorted(name for name in os.listdir(os.path.join(run_dir, "checkpoints"))
                  if name.endswith(".index"))
    assert kept == ["ckpt-80.index", "ckpt-96.index"]
    milestones = sorted(name for name in os.listdir(os.path.join(run_dir, "milestones"))
                        if name.endswith(".index"))
    # The first checkpoints past 40 and 80 images.
    assert milestones == ["ckpt-48.index", "ckpt-80.index"]
    trainer, _, _ = make_trainer(config, one_replica(), emoji_dataset)
    trainer.restore(os.path.join(run_dir, "milestones", "ckpt-48"))
    assert int(trainer.cur_nimg.numpy()) == 48


def test_full_disk_stops_before_writing(emoji_dataset, tmp_path, monkeypatch):
    import shutil
    config = small_config(emoji_dataset, tmp_path, total_kimg=0.032)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(training.shutil, "disk_usage",
                        lambda path: usage._replace(free=10 << 20))
    with pytest.raises(training.DiskSpaceError,
                       match=r"only 10 MiB free on the disk of .*run, but the next snapshot "
                             r"needs about 6\d MiB"):
        training.train(config, one_replica())
    assert not os.path.exists(os.path.join(config.run_dir, "checkpoints"))


def test_sigkill_then_rerun_resumes(emoji_dataset, tmp_path):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "train.py", f"--dataset={emoji_dataset}", f"--run_dir={run_dir}",
               "--resolution=16", "--channel_base=128", "--channel_max=16", "--latent_size=16",
               "--batch_size=8", "--tick_kimg=0.016", "--network_snapshot_ticks=2",
               "--image_snapshot_ticks=100", "--total_kimg=50"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if len(read_stats(run_dir)) >= 3 if (run_dir / "stats.jsonl").exists() else False:
                break
            time.sleep(0.5)
        else:
            pytest.fail("training wrote no 3 ticks within 240 s")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    saved_nimg = int(latest.rsplit("-", 1)[1])
    assert saved_nimg >= 32

    rerun = command[:-1] + [f"--total_kimg={(saved_nimg + 16) / 1000}"]
    result = subprocess.run(rerun, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {latest} at kimg {saved_nimg / 1000:.3f}" in result.stderr
    assert read_stats(run_dir)[-1]["kimg"] == pytest.approx((saved_nimg + 16) / 1000)
    ticks = [row["tick"] for row in read_stats(run_dir)]
    assert ticks == list(range(1, len(ticks) + 1))
