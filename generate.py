"""Make figures from a trained MSG-GAN generator (G_ema), or export it as a SavedModel.

Usage:
  python generate.py samples --network=RUN_DIR --outdir=DIR [--seeds=0-63] [--columns=N]
      [--individual] [--truncation_psi=1] [--truncation_cutoff=N] [--noise_mode=const]
  python generate.py sheet --network=RUN_DIR --outdir=DIR [--seeds=0-7]
      [--display_size=PIXELS] [--separator=PIXELS]
  python generate.py interpolate --network=RUN_DIR --outdir=DIR [--seeds=0-3]
      [--space=z|w] [--frames_per_transition=30] [--fps=30] [--all_scales]
  python generate.py style_mixing --network=RUN_DIR --outdir=DIR [--row_seeds=0-4]
      [--col_seeds=5-9] [--styles=coarse|middle|fine|A-B]
  python generate.py export --network=RUN_DIR --outdir=DIR

--network takes a run directory of train.py (its newest checkpoint) or a checkpoint
prefix such as RUN_DIR/checkpoints/ckpt-40000. Seed s draws its latent as
np.random.RandomState(s).randn(latent_size). The truncation and noise options apply to
MSG-StyleGAN networks in every figure subcommand.
"""

import sys

from absl import app, flags

from msg_tf import generation
from msg_tf.config import ConfigError

FLAGS = flags.FLAGS

flags.DEFINE_string("network", None,
                    "Run directory of train.py, or a checkpoint prefix inside one.")
flags.DEFINE_string("outdir", None, "Output folder; created if missing.")
flags.DEFINE_string("seeds", None,
                    "Seeds as a comma-separated list of seeds and inclusive ranges, e.g. "
                    "0-63 or 0,5,9. Default: 0-31 for samples, 0-7 for sheet, 0-3 for "
                    "interpolate.")
flags.DEFINE_float("truncation_psi", 1.0,
                   "MSG-StyleGAN: move w towards its average by this factor (1: no "
                   "truncation, 0: the average w). Must be 1 for MSG-ProGAN.")
flags.DEFINE_integer("truncation_cutoff", None,
                     "MSG-StyleGAN: truncate only the style layers below this index "
                     "(default: all layers).")
flags.DEFINE_enum("noise_mode", "const", ["const", "random", "none"],
                  "MSG-StyleGAN noise inputs: const (the stored noise, repeatable), random "
                  "or none. Ignored for MSG-ProGAN.")
flags.DEFINE_integer("batch_size", 16, "Images per generator call.")
flags.DEFINE_integer("columns", 0, "samples: images per grid row (0: near-square grid).")
flags.DEFINE_bool("individual", False,
                  "samples: also write one PNG per seed at the finest scale.")
flags.DEFINE_integer("display_size", 0,
                     "sheet, interpolate --all_scales: side of every displayed image in "
                     "pixels, by nearest-neighbour resizing (0: the finest resolution).")
flags.DEFINE_integer("separator", 2,
                     "sheet, interpolate --all_scales, style_mixing: white gap between "
                     "images in pixels.")
flags.DEFINE_enum("space", "z", list(generation.SPACES),
                  "interpolate: z (slerp of the latents) or w (linear interpolation of the "
                  "mapped latents, MSG-StyleGAN only).")
flags.DEFINE_integer("frames_per_transition", 30,
                     "interpolate: frames from each seed to the next.")
flags.DEFINE_float("fps", 30.0, "interpolate: frames per second of the GIF and MP4.")
flags.DEFINE_bool("all_scales", False,
                  "interpolate: also write an animation with all scales side by side.")
flags.DEFINE_string("row_seeds", "0-4", "style_mixing: seeds of the rows (the left column).")
flags.DEFINE_string("col_seeds", "5-9", "style_mixing: seeds of the columns (the top row).")
flags.DEFINE_string("styles", "coarse",
                    "style_mixing: style layers taken from the column seeds: coarse (4x4 "
                    "and 8x8), middle (16x16 and 32x32), fine (64x64 and up) or an "
                    "inclusive layer range A-B; layers 2k and 2k+1 belong to scale k.")

DEFAULT_SEEDS = {"samples": "0-31", "sheet": "0-7", "interpolate": "0-3"}
COMMANDS = ("samples", "sheet", "interpolate", "style_mixing", "export")


def seeds_flag(command: str) -> list[int]:
    spec = FLAGS.seeds if FLAGS.seeds is not None else DEFAULT_SEEDS[command]
    return generation.parse_seeds(spec, "seeds")


def run_command(command: str) -> list[str]:
    """Run one subcommand and return the paths it wrote."""
    if not FLAGS.outdir:
        raise generation.GenerationError("missing --outdir: pass the folder to write to")

    # Seeds are parsed before the slow network load so that a typo fails at once.
    seeds = seeds_flag(command) if command in DEFAULT_SEEDS else None
    if command == "style_mixing":
        row_seeds = generation.parse_seeds(FLAGS.row_seeds, "row_seeds")
        column_seeds = generation.parse_seeds(FLAGS.col_seeds, "col_seeds")

    network = generation.load_network(FLAGS.network)
    options = dict(truncation_psi=FLAGS.truncation_psi,
                   truncation_cutoff=FLAGS.truncation_cutoff,
                   noise_mode=FLAGS.noise_mode, batch_size=FLAGS.batch_size)

    if command == "samples":
        return generation.write_samples(network, FLAGS.outdir, seeds,
                                        columns=FLAGS.columns, individual=FLAGS.individual,
                                        **options)
    if command == "sheet":
        return [generation.write_sheet(network, FLAGS.outdir, seeds,
                                       display_size=FLAGS.display_size,
                                       separator=FLAGS.separator, **options)]
    if command == "interpolate":
        return generation.write_interpolation(
            network, FLAGS.outdir, seeds, space=FLAGS.space,
            frames_per_transition=FLAGS.frames_per_transition, fps=FLAGS.fps,
            all_scales=FLAGS.all_scales, display_size=FLAGS.display_size,
            separator=FLAGS.separator, **options)
    if command == "style_mixing":
        return [generation.write_style_mixing(
            network, FLAGS.outdir, row_seeds, column_seeds, styles=FLAGS.styles,
            separator=FLAGS.separator, **options)]
    return [generation.export_saved_model(network, FLAGS.outdir)]


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        given = " ".join(repr(arg) for arg in argv[1:]) or "none"
        raise app.UsageError(f"expected one subcommand, one of {', '.join(COMMANDS)}; "
                             f"got {given}")
    try:
        paths = run_command(argv[1])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for path in paths:
        print(path)


if __name__ == "__main__":
    app.run(main)
