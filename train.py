"""Train MSG-GAN on a TFRecord pyramid.

    python train.py --flagfile=configs/demo_emoji64.cfg
    python train.py --dataset=datasets/mydata --resolution=64 --batch_size=32

Running again with the same --run_dir resumes from its newest checkpoint.
"""

import dataclasses
import sys

from absl import app, flags

from msg_tf import config as config_lib
from msg_tf import training
from msg_tf.tfrecord_format import DatasetError

FLAGS = flags.FLAGS
_DEFAULTS = config_lib.TrainingConfig(dataset="")

flags.DEFINE_string("dataset", None, "Directory of the TFRecord pyramid (dataset_tool.py output).")
flags.DEFINE_string("result_dir", _DEFAULTS.result_dir,
                    "Parent directory for new numbered run directories.")
flags.DEFINE_string("run_dir", _DEFAULTS.run_dir,
                    "Run directory to use; resumes if it holds a checkpoint. Empty: create "
                    "<result_dir>/NNNNN-<description>.")
flags.DEFINE_string("description", _DEFAULTS.description,
                    "Suffix of a new run directory's name (default: from dataset and options).")
flags.DEFINE_enum("arch", _DEFAULTS.arch, list(config_lib.ARCH_NAMES), "Generator family.")
flags.DEFINE_integer("resolution", _DEFAULTS.resolution,
                     "Output resolution in pixels, a power of two from 8 to 1024 (0: the "
                     "dataset's top resolution).")
flags.DEFINE_string("loss", _DEFAULTS.loss,
                    f"Loss: one of {', '.join(config_lib.LOSS_NAMES)}.")
