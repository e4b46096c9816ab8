"""MSG-GAN training: distributed D and G steps, EMA generator, checkpoints and the loop."""

import contextlib
import dataclasses
import faulthandler
import hashlib
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from msg_tf import dataset as dataset_lib
from msg_tf import losses, reporting
from msg_tf.config import ARCHITECTURE_KEYS, ConfigError, TrainingConfig, check_batch_size
from networks import MsgDiscriminator, MsgProGanGenerator, MsgStyleGanGenerator

CHECKPOINT_DIR = "checkpoints"
# Milestone checkpoints (--milestone_kimg) are kept here and never deleted.
MILESTONE_DIR = "milestones"
# --on_nan=rollback gives up after this many rollbacks in one process.
MAX_ROLLBACKS = 3


class DiskSpaceError(RuntimeError):
    """Too little free disk space for the next snapshot; nothing was written."""


# Room kept free beyond one checkpoint, for image grids, logs and the file system.
DISK_MARGIN_BYTES = 64 << 20


def check_disk_space(run_dir: str, needed_bytes: int) -> None:
    """Raise DiskSpaceError unless the run directory's disk has room for a snapshot."""
    free = shutil.disk_usage(run_dir).free
    needed = needed_bytes + DISK_MARGIN_BYTES
    if free < needed:
        raise DiskSpaceError(
            f"only {free / 2**20:.0f} MiB free on the disk of {run_dir}, but the next "
            f"snapshot needs about {needed / 2**20:.0f} MiB (checkpoint plus "
            f"{DISK_MARGIN_BYTES >> 20} MiB margin). Free some space or lower "
            "--keep_checkpoints, then rerun the same command to resume from the last "
            "checkpoint.")


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the step and the last checkpoint."""


def build_generator(config: TrainingConfig, name: str = "G") -> keras.Model:
    if config.arch == "progan":
        G = MsgProGanGenerator(config.resolution, latent_size=config.latent_size,
                               num_channels=config.num_channels,
                               channel_base=config.channel_base,
                               channel_max=config.channel_max, name=name)
    elif config.arch == "stylegan":
        G = MsgStyleGanGenerator(config.resolution, latent_size=config.latent_size,
                                 num_channels=config.num_channels,
                                 channel_base=config.channel_base,
                                 channel_max=config.channel_max,
                                 mapping_depth=config.mapping_depth,
                                 mapping_width=config.mapping_width,
                                 mapping_lr_multiplier=config.mapping_lr_multiplier,
                                 blur=config.blur, name=name)
    else:
        raise ConfigError(f"invalid --arch={config.arch!r}")
    G(tf.zeros([1, config.latent_size]))  # create the variables
    return G


def build_discriminator(config: TrainingConfig) -> keras.Model:
    D = MsgDiscriminator(config.resolution, num_channels=config.num_channels,
                         channel_base=config.channel_base, channel_max=config.channel_max,
                         combine=config.combine, mbstd_group_size=config.mbstd_group_size,
                         name="D")
    group = max(config.mbstd_group_size, 1)
    D([tf.zeros([group, res, res, config.num_channels]) for res in D.scales])
    return D


def make_optimizer(config: TrainingConfig) -> keras.optimizers.Optimizer:
    """Return Adam or RMSprop; under float16 wrapped in dynamic loss scaling."""
    if config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate=config.lr,
                                             epsilon=config.adam_epsilon)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=config.lr, beta_1=config.adam_beta1,
                                          beta_2=config.adam_beta2,
                                          epsilon=config.adam_epsilon)
    if config.mixed_precision == "float16":
        # Scales the loss up before backpropagation so that small float16 gradients do
        # not flush to zero, and skips a step whose gradients overflow.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Return the optimizer inside a LossScaleOptimizer, or the optimizer itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


# The Keras dtype policy of G and D for each --mixed_precision value. Variables stay
# float32 under every policy; only the layers' computations change type.
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
                  "float16": "mixed_float16"}


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build layers under the Keras dtype policy `name`, then restore the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def ema_beta(config: TrainingConfig, cur_nimg: int) -> float:
    """Return the per-step EMA decay for a half-life of `ema_kimg` thousand images.

    With `ema_rampup`, the half-life is at most `ema_rampup * cur_nimg` images, so the
    random initial weights leave the average within the first few kimg. Without it,
    G_ema is still half initial weights after `ema_kimg`, which makes short runs' grids
    look like noise at the coarse scales.
    """
    ema_nimg = config.ema_kimg * 1000.0
    if config.ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * config.ema_rampup)
    return 0.5 ** (config.batch_size / max(ema_nimg, 1e-8))


def variables_by_path(variables) -> dict:
    """Key variables by their Keras path without the owner's name ("b8_conv0/kernel").

    The checkpoint lists every variable explicitly: tf.train.Checkpoint does not follow
    Keras 3's tracked lists of layers, so saving the models as objects would silently
    drop every layer kept in a list.
    """
    keyed = {}
    for variable in variables:
        key = variable.path.split("/", 1)[-1]
        if key in keyed:
            raise ValueError(f"two variables share the checkpoint key {key!r}")
        keyed[key] = variable
    return keyed


class Trainer:
    """Own the models, optimizers, checkpoint and compiled training step of one run.

    Everything is created inside `strategy.scope()`, optimizers included: Keras 3
    optimizers must build their slot variables there before the first `tf.function`
    step, or MirroredStrategy cannot mirror them.
    """

    def __init__(self, config: TrainingConfig, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        self.batch_per_replica = check_batch_size(config, self.num_replicas)
        self.loss_config = losses.LossConfig(name=config.loss, gp_weight=config.gp_weight,
                                             drift_weight=config.drift_weight,
                                             r1_gamma=config.r1_gamma)
        with strategy.scope():
            # G_ema stays float32: it only runs for snapshots and metrics, where full
            # precision costs little and keeps the images comparable between runs.
            with dtype_policy(DTYPE_POLICIES[config.mixed_precision]):
                self.G = build_generator(config, "G")
                self.D = build_discriminator(config)
            self.G_ema = build_generator(config, "G_ema")
            for ema_var, var in zip(self.G_ema.weights, self.G.weights):
                ema_var.assign(var)
            self.G_opt = make_optimizer(config)
            self.D_opt = make_optimizer(config)
            self.G_opt.build(self.G.trainable_variables)
            self.D_opt.build(self.D.trainable_variables)
            self.cur_nimg = tf.Variable(0, dtype=tf.int64, trainable=False, name="cur_nimg")
            self.cur_tick = tf.Variable(0, dtype=tf.int64, trainable=False, name="cur_tick")
            # Halved by each --on_nan=rollback; the learning rate is lr * lr_scale.
            self.lr_scale = tf.Variable(1.0, dtype=tf.float64, trainable=False,
                                        name="lr_scale")
        self.checkpoint = tf.train.Checkpoint(
            G=variables_by_path(self.G.weights), D=variables_by_path(self.D.weights),
            G_ema=variables_by_path(self.G_ema.weights),
            # NOTE: float16's dynamic loss scale is not saved, so a run resumed under
            # --mixed_precision=float16 starts it again at its initial value. This keeps
            # checkpoints of all three precisions interchangeable.
            G_opt=variables_by_path(inner_optimizer(self.G_opt).variables),
            D_opt=variables_by_path(inner_optimizer(self.D_opt).variables),
            cur_nimg=self.cur_nimg, cur_tick=self.cur_tick, lr_scale=self.lr_scale)
        self.is_stylegan = config.arch == "stylegan"
        # With --xla the forward and backward passes of each step compile with XLA.
        # The optimizer updates stay outside the compiled functions, because under a
        # distribution strategy they all-reduce the gradients across replicas, and XLA
        # cannot compile that call.
        self._d_step_fn = tf.function(self._d_step_gradients, jit_compile=config.xla)
        self._g_step_fn = tf.function(self._g_step_gradients, jit_compile=config.xla)
        # With --reuse_fakes both steps draw the same latents (purpose 1).
        self._d_latent_purpose = 1 if config.reuse_fakes else 0
        self._train_step = tf.function(self._distributed_step)
        # Snapshots use the stored noise images of MSG-StyleGAN, so grids of the same
        # latents differ between snapshots only because the weights changed.
        if self.is_stylegan:
            self._generate = tf.function(lambda z: self.G_ema(z, noise_mode="const"))
        else:
            self._generate = tf.function(lambda z: self.G_ema(z, training=False))

    # Latents are drawn for the whole global batch from (seed, step, purpose) and each
    # replica takes its slice, so one replica and N replicas see the same latents.
    def _latents(self, step, purpose):
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), step * 2 + purpose])
        z = tf.random.stateless_normal([self.config.batch_size, self.config.latent_size],
                                       seed=seed)
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        start = replica * self.batch_per_replica
        return z[start:start + self.batch_per_replica]

    def _mean(self, per_sample):
        return tf.nn.compute_average_loss(per_sample,
                                          global_batch_size=self.config.batch_size)

    def _d_gradients(self, reals, fakes):
        """Return D's gradients and per-replica stats for one D step on `fakes`."""
        with tf.GradientTape() as tape:
            per_sample, terms = losses.discriminator_loss(self.loss_config, self.D, reals, fakes)
            d_loss = self._mean(per_sample)
            scaled_loss = self._scale_loss(self.D_opt, d_loss)
        grads = tape.gradient(scaled_loss, self.D.trainable_variables)
        stats = {"Loss/D": d_loss}
        stats.update({key: self._mean(value) for key, value in terms.items()})
        return grads, stats

    def _d_step_gradients(self, reals, z):
        """Generate the D step's fakes from latents `z`, then return D's gradients and
        stats."""
        # The D step needs no gradient through G, so G runs outside D's tape.
        fakes, _ = self._run_generator(z)
        return self._d_gradients(reals, fakes)

    def _g_loss(self, reals, fakes):
        per_sample, terms = losses.generator_loss(self.loss_config, self.D, reals, fakes)
        g_loss = self._mean(per_sample)
        stats = {"Loss/G": g_loss}
        stats.update({key: self._mean(value) for key, value in terms.items()})
        return g_loss, stats

    def _g_step_gradients(self, reals, z):
        """Return G's gradients, per-replica stats and the StyleGAN w mean (or None)."""
        with tf.GradientTape() as tape:
            fakes, w_mean = self._run_generator(z)
            g_loss, stats = self._g_loss(reals, fakes)
            scaled_loss = self._scale_loss(self.G_opt, g_loss)
        grads = tape.gradient(scaled_loss, self.G.trainable_variables)
        return grads, stats, w_mean

    @staticmethod
    def _scale_loss(optimizer, loss):
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return optimizer.scale_loss(loss)
        return loss

    def _replica_step(self, reals, step):
        reals = list(reals)
        if self.config.reuse_fakes and not self.config.xla:
            return self._replica_step_reusing_fakes(reals, step)
        # The latents are drawn outside the compiled functions: XLA implements the
        # stateless random ops with another algorithm, which would change the latents.
        z = self._latents(step, self._d_latent_purpose)
        grads, stats = self._d_step_fn(reals, z)
        self.D_opt.apply_gradients(zip(grads, self.D.trainable_variables))
        grads, g_stats, w_mean = self._g_step_fn(reals, self._latents(step, 1))
        self.G_opt.apply_gradients(zip(grads, self.G.trainable_variables))
        stats.update(g_stats)
        return stats, w_mean

    def _replica_step_reusing_fakes(self, reals, step):
        """Run one iteration with a single G forward pass, taped for the G step.

        G's weights do not change in the D step, so with the same latents the G step's
        forward pass would only repeat the D step's. The tape keeps its activations
        instead, which saves one G forward pass per iteration.
        """
        with tf.GradientTape() as g_tape:
            fakes, w_mean = self._run_generator(self._latents(step, 1))
            with g_tape.stop_recording():
                grads, stats = self._d_gradients(reals, [tf.stop_gradient(f) for f in fakes])
                self.D_opt.apply_gradients(zip(grads, self.D.trainable_variables))
            # D's variables are read again here, after its update: the G step uses the
            # new D, as in the two-pass step.
            g_loss, g_stats = self._g_loss(reals, fakes)
            scaled_loss = self._scale_loss(self.G_opt, g_loss)
        grads = g_tape.gradient(scaled_loss, self.G.trainable_variables)
        self.G_opt.apply_gradients(zip(grads, self.G.trainable_variables))
        stats.update(g_stats)
        return stats, w_mean

    def _run_generator(self, z):
        """Return (images, this replica's share of the batch mean of w, or None)."""
        if not self.is_stylegan:
            return self.G(z, training=True), None
        ws = self.G.map(z)                                           # [n, num_ws, w_size]
        w_mean = tf.reduce_sum(tf.cast(ws[:, 0], tf.float32), axis=0) / self.config.batch_size
        if self.config.style_mixing_prob > 0:
            ws = self._mix_random_styles(ws, z)
        return self.G.synthesize(ws), w_mean

    def _mix_random_styles(self, ws, z):
        """Style-mixing regularisation: per sample, with probability style_mixing_prob,
        take the style layers from a random cutoff on from a second latent."""
        num_ws = self.G.num_ws
        ws_other = self.G.map(tf.random.normal(tf.shape(z)))
        batch = tf.shape(z)[0]
        cutoff = tf.random.uniform([batch], 1, num_ws, dtype=tf.int32)
        mixed = tf.random.uniform([batch]) < self.config.style_mixing_prob
        cutoff = tf.where(mixed, cutoff, num_ws)
        take_other = tf.range(num_ws)[tf.newaxis, :] >= cutoff[:, tf.newaxis]  # [n, num_ws]
        return tf.where(take_other[:, :, tf.newaxis], ws_other, ws)

    def _distributed_step(self, reals, step, beta):
        per_replica, w_mean = self.strategy.run(self._replica_step, args=(reals, step))
        stats = {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                 for key, value in per_replica.items()}
        if w_mean is not None:
            self.G.update_w_avg(
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, w_mean, axis=None))
        # Trainable weights are averaged; the rest (StyleGAN's w_avg and fixed noise
        # images) are statistics or constants, copied as they are.
        for ema_var, var in zip(self.G_ema.weights, self.G.weights):
            if var.trainable:
                ema_var.assign(var + (ema_var - var) * tf.cast(beta, var.dtype))
            else:
                ema_var.assign(var)
        return stats

    def restore(self, prefix: str) -> None:
        """Restore a checkpoint, then set the learning rate from the options.

        Optimizers checkpoint their learning rate; the current --lr (times the rollback
        scale) replaces it so that a resumed run can change it.
        """
        self.checkpoint.restore(prefix).assert_existing_objects_matched()
        self.restore_learning_rate()

    def restore_learning_rate(self) -> None:
        learning_rate = self.config.lr * float(self.lr_scale.numpy())
        for optimizer in (self.G_opt, self.D_opt):
            optimizer.learning_rate.assign(learning_rate)

    def checkpoint_bytes(self) -> int:
        """Return the size of one checkpoint's tensors in bytes."""
        variables = (self.G.weights + self.D.weights + self.G_ema.weights
                     + self.G_opt.variables + self.D_opt.variables)
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)

    def train_step(self, reals, step: int) -> dict:
        """Run one D step and one G step on a distributed batch; return the mean losses.

        `step` counts iterations from the start of training; it seeds the latents and
        sets the EMA decay.
        """
        beta = ema_beta(self.config, step * self.config.batch_size)
        return self._train_step(reals, tf.constant(step, tf.int64),
                                tf.constant(beta, tf.float32))

    def generate(self, z: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Run G_ema on `z` in chunks; return one array per scale."""
        outputs = None
        for start in range(0, len(z), batch_size):
            images = self._generate(tf.constant(z[start:start + batch_size]))
            images = [image.numpy() for image in images]
            outputs = ([[] for _ in images] if outputs is None else outputs)
            for out, image in zip(outputs, images):
                out.append(image)
        return [np.concatenate(out) for out in outputs]


MULTI_WORKER_RUN_DIR_MESSAGE = (
    "multi-worker training needs --run_dir: every worker must read the same checkpoints "
    "(on a file system they share) to resume")


def read_tf_config() -> tuple[int, dict]:
    """Return the number of workers that TF_CONFIG names and this process's task.

    Returns (0, {}) when TF_CONFIG is unset.

    Raises ConfigError for a TF_CONFIG that is not JSON or does not name this
    process's place in the cluster.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return 0, {}
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}") from error
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(
            "TF_CONFIG needs a \"cluster\" object listing the workers and a \"task\" "
            'object naming this process, e.g. {"cluster": {"worker": ["host1:12345", '
            f'"host2:12345"]}}, "task": {{"type": "worker", "index": 0}}}}; got {raw!r}')
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task_type, index = task.get("type"), task.get("index")
    if workers > 1 and (task_type not in ("worker", "chief") or not isinstance(index, int)
                        or not 0 <= index < len(cluster.get(task_type, []))):
        raise ConfigError(
            f"TF_CONFIG task {task!r} does not name one of the cluster's workers "
            f"{cluster!r}: set \"type\" to \"worker\" (or \"chief\") and \"index\" to "
            "this process's position in that list")
    return workers, task


