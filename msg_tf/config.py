"""Training options: one frozen object, filled from flags and written to the run directory."""

import dataclasses
import math

from msg_tf.losses import LOSS_NAMES
from networks import ARCH_NAMES, COMBINE_NAMES

OPTIMIZER_NAMES = ("adam", "rmsprop")
PRECISION_NAMES = ("float32", "bfloat16", "float16")

# Options that change the shapes or meaning of checkpointed variables: a run can only
# resume with the same values.
ARCHITECTURE_KEYS = ("arch", "resolution", "latent_size", "channel_base", "channel_max",
                     "combine", "mbstd_group_size", "num_channels", "optimizer",
                     "mapping_depth", "mapping_width")


class ConfigError(ValueError):
    """A user-facing problem with the training options."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    dataset: str
    result_dir: str = "results"
    run_dir: str = ""                   # empty: create results/NNNNN-<desc>
    arch: str = "progan"
    resolution: int = 0                 # 0: the dataset's top resolution
    num_channels: int = 0               # 0: from the dataset
    loss: str = "wgan_gp"
    combine: str = "simple"
    batch_size: int = 32                # global, over all replicas
    total_kimg: float = 12000.0
    lr: float = 0.003
    optimizer: str = "adam"
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    adam_epsilon: float = 1e-8
    gp_weight: float = 10.0
    drift_weight: float = 0.001
    r1_gamma: float = 10.0
    channel_base: int = 16384
    channel_max: int = 512
    latent_size: int = 512
    mbstd_group_size: int = 4
    # MSG-StyleGAN only.
    mapping_depth: int = 8
    mapping_width: int = 512            # also the size of w
    mapping_lr_multiplier: float = 0.01
    blur: bool = True                   # [1, 2, 1] filter after each upsampling conv
    style_mixing_prob: float = 0.0
    mirror_augment: bool = False
    ema_kimg: float = 10.0              # half-life of the generator's moving average
    ema_rampup: float = 0.0             # > 0: half-life at most ema_rampup * images shown
    seed: int = 1000
    tick_kimg: float = 4.0
    image_snapshot_ticks: int = 10
    network_snapshot_ticks: int = 10
    keep_checkpoints: int = 5
    milestone_kimg: float = 0.0         # > 0: also keep the first checkpoint past every N kimg
    metrics: tuple = ()                 # metric names, e.g. ("fid10k", "swd1k")
    metric_ticks: int = 0               # 0: at every checkpoint
    inception_weights: str = ""         # converted Inception weights for FID, KID and IS
    on_nan: str = "stop"                # or "rollback": restore the last checkpoint, halve lr
    xla: bool = False                   # compile the forward and backward passes with XLA
    reuse_fakes: bool = False           # G step trains on the D step's fakes
    mixed_precision: str = "float32"    # or bfloat16, float16: G and D compute type
    worker_connect_timeout: float = 600.0   # seconds to wait for all TF_CONFIG workers
    description: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate(config: TrainingConfig) -> None:
    """Raise ConfigError naming the flag and the rule for every invalid option.

    Checks that need the dataset or the device count are in `check_batch_size` and
    `msg_tf.dataset.check_resolution`, which run once those are known.
    """
    def one_of(flag, value, names):
        if value not in names:
            raise ConfigError(f"invalid --{flag}={value!r}: expected one of {', '.join(names)}")

    one_of("arch", config.arch, ARCH_NAMES)
    one_of("loss", config.loss, LOSS_NAMES)
    one_of("combine", config.combine, COMBINE_NAMES)
    one_of("optimizer", config.optimizer, OPTIMIZER_NAMES)
    one_of("on_nan", config.on_nan, ("stop", "rollback"))
    one_of("mixed_precision", config.mixed_precision, PRECISION_NAMES)
    if config.resolution:
        log2 = math.log2(config.resolution)
        if config.resolution < 8 or config.resolution > 1024 or log2 != int(log2):
            raise ConfigError(f"invalid --resolution={config.resolution}: expected a power "
                              "of two from 8 to 1024")
    positive = {"batch_size": config.batch_size, "total_kimg": config.total_kimg,
                "lr": config.lr, "channel_base": config.channel_base,
                "channel_max": config.channel_max, "latent_size": config.latent_size,
                "tick_kimg": config.tick_kimg, "image_snapshot_ticks": config.image_snapshot_ticks,
                "network_snapshot_ticks": config.network_snapshot_ticks,
                "keep_checkpoints": config.keep_checkpoints, "ema_kimg": config.ema_kimg,
                "worker_connect_timeout": config.worker_connect_timeout}
    for flag, value in positive.items():
        if not value > 0:
            raise ConfigError(f"invalid --{flag}={value}: expected a positive number")
    if config.arch == "stylegan":
        for flag in ("mapping_depth", "mapping_width", "mapping_lr_multiplier"):
            if not getattr(config, flag) > 0:
                raise ConfigError(f"invalid --{flag}={getattr(config, flag)}: expected a "
                                  "positive number")
    if not 0.0 <= config.style_mixing_prob <= 1.0:
        raise ConfigError(f"invalid --style_mixing_prob={config.style_mixing_prob}: expected "
                          "a probability from 0 to 1")
    if config.style_mixing_prob > 0 and config.arch != "stylegan":
        raise ConfigError(f"--style_mixing_prob={config.style_mixing_prob} needs "
                          "--arch=stylegan: only MSG-StyleGAN has styles to mix")
    if config.milestone_kimg < 0:
        raise ConfigError(f"invalid --milestone_kimg={config.milestone_kimg}: expected 0 "
                          "(off) or a positive interval in kimg")
    if config.metric_ticks < 0:
        raise ConfigError(f"invalid --metric_ticks={config.metric_ticks}: expected 0 (every "
                          "checkpoint) or a positive tick count")
    check_metrics(config)
    if config.ema_rampup < 0:
        raise ConfigError(f"invalid --ema_rampup={config.ema_rampup}: expected 0 (off) or a "
                          "positive fraction such as 0.05")
    if config.mbstd_group_size < 0:
        raise ConfigError(f"invalid --mbstd_group_size={config.mbstd_group_size}: expected "
                          "0 (off) or a positive group size")


def check_metrics(config: TrainingConfig) -> None:
    """Raise ConfigError for an unknown metric name or missing Inception weights.

    Checked before training starts, so a typo or a missing weights file fails at once
    rather than at the first metric evaluation hours later.
    """
    if not config.metrics:
        return
    from metrics import inception, registry

    try:
        specs = [registry.parse_metric_name(name) for name in config.metrics]
        if any(spec.kind in ("fid", "kid", "is") for spec in specs):
            inception.find_weights(config.inception_weights or None)
    except ValueError as error:
        raise ConfigError(f"invalid --metrics={','.join(config.metrics)}: {error}") from error


def check_batch_size(config: TrainingConfig, num_replicas: int) -> int:
    """Return the per-replica batch size, or raise ConfigError if it does not divide."""
    if config.batch_size % num_replicas:
        raise ConfigError(
            f"--batch_size={config.batch_size} is not divisible by the {num_replicas} "
            f"replicas (devices) in use: choose a multiple of {num_replicas}")
    per_replica = config.batch_size // num_replicas
    group = config.mbstd_group_size
    if group > 1 and per_replica % group:
        raise ConfigError(
            f"the batch per replica ({config.batch_size} / {num_replicas} replicas = "
            f"{per_replica}) is not divisible by --mbstd_group_size={group}: choose "
            f"--batch_size as a multiple of {num_replicas * group}, or change "
            "--mbstd_group_size")
    return per_replica
