import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msg_tf import generation, training
from msg_tf.config import TrainingConfig
from msg_tf.dataset import to_uint8
from networks import mix_styles
from tests.conftest import REPO_ROOT

TINY = dict(resolution=32, channel_base=256, channel_max=32, latent_size=32, batch_size=8,
            total_kimg=0.016, tick_kimg=0.008, image_snapshot_ticks=100,
            network_snapshot_ticks=1, loss="ns_r1", seed=3)


def one_replica():
    return tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def train_tiny(dataset, run_dir, **options):
    config = TrainingConfig(dataset=dataset, run_dir=str(run_dir), **TINY, **options)
    return training.train(config, one_replica())


@pytest.fixture(scope="session")
def style_run(emoji_dataset, tmp_path_factory):
    return train_tiny(emoji_dataset, tmp_path_factory.mktemp("runs") / "style",
                      arch="stylegan", mapping_depth=2, mapping_width=32, combine="cat_lin")


@pytest.fixture(scope="session")
def progan_run(emoji_dataset, tmp_path_factory):
    return train_tiny(emoji_dataset, tmp_path_factory.mktemp("runs") / "progan",
                      arch="progan")


@pytest.fixture(scope="session")
def style_net(style_run):
    return generation.load_network(style_run)


@pytest.fixture(scope="session")
def progan_net(progan_run):
    return generation.load_network(progan_run)


def seed_latents(seeds, size=32):
    return np.stack([np.random.RandomState(s).randn(size) for s in seeds]).astype(np.float32)


def assert_close_uint8(actual, expected):
    # Batches of different sizes may round a value on the other side of .5.
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1


# ---------------------------------------------------------------------------------------
# Options

def test_parse_seeds_ranges_and_lists():
    assert generation.parse_seeds("0-3,7, 2") == [0, 1, 2, 3, 7, 2]
    assert generation.parse_seeds("5") == [5]
    assert generation.parse_seeds("4294967295") == [4294967295]


@pytest.mark.parametrize("spec, message", [
    ("1-x", r"invalid --seeds='1-x': '1-x' is not a seed or a range"),
    ("5-2", r"the range 5-2 ends before it starts; write it as 2-5"),
    ("-3", r"'-3' is not a seed or a range"),
    ("1,,2", r"'' is not a seed or a range"),
    ("4294967296", r"seed 4294967296 is larger than 4294967295"),
    ("", r"missing --seeds"),
])
def test_parse_seeds_rejects_bad_spec(spec, message):
    with pytest.raises(generation.GenerationError, match=message):
        generation.parse_seeds(spec)


def test_parse_seeds_names_the_flag():
    with pytest.raises(generation.GenerationError, match=r"invalid --row_seeds='a'"):
        generation.parse_seeds("a", "row_seeds")


def test_latents_follow_documented_seeding():
    latents = generation.latents_for_seeds([3, 9], 32)
    assert latents.dtype == np.float32
    np.testing.assert_array_equal(latents[1], np.random.RandomState(9).randn(32).astype(np.float32))


def test_missing_network_path(tmp_path):
    with pytest.raises(generation.GenerationError, match=r"--network=.*nope not found"):
        generation.load_network(str(tmp_path / "nope"))
    with pytest.raises(generation.GenerationError, match=r"missing --network"):
        generation.load_network("")


def test_style_layers_groups_and_ranges(style_net):
    assert style_net.G.num_ws == 8
    assert generation.style_layers(style_net, "coarse") == (0, 3)
    assert generation.style_layers(style_net, "middle") == (4, 7)
    assert generation.style_layers(style_net, "2-5") == (2, 5)
    assert generation.style_layers(style_net, "3") == (3, 3)


@pytest.mark.parametrize("styles, message", [
    ("bogus", r"unknown --styles='bogus': expected coarse, middle, fine or a layer range "
              r"A-B with 0 <= A <= B <= 7"),
    ("5-9", r"invalid --styles='5-9' for a network with 8 style layers"),
    ("6-2", r"invalid --styles='6-2'"),
    ("fine", r"--styles=fine selects no style layers of this 32x32 network"),
])
def test_style_layers_rejects_bad_styles(style_net, styles, message):
    with pytest.raises(generation.GenerationError, match=message):
        generation.style_layers(style_net, styles)