flags.DEFINE_string("combine", _DEFAULTS.combine,
                    f"Discriminator combine function: one of {', '.join(config_lib.COMBINE_NAMES)}.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                     "Global batch size, split evenly over the replicas.")
flags.DEFINE_float("total_kimg", _DEFAULTS.total_kimg,
                   "Training length in thousands of real images shown to D.")
flags.DEFINE_float("lr", _DEFAULTS.lr, "Learning rate of G and D.")
flags.DEFINE_string("optimizer", _DEFAULTS.optimizer,
                    "adam (beta1 0, beta2 0.99, epsilon 1e-8) or rmsprop.")
flags.DEFINE_float("gp_weight", _DEFAULTS.gp_weight, "Gradient penalty weight of wgan_gp.")
flags.DEFINE_float("drift_weight", _DEFAULTS.drift_weight,
                   "Weight of the E[D(real)^2] drift term of wgan_gp.")
flags.DEFINE_float("r1_gamma", _DEFAULTS.r1_gamma, "R1 penalty weight gamma of ns_r1.")
flags.DEFINE_integer("channel_base", _DEFAULTS.channel_base,
                     "Feature maps at resolution r: min(channel_base // r, channel_max).")
flags.DEFINE_integer("channel_max", _DEFAULTS.channel_max, "Maximum feature maps per layer.")
flags.DEFINE_integer("latent_size", _DEFAULTS.latent_size, "Dimension of the latent z.")
flags.DEFINE_integer("mbstd_group_size", _DEFAULTS.mbstd_group_size,
                     "Group size of the minibatch standard deviation layers (0: off).")
flags.DEFINE_integer("mapping_depth", _DEFAULTS.mapping_depth,
                     "MSG-StyleGAN: dense layers in the mapping network.")
flags.DEFINE_integer("mapping_width", _DEFAULTS.mapping_width,
                     "MSG-StyleGAN: width of the mapping network and size of w.")
flags.DEFINE_float("mapping_lr_multiplier", _DEFAULTS.mapping_lr_multiplier,
                   "MSG-StyleGAN: learning-rate multiplier of the mapping network.")
flags.DEFINE_bool("blur", _DEFAULTS.blur,
                  "MSG-StyleGAN: [1, 2, 1] blur after each upsampling conv.")
flags.DEFINE_float("style_mixing_prob", _DEFAULTS.style_mixing_prob,
                   "MSG-StyleGAN: probability per sample of style-mixing regularisation.")
flags.DEFINE_bool("mirror_augment", _DEFAULTS.mirror_augment,
                  "Flip real images left-right at random (all scales alike).")
flags.DEFINE_float("ema_kimg", _DEFAULTS.ema_kimg,
                   "Half-life of the generator's moving average, in kimg.")
flags.DEFINE_float("ema_rampup", _DEFAULTS.ema_rampup,
                   "If above 0, cap the EMA half-life at this fraction of the images shown "
                   "so far (0.05 suits short runs); 0 keeps the fixed half-life.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for weights, latents and data order.")
flags.DEFINE_float("tick_kimg", _DEFAULTS.tick_kimg,
                   "Progress report interval in kimg.")
flags.DEFINE_integer("image_snapshot_ticks", _DEFAULTS.image_snapshot_ticks,
                     "Save image grids every this many ticks.")
flags.DEFINE_integer("network_snapshot_ticks", _DEFAULTS.network_snapshot_ticks,
                     "Save a checkpoint every this many ticks.")
flags.DEFINE_integer("keep_checkpoints", _DEFAULTS.keep_checkpoints,
                     "Number of newest checkpoints kept on disk.")
flags.DEFINE_float("milestone_kimg", _DEFAULTS.milestone_kimg,
                   "If above 0, also keep the first checkpoint after every multiple of this "
                   "many kimg in <run_dir>/milestones, outside --keep_checkpoints.")
flags.DEFINE_list("metrics", [], "Metrics to compute on G_ema during training, e.g. "
                  "fid10k,swd1k; results go to metric-<name>.jsonl and TensorBoard.")
flags.DEFINE_integer("metric_ticks", _DEFAULTS.metric_ticks,
                     "Compute --metrics every this many ticks (0: at every checkpoint).")
flags.DEFINE_string("inception_weights", _DEFAULTS.inception_weights,
                    "Converted Inception weights for FID, KID and IS (default: "
                    "$MSG_TF_INCEPTION_WEIGHTS, then ~/.cache/msg_tf).")
flags.DEFINE_enum("on_nan", _DEFAULTS.on_nan, ["stop", "rollback"],
                  "On a NaN or infinite loss: stop with an error, or restore the last "
                  "checkpoint and continue at half the learning rate (at most 3 times).")
flags.DEFINE_bool("xla", _DEFAULTS.xla,
                  "Compile the forward and backward passes of each step with XLA.")
flags.DEFINE_bool("reuse_fakes", _DEFAULTS.reuse_fakes,
                  "Train G on the fakes of the D step (the same latents for both steps, "
                  "as the PyTorch MSG-GAN code does) instead of fakes from new latents. "
                  "Without --xla this saves one G forward pass per iteration.")
flags.DEFINE_enum("mixed_precision", _DEFAULTS.mixed_precision,
                  list(config_lib.PRECISION_NAMES),
                  "Compute type of G and D. bfloat16 and float16 keep the weights, "
                  "losses, penalties, minibatch stddev and EMA in float32; float16 adds "
                  "dynamic loss scaling.")
flags.DEFINE_float("worker_connect_timeout", _DEFAULTS.worker_connect_timeout,
                   "Multi-worker training: seconds to wait for every worker named in "
                   "TF_CONFIG to connect before exiting with an error.")
flags.mark_flag_as_required("dataset")


def config_from_flags() -> config_lib.TrainingConfig:
    values = {field.name: FLAGS[field.name].value
              for field in dataclasses.fields(config_lib.TrainingConfig)
              if field.name in FLAGS}
    values["metrics"] = tuple(values.get("metrics") or ())
    return config_lib.TrainingConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags()
    try:
        config_lib.validate(config)
        training.train(config)
    except (config_lib.ConfigError, DatasetError, training.TrainingDivergedError,
            training.DiskSpaceError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