def make_strategy(connect_timeout_sec: float = 600.0) -> tf.distribute.Strategy:
    """Return MultiWorkerMirroredStrategy if TF_CONFIG names several workers, else
    MirroredStrategy over this machine's devices.

    Must run before any other TensorFlow op, because the multi-worker strategy
    configures the collective ops of the runtime when it is created. Creating it waits
    until every worker has connected. If that takes longer than `connect_timeout_sec`,
    the process exits with status 1, because TensorFlow ignores SIGTERM while it waits.
    """
    workers, task = read_tf_config()
    if workers <= 1:
        return tf.distribute.MirroredStrategy()
    logging.info("waiting up to %.0f s for the %d workers named in TF_CONFIG to connect; "
                 "this is %s %d. If they have not all connected by then, this process "
                 "prints a stack dump and exits with status 1: start train.py with the same "
                 "flags on every worker listed, check their addresses and ports, or raise "
                 "--worker_connect_timeout", connect_timeout_sec, workers, task["type"],
                 task["index"])
    # faulthandler's watchdog is a C thread: TensorFlow holds the GIL while it waits for
    # the workers, so a Python thread or signal handler would never run.
    faulthandler.dump_traceback_later(connect_timeout_sec, exit=True)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        faulthandler.cancel_dump_traceback_later()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Return whether this process writes the run directory (always, with one worker)."""
    return bool(strategy.extended.should_checkpoint)


def weights_digest(trainer: "Trainer") -> str:
    """Return a SHA-256 of G's, D's and G_ema's weights, to compare replicas and runs."""
    digest = hashlib.sha256()
    for model in (trainer.G, trainer.D, trainer.G_ema):
        for variable in model.weights:
            digest.update(variable.path.encode())
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def resolve_config(config: TrainingConfig, info: dataset_lib.DatasetInfo) -> TrainingConfig:
    """Fill in the options that default to the dataset's values and check them."""
    resolution = config.resolution or info.max_resolution
    dataset_lib.check_resolution(info, resolution)
    if config.num_channels and config.num_channels != info.num_channels:
        raise ConfigError(f"--num_channels={config.num_channels} differs from the "
                          f"dataset's {info.num_channels} channels ({info.path})")
    description = config.description or (
        f"{os.path.basename(os.path.normpath(info.path))}-{config.arch}-{resolution}-"
        f"{config.loss}-{config.combine}")
    return dataclasses.replace(config, resolution=resolution,
                               num_channels=info.num_channels, description=description)