def test_progan_rejects_stylegan_options(progan_net, tmp_path):
    outdir = tmp_path / "out"
    with pytest.raises(generation.GenerationError,
                       match=r"--truncation_psi=0.7 needs an MSG-StyleGAN network.*use a run "
                             r"trained with --arch=stylegan"):
        generation.write_samples(progan_net, str(outdir), [0, 1], truncation_psi=0.7)
    with pytest.raises(generation.GenerationError,
                       match=r"style mixing needs an MSG-StyleGAN network, but .* is MSG-ProGAN"):
        generation.write_style_mixing(progan_net, str(outdir), [0], [1])
    with pytest.raises(generation.GenerationError, match=r"--space=w needs an MSG-StyleGAN"):
        generation.write_interpolation(progan_net, str(outdir), [0, 1], space="w")
    assert not outdir.exists()


def test_invalid_figure_options(style_net, tmp_path):
    outdir = tmp_path / "out"
    cases = [
        (lambda: generation.write_samples(style_net, str(outdir), [0], noise_mode="loud"),
         r"invalid --noise_mode='loud': expected one of random, const, none"),
        (lambda: generation.write_samples(style_net, str(outdir), [0], truncation_cutoff=9),
         r"invalid --truncation_cutoff=9: this network has 8 style layers"),
        (lambda: generation.write_samples(style_net, str(outdir), [0], columns=-1),
         r"invalid --columns=-1"),
        (lambda: generation.write_sheet(style_net, str(outdir), [0], display_size=-4),
         r"invalid --display_size=-4"),
        (lambda: generation.write_interpolation(style_net, str(outdir), [0]),
         r"interpolation needs at least 2 seeds, got \[0\]"),
        (lambda: generation.write_interpolation(style_net, str(outdir), [0, 1], fps=0),
         r"invalid --fps=0"),
        (lambda: generation.write_style_mixing(style_net, str(outdir), [0], [1],
                                               styles="fine"),
         r"--styles=fine selects no style layers"),
    ]
    for call, message in cases:
        with pytest.raises(generation.GenerationError, match=message):
            call()
    assert not outdir.exists()


# ---------------------------------------------------------------------------------------
# Numerics