def check_resume_compatible(run_dir: str, config: TrainingConfig) -> None:
    path = os.path.join(run_dir, reporting.OPTIONS_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    differing = [f"--{key}: saved {saved.get(key)!r}, now {getattr(config, key)!r}"
                 for key in ARCHITECTURE_KEYS if saved.get(key) != getattr(config, key)]
    if differing:
        raise ConfigError(
            f"cannot resume the run in {run_dir} because these options differ from the "
            f"saved ones: {'; '.join(differing)}. Use the saved values or a new --run_dir")


def library_versions() -> dict:
    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__}


def train(config: TrainingConfig, strategy: tf.distribute.Strategy | None = None) -> str:
    """Train, or resume, one run; return its run directory.

    Raises ConfigError or DatasetError for user errors and TrainingDivergedError when a
    loss becomes non-finite.
    """
    # log.txt should hold the INFO lines even when train() is called as a library.
    if logging.get_verbosity() < logging.INFO:
        logging.set_verbosity(logging.INFO)
    if strategy is None:
        # Checked before the strategy exists: creating a multi-worker strategy waits
        # for all workers, so a worker that stops later would leave the others waiting.
        workers, _ = read_tf_config()
        if workers > 1 and not config.run_dir:
            raise ConfigError(MULTI_WORKER_RUN_DIR_MESSAGE)
        if workers > 1 and config.batch_size % workers:
            raise ConfigError(
                f"--batch_size={config.batch_size} is not divisible by the {workers} "
                f"workers named in TF_CONFIG: choose a multiple of {workers} times the "
                "number of devices per worker")
        strategy = make_strategy(config.worker_connect_timeout)
    chief = is_chief(strategy)
    info = dataset_lib.inspect_dataset(config.dataset)
    config = resolve_config(config, info)
    check_batch_size(config, strategy.num_replicas_in_sync)

    if config.run_dir:
        run_dir = config.run_dir
        if chief:
            os.makedirs(run_dir, exist_ok=True)
        check_resume_compatible(run_dir, config)
    elif not chief or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Each worker would pick its own new numbered directory otherwise.
        raise ConfigError(MULTI_WORKER_RUN_DIR_MESSAGE)
    else:
        run_dir = reporting.create_run_dir(config.result_dir, config.description)
    log_handler = reporting.attach_log_file(run_dir) if chief else None
    try:
        return _train_in_run_dir(config, strategy, info, run_dir)
    finally:
        if log_handler is not None:
            reporting.detach_log_file(log_handler)