def test_slerp_endpoints_midpoint_and_great_circle():
    rng = np.random.RandomState(0)
    a, b = rng.randn(16), 2.5 * rng.randn(16)
    np.testing.assert_allclose(generation.slerp(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(generation.slerp(a, b, 1.0), b, atol=1e-12)

    # The midpoint is (a + b) / (2 cos(omega / 2)).
    omega = np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    expected_norm = np.linalg.norm(a + b) / (2 * np.cos(omega / 2))
    np.testing.assert_allclose(np.linalg.norm(generation.slerp(a, b, 0.5)), expected_norm,
                               rtol=1e-12)

    # With equal norms the path stays on the sphere, in the plane of a and b, and its
    # angle from a grows linearly with t.
    b_unit = b / np.linalg.norm(b) * np.linalg.norm(a)
    t = np.linspace(0, 1, 11)
    path = generation.slerp(a, b_unit, t)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-12)
    basis, _ = np.linalg.qr(np.stack([a, b_unit], axis=1))
    np.testing.assert_allclose(path @ basis @ basis.T, path, atol=1e-12)
    angles = np.arccos(np.clip(path @ a / np.linalg.norm(a) ** 2, -1, 1))
    np.testing.assert_allclose(angles, t * omega, atol=1e-7)


def test_slerp_parallel_falls_back_to_linear():
    a = np.arange(1.0, 5.0)
    np.testing.assert_allclose(generation.slerp(a, 3 * a, 0.5), 2 * a)


def test_interpolation_path_loops_back():
    keys = np.random.RandomState(1).randn(3, 8)
    path = generation.interpolation_path(keys, 4, "z")
    assert path.shape == (12, 8)
    for index in range(3):
        np.testing.assert_allclose(path[4 * index], keys[index], rtol=1e-6)
    np.testing.assert_allclose(path[-1], generation.slerp(keys[2], keys[0], 0.75),
                               rtol=1e-5)

    ws = np.random.RandomState(2).randn(2, 4, 5)
    linear = generation.interpolation_path(ws, 2, "w")
    assert linear.shape == (4, 4, 5)
    np.testing.assert_allclose(linear[1], (ws[0] + ws[1]) / 2, rtol=1e-6)


def test_truncation_identity_and_average(style_net):
    G = style_net.G
    z = seed_latents([0, 1, 2])
    w_avg = G.w_avg.numpy()
    assert np.abs(w_avg).max() > 0, "training should have moved w_avg away from zero"

    untruncated = np.tile(G.mapping(z).numpy()[:, np.newaxis], [1, G.num_ws, 1])
    np.testing.assert_array_equal(generation.map_latents(style_net, z, 1.0), untruncated)
    averaged = generation.map_latents(style_net, z, 0.0)
    np.testing.assert_allclose(averaged, np.broadcast_to(w_avg, averaged.shape), atol=1e-6)
    half = generation.map_latents(style_net, z, 0.5, truncation_cutoff=4)
    np.testing.assert_allclose(half[:, :4], w_avg + 0.5 * (untruncated[:, :4] - w_avg),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(half[:, 4:], untruncated[:, 4:], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Figures

@pytest.mark.parametrize("arch", ["progan", "stylegan"])
def test_samples_grid_per_scale(arch, progan_net, style_net, tmp_path):
    network = style_net if arch == "stylegan" else progan_net
    outdir = tmp_path / "new" / "out"
    paths = generation.write_samples(network, str(outdir), [0, 1, 2, 3, 4], columns=3,
                                     individual=True)
    assert [os.path.basename(p) for p in paths] == [
        "samples-4x4.png", "samples-8x8.png", "samples-16x16.png", "samples-32x32.png",
        "seed0000.png", "seed0001.png", "seed0002.png", "seed0003.png", "seed0004.png"]
    assert sorted(os.listdir(outdir)) == sorted(os.path.basename(p) for p in paths)

    kwargs = {"noise_mode": "const"} if arch == "stylegan" else {}
    expected = [to_uint8(image.numpy())
                for image in network.G(seed_latents([0, 1, 2, 3, 4]), **kwargs)]
    for res, images in zip([4, 8, 16, 32], expected):
        grid = np.asarray(Image.open(outdir / f"samples-{res}x{res}.png"))
        assert grid.shape == (2 * res, 3 * res, 3)
        assert_close_uint8(grid[res:, :res], images[3])        # row 1, column 0: seed 3
        assert (grid[res:, 2 * res:] == generation.FILL_VALUE).all()  # no sixth image
    single = np.asarray(Image.open(outdir / "seed0004.png"))
    assert single.shape == (32, 32, 3)
    assert_close_uint8(single, expected[-1][4])


def test_samples_truncation_changes_stylegan_output(style_net):
    plain = generation.render_samples(style_net, [0, 1])[-1]
    truncated = generation.render_samples(style_net, [0, 1], truncation_psi=0.0)[-1]
    assert not np.array_equal(plain, truncated)
    # psi 0 maps both seeds to w_avg, and constant noise makes their images equal.
    np.testing.assert_array_equal(truncated[0], truncated[1])


@pytest.mark.parametrize("display_size", [0, 48])
def test_sheet_layout(progan_net, tmp_path, display_size):
    path = generation.write_sheet(progan_net, str(tmp_path), [0, 1, 2],
                                  display_size=display_size, separator=2)
    sheet = np.asarray(Image.open(path))
    size = display_size or 32
    assert sheet.shape == (4 * size + 3 * 2, 3 * size + 2 * 2, 3)
    assert (sheet[size:size + 2] == generation.FILL_VALUE).all()     # separator rows
    assert (sheet[:, size:size + 2] == generation.FILL_VALUE).all()  # separator columns

    images = generation.render_samples(progan_net, [0, 1, 2])
    if display_size == 0:
        # Row 0 contains the 4x4 images, each pixel repeated 8 x 8 times.
        first = np.repeat(np.repeat(images[0][1], 8, axis=0), 8, axis=1)
        np.testing.assert_array_equal(sheet[:32, 34:66], first)
        np.testing.assert_array_equal(sheet[-32:, -32:], images[-1][2])


def test_interpolation_gif_frames(style_net, tmp_path):
    paths = generation.write_interpolation(style_net, str(tmp_path), [0, 1, 2], space="w",
                                           frames_per_transition=3, fps=10, all_scales=True)
    assert [os.path.basename(p) for p in paths if p.endswith(".gif")] == [
        "interpolation.gif", "interpolation-all-scales.gif"]
    with Image.open(tmp_path / "interpolation.gif") as gif:
        assert gif.n_frames == 9
        assert gif.size == (32, 32)
        assert gif.info["duration"] == 100
        assert gif.info["loop"] == 0
    with Image.open(tmp_path / "interpolation-all-scales.gif") as gif:
        assert gif.n_frames == 9
        assert gif.size == (4 * 32 + 3 * 2, 32)


def test_interpolation_keyframes_are_the_seeds(progan_net):
    frames = generation.render_interpolation(progan_net, [4, 7], space="z",
                                             frames_per_transition=2)
    assert [f.shape for f in frames] == [(4, res, res, 3) for res in (4, 8, 16, 32)]
    samples = generation.render_samples(progan_net, [4, 7])[-1]
    assert_close_uint8(frames[-1][0], samples[0])
    assert_close_uint8(frames[-1][2], samples[1])
    assert not np.array_equal(frames[-1][1], frames[-1][0])


def test_style_mixing_cell_matches_mix_styles(style_net):
    G = style_net.G
    mixing = generation.render_style_mixing(style_net, [0, 1], [2, 3, 4], styles="middle")
    assert mixing.layers == (4, 7)
    assert mixing.cells.shape == (2, 3, 32, 32, 3)

    ws_rows = G.map(seed_latents([0, 1]))
    ws_columns = G.map(seed_latents([2, 3, 4]))
    mixed = mix_styles(ws_rows[1:2], ws_columns[2:3], 4, 8)
    expected = G.synthesize(mixed, noise_mode="const")[-1].numpy()[0]
    np.testing.assert_allclose(mixing.cells[1, 2], expected, atol=1e-5)
    row_image = G.synthesize(ws_rows[1:2], noise_mode="const")[-1].numpy()[0]
    np.testing.assert_allclose(mixing.row_images[1], row_image, atol=1e-5)

    figure = generation.compose_style_mixing(mixing, separator=0)
    assert figure.shape == (3 * 32, 4 * 32, 3)
    assert (figure[:32, :32] == generation.FILL_VALUE).all()
    np.testing.assert_array_equal(figure[:32, 96:], to_uint8(mixing.column_images[2]))
    np.testing.assert_array_equal(figure[64:, :32], to_uint8(mixing.row_images[1]))
    np.testing.assert_array_equal(figure[64:, 96:], to_uint8(mixing.cells[1, 2]))


def test_style_mixing_equal_latents_is_identity(style_net):
    mixing = generation.render_style_mixing(style_net, [5, 6], [5, 6], styles="0-7")
    np.testing.assert_array_equal(mixing.cells[0, 0], mixing.row_images[0])
    np.testing.assert_array_equal(mixing.cells[1, 1], mixing.row_images[1])
    # Taking every layer from the column makes each cell the column's image.
    np.testing.assert_array_equal(mixing.cells[0, 1], mixing.column_images[1])


def test_style_mixing_figure_file(style_net, tmp_path):
    path = generation.write_style_mixing(style_net, str(tmp_path), [0, 1], [2, 3, 4],
                                         styles="coarse", separator=2)
    assert os.path.basename(path) == "style-mixing-layers0-3.png"
    assert Image.open(path).size == (4 * 32 + 3 * 2, 3 * 32 + 2 * 2)


# ---------------------------------------------------------------------------------------
# SavedModel export

RELOAD_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class BlockRepository(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("msg_tf", "networks", "metrics", "tests"):
                raise ImportError(f"{name} must not be needed to load the SavedModel")
            return None

    sys.meta_path.insert(0, BlockRepository())
    import numpy as np
    import tensorflow as tf

    latents = np.load("latents.npy")
    results = {}
    for arch in ("style", "progan"):
        model = tf.saved_model.load(f"{arch}/saved_model")
        serve = model.signatures["serving_default"]
        for psi in (1.0, 0.5):
            if arch == "progan" and psi != 1.0:
                try:
                    serve(latents=latents, truncation_psi=tf.constant(psi))
                    results["progan_psi_error"] = np.array("none")
                except tf.errors.InvalidArgumentError as error:
                    results["progan_psi_error"] = np.array(error.message)
                continue
            for key, image in serve(latents=latents, truncation_psi=tf.constant(psi)).items():
                results[f"{arch}_{psi}_{key}"] = image.numpy()
        info = model.signatures["describe"]()
        results[f"{arch}_resolutions"] = info["resolutions"].numpy()
        results[f"{arch}_latent_size"] = info["latent_size"].numpy()
        results[f"{arch}_attribute_latent_size"] = model.latent_size.numpy()
    np.savez("outputs.npz", **results)
""")


def test_saved_model_reloads_without_repository(style_run, progan_net, tmp_path):
    # A fresh copy, because the constant input is changed below. In this barely trained
    # model the constant 4x4 input is still almost uniform. The first AdaIN divides by
    # its standard deviation of about 2e-5, which amplifies float32 rounding about 1e5
    # times, so Grappler's reordering of arithmetic alone moves the images by ~0.03.
    # A trained model's constant varies in space, and N(0, 1) stands in for it here.
    style_net = generation.load_network(style_run)
    const = style_net.G.const_input
    const.assign(np.random.RandomState(0).randn(*const.shape).astype(np.float32))

    for name, network in (("style", style_net), ("progan", progan_net)):
        path = generation.export_saved_model(network, str(tmp_path / name))
        assert path == str(tmp_path / name / "saved_model")
    assert sorted(os.listdir(tmp_path / "style")) == ["saved_model"]
    latents = seed_latents([0, 1, 2])
    np.save(tmp_path / "latents.npy", latents)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")

    # Grappler rewrites the SavedModel's graph (fused convolutions, reordered
    # arithmetic), so float32 rounding differs from the in-memory model. Measured on
    # these models: up to 1e-5 against eager execution and 2e-5 against the model in a
    # tf.function, with pre-clip values up to ~10. Hence 5e-5.
    G = style_net.G
    for psi in (1.0, 0.5):
        expected = G.synthesize(G.map(latents, psi), noise_mode="const")
        for res, image in zip([4, 8, 16, 32], expected):
            np.testing.assert_allclose(outputs[f"style_{psi}_image_{res}x{res}"],
                                       np.clip(image.numpy(), -1, 1), atol=5e-5)
    assert not np.allclose(outputs["style_1.0_image_32x32"], outputs["style_0.5_image_32x32"])
    np.testing.assert_array_equal(outputs["style_resolutions"], [4, 8, 16, 32])

    expected = progan_net.G(latents)
    for res, image in zip([4, 8, 16, 32], expected):
        np.testing.assert_allclose(outputs[f"progan_1.0_image_{res}x{res}"],
                                   np.clip(image.numpy(), -1, 1), atol=5e-5)
    assert "MSG-ProGAN has no truncation" in str(outputs["progan_psi_error"])
    np.testing.assert_array_equal(outputs["progan_resolutions"], [4, 8, 16, 32])
    assert int(outputs["progan_latent_size"]) == 32
    assert int(outputs["progan_attribute_latent_size"]) == 32


def test_export_keeps_foreign_folder(progan_net, tmp_path):
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "notes.txt").write_text("mine")
    with pytest.raises(generation.GenerationError,
                       match=r"saved_model exists and is not a SavedModel"):
        generation.export_saved_model(progan_net, str(tmp_path))
    assert os.listdir(tmp_path / "saved_model") == ["notes.txt"]


# ---------------------------------------------------------------------------------------
# Command line

def run_cli(*args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "generate.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_sheet_end_to_end(progan_run, tmp_path):
    outdir = tmp_path / "figures"
    result = run_cli("sheet", f"--network={progan_run}", f"--outdir={outdir}", "--seeds=0-2",
                     "--display_size=16", "--separator=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(outdir / "sheet.png")
    assert Image.open(outdir / "sheet.png").size == (3 * 16 + 2, 4 * 16 + 3)


def test_cli_bad_seeds_writes_nothing(progan_run, tmp_path):
    outdir = tmp_path / "figures"
    result = run_cli("samples", f"--network={progan_run}", f"--outdir={outdir}",
                     "--seeds=3-1", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: invalid --seeds='3-1': the range 3-1 ends before it starts" in result.stderr
    assert not outdir.exists()