def _train_in_run_dir(config, strategy, info, run_dir):
    chief = is_chief(strategy)
    options_path = os.path.join(run_dir, reporting.OPTIONS_FILE)
    if chief and not os.path.exists(options_path):
        reporting.write_json_atomic(options_path, {
            **config.to_dict(), "num_replicas": strategy.num_replicas_in_sync,
            "dataset_num_images": info.num_images, "versions": library_versions()})
    logging.info("run directory: %s", run_dir)
    logging.info("options: %s", json.dumps(config.to_dict(), sort_keys=True))
    logging.info("%d replica(s): %s", strategy.num_replicas_in_sync,
                 ", ".join(d for d in strategy.extended.worker_devices))
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver:
        logging.info("multi-worker training: this is %s %d of the cluster %s%s",
                     resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict(),
                     " (chief: writes the run directory)" if chief else "")

    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(config, strategy)
    checkpoints = CheckpointWriter(trainer, run_dir, chief)
    manager = checkpoints.manager
    if manager.latest_checkpoint:
        trainer.restore(manager.latest_checkpoint)
        logging.info("resumed from %s at kimg %.3f", manager.latest_checkpoint,
                     trainer.cur_nimg.numpy() / 1000)
        dropped = (reporting.truncate_stats(run_dir, trainer.cur_nimg.numpy() / 1000)
                   if chief else 0)
        if dropped:
            logging.info("dropped %d stats.jsonl line(s) written after that checkpoint",
                         dropped)
    logging.info("G: %d parameters, D: %d parameters", trainer.G.count_params(),
                 trainer.D.count_params())

    reporter = reporting.Reporter(run_dir, write_files=chief)
    columns, rows = reporting.grid_shape(config.resolution)
    grid_z = np.random.RandomState(config.seed).randn(columns * rows, config.latent_size)
    grid_z = grid_z.astype(np.float32)
    cur_nimg = int(trainer.cur_nimg.numpy())
    cur_tick = int(trainer.cur_tick.numpy())

    stability = StabilityTracker(config)
    if cur_nimg == 0 and chief:
        # Not cached: only one batch is read, and a partly read cache logs a warning.
        reals_ds = dataset_lib.make_dataset(info, config.resolution, columns * rows,
                                            shuffle=False, repeat=True, seed=config.seed,
                                            cache=False)
        reals = [image.numpy() for image in next(iter(reals_ds))]
        grids = reporting.save_scale_grids(reals, "reals", run_dir, columns)
        reporter.report_images("reals", grids, 0)
        _snapshot_images(trainer, grid_z, columns, run_dir, reporter, 0)
        stability.measure(trainer)

    ds = dataset_lib.make_dataset(info, config.resolution, config.batch_size,
                                  mirror_augment=config.mirror_augment,
                                  seed=config.seed + cur_nimg)
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    total_nimg = int(config.total_kimg * 1000)
    tick_nimg = max(int(config.tick_kimg * 1000), 1)
    tick_start_nimg = cur_nimg
    start_time = time.time()
    tick_start_time = start_time
    maintenance_sec = 0.0
    pending = []        # (step, stats tensors) of the current tick
    logging.info("training from kimg %.3f to %.3f", cur_nimg / 1000, config.total_kimg)

    rollbacks = 0
    milestone_nimg = int(config.milestone_kimg * 1000)
    last_milestone = cur_nimg // milestone_nimg if milestone_nimg else 0
    while cur_nimg < total_nimg:
        step = cur_nimg // config.batch_size
        # The step's losses stay tensors until the tick: converting them to floats here
        # would make the host wait for every step, and a GPU would idle while the host
        # prepares the next one.
        pending.append((step, trainer.train_step(next(iterator), step)))
        cur_nimg += config.batch_size
        done = cur_nimg >= total_nimg
        if cur_nimg < tick_start_nimg + tick_nimg and not done:
            continue

        steps = [(step, {key: float(value) for key, value in stats.items()})
                 for step, stats in pending]
        pending = []
        bad_step, bad = first_non_finite(steps)
        if bad:
            message = (f"non-finite loss at step {bad_step} "
                       f"(kimg {bad_step * config.batch_size / 1000:.3f}): "
                       + ", ".join(f"{k}={v}" for k, v in bad.items()))
            latest = manager.latest_checkpoint
            if config.on_nan != "rollback" or latest is None or rollbacks >= MAX_ROLLBACKS:
                reason = (f" after {rollbacks} rollbacks" if rollbacks else "")
                raise TrainingDivergedError(
                    f"{message}{reason}. Nothing was saved after it; the last good checkpoint "
                    f"is {latest or 'none (no checkpoint yet)'}. Rerun with the same "
                    "--run_dir and a lower --lr to resume from it.")
            rollbacks += 1
            trainer.lr_scale.assign(trainer.lr_scale * 0.5)
            lr_scale = float(trainer.lr_scale.numpy())
            trainer.checkpoint.restore(latest).assert_existing_objects_matched()
            trainer.lr_scale.assign(lr_scale)
            trainer.restore_learning_rate()
            cur_nimg = int(trainer.cur_nimg.numpy())
            cur_tick = int(trainer.cur_tick.numpy())
            if chief:
                reporting.truncate_stats(run_dir, cur_nimg / 1000)
            tick_start_nimg = cur_nimg
            logging.warning("%s; rolled back to %s (kimg %.3f) with learning rate %g "
                            "(--on_nan=rollback, %d of at most %d)", message, latest,
                            cur_nimg / 1000, config.lr * lr_scale, rollbacks, MAX_ROLLBACKS)
            continue

        cur_tick += 1
        tick_end_time = time.time()
        tick_sec = tick_end_time - tick_start_time
        tick_kimg = (cur_nimg - tick_start_nimg) / 1000
        report = {"tick": cur_tick, "kimg": cur_nimg / 1000,
                  "time/total_sec": tick_end_time - start_time,
                  "time/sec_per_tick": tick_sec,
                  "time/sec_per_kimg": tick_sec / max(tick_kimg, 1e-9),
                  "time/maintenance_sec": maintenance_sec,
                  **reporting.memory_stats(),
                  **{key: float(np.mean([stats[key] for _, stats in steps]))
                     for key in steps[0][1]}}

        maintenance_start = time.time()
        save_images = cur_tick % config.image_snapshot_ticks == 0 or done
        save_network = cur_tick % config.network_snapshot_ticks == 0 or done
        if chief and (save_images or save_network):
            check_disk_space(run_dir, trainer.checkpoint_bytes())
        if save_images and chief:
            _snapshot_images(trainer, grid_z, columns, run_dir, reporter, cur_nimg / 1000)
            report.update(stability.measure(trainer))
        reporter.report_tick(report)
        if save_network:
            trainer.cur_nimg.assign(cur_nimg)
            trainer.cur_tick.assign(cur_tick)
            path = checkpoints.save(cur_nimg)
            if milestone_nimg and cur_nimg // milestone_nimg > last_milestone:
                last_milestone = cur_nimg // milestone_nimg
                checkpoints.save_milestone(cur_nimg)
            metric_ticks = config.metric_ticks or config.network_snapshot_ticks
            if chief and config.metrics and (cur_tick % metric_ticks == 0 or done):
                _run_metrics(trainer, info, run_dir, reporter, cur_nimg / 1000, path)
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_sec = tick_start_time - maintenance_start

    reporter.close()
    logging.info("training finished at kimg %.3f; run directory %s", cur_nimg / 1000, run_dir)
    # Replicas that stayed in sync log the same digest; a later restore can be checked
    # against it too.
    logging.info("weights digest (G, D, G_ema): %s", weights_digest(trainer))
    return run_dir


class CheckpointWriter:
    """Save checkpoints: the chief into the run directory, other workers into scratch.

    Under MultiWorkerMirroredStrategy every worker has to take part in a save, because
    saving a distributed variable may run collective ops. Workers other than the
    chief therefore write to a temporary directory and delete it at once, so only
    the chief's checkpoints stay.
    """

    def __init__(self, trainer: Trainer, run_dir: str, chief: bool):
        self.trainer = trainer
        self.run_dir = run_dir
        self.chief = chief
        # Every worker reads the chief's checkpoints when it resumes.
        self.manager = tf.train.CheckpointManager(
            trainer.checkpoint, os.path.join(run_dir, CHECKPOINT_DIR),
            max_to_keep=trainer.config.keep_checkpoints)

    def save(self, cur_nimg: int) -> str:
        if not self.chief:
            self._write_scratch()
            return self.manager.latest_checkpoint
        path = self.manager.save(checkpoint_number=cur_nimg)
        logging.info("saved checkpoint %s", path)
        return path

    def save_milestone(self, cur_nimg: int) -> None:
        if not self.chief:
            self._write_scratch()
            return
        path = self.trainer.checkpoint.write(
            os.path.join(self.run_dir, MILESTONE_DIR, f"ckpt-{cur_nimg}"))
        logging.info("saved milestone checkpoint %s", path)

    def _write_scratch(self) -> None:
        scratch = tempfile.mkdtemp(prefix="msg_tf_worker_ckpt_")
        try:
            self.trainer.checkpoint.write(os.path.join(scratch, "ckpt"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def first_non_finite(steps: list[tuple[int, dict]]) -> tuple[int | None, dict]:
    """Return the first step with a NaN or infinite value and those values, or (None, {})."""
    for step, stats in steps:
        bad = {key: value for key, value in stats.items() if not math.isfinite(value)}
        if bad:
            return step, bad
    return None, {}


class StabilityTracker:
    """Training stability as in the MSG-GAN paper's Figure 6.

    At each image snapshot, `measure` returns the mean squared error per scale between
    G_ema's images of 36 fixed latents now and at the previous snapshot of this process
    (images in [-1, 1]). The first snapshot after a start or resume has no predecessor
    and returns nothing.
    """

    NUM_LATENTS = 36

    def __init__(self, config: TrainingConfig):
        rng = np.random.RandomState(config.seed + 1)
        self.z = rng.randn(self.NUM_LATENTS, config.latent_size).astype(np.float32)
        self.previous = None

    def measure(self, trainer) -> dict:
        images = trainer.generate(self.z, trainer.config.batch_size)
        result = {}
        if self.previous is not None:
            for before, now in zip(self.previous, images):
                res = now.shape[1]
                result[f"stability/mse_{res}x{res}"] = float(np.mean((now - before) ** 2))
        self.previous = images
        return result


def _run_metrics(trainer, info, run_dir, reporter, kimg, checkpoint_path):
    """Compute the configured metrics on G_ema; append to metric-<name>.jsonl."""
    from metrics import registry

    config = trainer.config

    def generate(z):
        return trainer.generate(np.asarray(z, np.float32), config.batch_size)

    for name in config.metrics:
        start = time.time()
        results = registry.compute_metric(
            name, generate, info, num_channels=config.num_channels,
            latent_size=config.latent_size, batch_size=config.batch_size,
            weights_path=config.inception_weights or None, seed=config.seed)
        reporting.write_metric(run_dir, reporter, name, results, snapshot=checkpoint_path,
                               kimg=kimg, seconds=time.time() - start, data=info.path)
        logging.info("metric %s at kimg %.3f: %s", name, kimg,
                     ", ".join(f"{key} {value:.4f}" for key, value in results.items()))


def _snapshot_images(trainer, grid_z, columns, run_dir, reporter, kimg):
    fakes = trainer.generate(grid_z, trainer.config.batch_size)
    prefix = f"fakes{int(kimg):06d}"
    grids = reporting.save_scale_grids(fakes, prefix, run_dir, columns)
    reporter.report_images("fakes", grids, kimg)
