"""Tests of the TFRecord format, the dataset builder and dataset_tool.py, on the bundled emoji."""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msg_tf import dataset_builder
from msg_tf.image_loading import encode_image_chunk
from msg_tf.ordered_pool import OrderedPool
from msg_tf.tfrecord_format import (
    FEATURE_SPEC,
    DatasetError,
    build_pyramid,
    find_levels,
    labels_file_name,
    level_file_name,
    parse_example_numpy,
    serialize_example,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI_DIR = os.path.join(REPO_ROOT, "data", "emoji64")
EMOJI_FILES = sorted(glob.glob(os.path.join(EMOJI_DIR, "*.png")))


def load_emoji(index: int) -> Image.Image:
    with Image.open(EMOJI_FILES[index]) as image:
        return image.convert("RGB")


def read_level(path: str) -> list[np.ndarray]:
    return [parse_example_numpy(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def leftover_temp_dirs(parent: str) -> list[str]:
    return glob.glob(os.path.join(parent, "*.tmp-*")) + glob.glob(os.path.join(parent, "*.old-*"))


def box_average_reference(image_chw: np.ndarray) -> np.ndarray:
    channels, height, width = image_chw.shape
    blocks = image_chw.astype(np.float64).reshape(channels, height // 2, 2, width // 2, 2)
    return np.rint(blocks.mean(axis=(2, 4))).clip(0, 255).astype(np.uint8)


@pytest.fixture
def mixed_dir(tmp_path):
    """An image folder with mixed sizes and modes, one truncated PNG, a text file and subfolders."""
    root = tmp_path / "images"
    nested = root / "nested" / "deeper"
    nested.mkdir(parents=True)

    load_emoji(0).save(root / "a_rgb.png")
    load_emoji(1).resize((100, 80), Image.Resampling.LANCZOS).save(root / "b_nonsquare.png")
    load_emoji(2).convert("L").save(root / "c_gray.png")

    la = load_emoji(3).convert("LA")
    la.putpixel((0, 0), (0, 0))  # fully transparent black
    la.save(root / "d_gray_alpha.png")

    load_emoji(4).quantize(colors=64).save(root / "e_palette.png")

    rgba = load_emoji(5).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(root / "f_rgba.png")

    gray16 = (np.asarray(load_emoji(6).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    gray16[0, 0] = 65280  # value / 257 = 254.0, while truncation (>> 8) would give 255
    Image.fromarray(gray16).save(root / "g_gray16.png")

    with open(EMOJI_FILES[7], "rb") as f:
        png_bytes = f.read()
    (root / "h_truncated.png").write_bytes(png_bytes[: len(png_bytes) // 2])

    (root / "notes.txt").write_text("not an image\n")
    load_emoji(8).save(nested / "i_nested.JPG", quality=95)
    return root


# ---------------------------------------------------------------------------
# tfrecord_format


def test_level_and_labels_file_names():
    assert level_file_name("ffhq", 2) == "ffhq-r02.tfrecords"
    assert level_file_name("ffhq", 10) == "ffhq-r10.tfrecords"
    assert labels_file_name("ffhq") == "ffhq-rxx.labels"


def test_pyramid_levels_are_box_averages():
    image = np.asarray(load_emoji(10)).transpose(2, 0, 1).copy()
    levels = build_pyramid(image)

    assert [level.shape for level in levels] == [(3, 2**k, 2**k) for k in (6, 5, 4, 3, 2)]
    assert levels[0] is image
    for finer, coarser in zip(levels, levels[1:]):
        assert coarser.dtype == np.uint8
        np.testing.assert_array_equal(coarser, box_average_reference(finer))


def test_pyramid_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        build_pyramid(np.zeros((3, 48, 48), np.uint8))


def test_serialize_parse_round_trip():
    rgb = np.asarray(load_emoji(11)).transpose(2, 0, 1).copy()
    gray = np.asarray(load_emoji(12).convert("L"))[np.newaxis].copy()
    for image in (rgb, gray):
        parsed = parse_example_numpy(serialize_example(image))
        assert parsed.dtype == np.uint8
        np.testing.assert_array_equal(parsed, image)


@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 64, 64), (1, 256, 256)])
def test_serialize_matches_tensorflow(shape):
    # 3x64x64 and 1x256x256 need 2- and 3-byte length varints, and a 256 side a 2-byte one.
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    reference = tf.train.Example(
        features=tf.train.Features(
            feature={
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(shape))),
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
            }
        )
    )
    assert serialize_example(image) == reference.SerializeToString(deterministic=True)
    # A strided view is encoded like its contiguous copy.
    view = image[:, ::2, ::2]
    assert serialize_example(view) == serialize_example(np.ascontiguousarray(view))


def test_parse_rejects_wrong_data_length():
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[3, 4, 4])),
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\0" * 47])),
            }
        )
    )
    with pytest.raises(DatasetError, match="does not match its 47 data bytes"):
        parse_example_numpy(example.SerializeToString())


def touch_levels(directory, name, res_log2s):
    directory.mkdir(exist_ok=True)
    for res_log2 in res_log2s:
        (directory / level_file_name(name, res_log2)).write_bytes(b"")


def test_find_levels_valid(tmp_path):
    touch_levels(tmp_path, "faces", [2, 3, 4])
    (tmp_path / labels_file_name("faces")).write_bytes(b"")
    name, levels = find_levels(tmp_path)
    assert name == "faces"
    assert list(levels) == [2, 3, 4]
    assert levels[4] == os.path.join(tmp_path, "faces-r04.tfrecords")


def test_find_levels_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found") as error:
        find_levels(tmp_path / "missing")
    assert "missing" in str(error.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no level files"):
        find_levels(empty)

    mixed = tmp_path / "mixed"
    touch_levels(mixed, "cats", [2, 3])
    touch_levels(mixed, "dogs", [2, 3])
    with pytest.raises(DatasetError, match="several datasets.*'cats', 'dogs'"):
        find_levels(mixed)

    gap = tmp_path / "gap"
    touch_levels(gap, "cats", [2, 3, 5])
    with pytest.raises(DatasetError, match="missing cats-r04.tfrecords"):
        find_levels(gap)

    no_base = tmp_path / "no_base"
    touch_levels(no_base, "cats", [3, 4])
    with pytest.raises(DatasetError, match="missing cats-r02.tfrecords"):
        find_levels(no_base)


# ---------------------------------------------------------------------------
# Conversions


def test_sixteen_bit_scaled_by_257(tmp_path):
    values = np.array([[0, 1000, 32896, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as image:
        assert image.mode == "I;16"
        converted, label = dataset_builder.convert_mode(image, channels=1)

    assert label == "I;16->L"
    # Truncation to the high byte would give [0, 3, 128, 255, 255].
    np.testing.assert_array_equal(np.asarray(converted), [[0, 4, 128, 254, 255]])


def test_rgba_composited_on_white():
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 128), (10, 20, 30, 255), (0, 0, 0, 255)])
    converted, label = dataset_builder.convert_mode(rgba, channels=3)

    assert label == "RGBA->RGB"
    pixels = np.asarray(converted).astype(int)
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])
    # Half-transparent black over white: 255 * (1 - 128/255) = 127.
    assert np.all(np.abs(pixels[0, 1] - 127) <= 1)
    np.testing.assert_array_equal(pixels[0, 2], [10, 20, 30])
    np.testing.assert_array_equal(pixels[0, 3], [0, 0, 0])


def test_palette_transparency_and_la_on_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    converted, _ = dataset_builder.convert_mode(palette, channels=3)
    np.testing.assert_array_equal(np.asarray(converted)[0], [[255, 255, 255], [200, 10, 10]])

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    converted, label = dataset_builder.convert_mode(la, channels=1)
    assert label == "LA->L"
    np.testing.assert_array_equal(np.asarray(converted), [[255, 40]])


def test_colour_to_one_channel_uses_luma():
    rgb = Image.new("RGB", (3, 1))
    rgb.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    converted, label = dataset_builder.convert_mode(rgb, channels=1)
    assert label == "RGB->L"
    # ITU-R 601-2 luma weights 0.299, 0.587, 0.114.
    np.testing.assert_array_equal(np.asarray(converted), [[76, 150, 29]])

    gray = Image.new("L", (1, 1), 77)
    converted, label = dataset_builder.convert_mode(gray, channels=3)
    assert label == "L->RGB"
    np.testing.assert_array_equal(np.asarray(converted)[0, 0], [77, 77, 77])


def test_fit_to_square_centre_crops():
    wide = Image.new("L", (12, 8), 0)
    wide.paste(255, (2, 0, 10, 8))  # the centre 8x8 square is white
    fitted, changed = dataset_builder.fit_to_square(wide, 8)
    assert changed
    assert fitted.size == (8, 8)
    assert np.all(np.asarray(fitted) == 255)

    same, changed = dataset_builder.fit_to_square(Image.new("L", (8, 8)), 8)
    assert not changed


# ---------------------------------------------------------------------------
# create_from_images


def test_create_mixed_folder_with_skip_bad(mixed_dir, tmp_path, caplog):
    out = tmp_path / "mixed"
    with caplog.at_level(logging.INFO, logger="absl"):
        report = dataset_builder.create_from_images(
            str(out), str(mixed_dir), resolution=64, skip_bad=True
        )

    assert report.images_written == 8
    assert report.skipped_bad == [str(mixed_dir / "h_truncated.png")]
    assert "h_truncated.png" in caplog.text
    assert report.resized_or_cropped == 1
    assert report.ignored_files == [str(mixed_dir / "notes.txt")]
    assert report.channels == 3
    assert report.levels == [2, 3, 4, 5, 6]
    assert report.input_modes == {"RGB": 3, "L": 1, "LA": 1, "P": 1, "RGBA": 1, "I;16": 1}
    assert report.conversions == {
        "L->RGB": 1, "LA->RGB": 1, "P->RGB": 1, "RGBA->RGB": 1, "I;16->RGB": 1
    }
    assert "skipped (bad):       1" in caplog.text

    name, levels = find_levels(out)
    assert name == "mixed"
    assert list(levels) == [2, 3, 4, 5, 6]
    assert leftover_temp_dirs(str(tmp_path)) == []

    top = read_level(levels[6])
    assert len(top) == 8
    # Sorted walk order: the nested JPEG comes last, after the top-level files.
    np.testing.assert_array_equal(top[0], np.asarray(load_emoji(0)).transpose(2, 0, 1))
    # The transparent corner of the LA and RGBA images became white.
    np.testing.assert_array_equal(top[3][:, 0, 0], [255, 255, 255])
    np.testing.assert_array_equal(top[5][:, 0, 0], [255, 255, 255])
    # 16-bit pixel 65280 became 254, replicated into three channels.
    np.testing.assert_array_equal(top[6][:, 0, 0], [254, 254, 254])

    # Every stored level is the box average of the stored level above it.
    for res_log2 in range(2, 6):
        finer = read_level(levels[res_log2 + 1])
        coarser = read_level(levels[res_log2])
        assert len(coarser) == 8
        for fine_image, coarse_image in zip(finer, coarser):
            np.testing.assert_array_equal(coarse_image, box_average_reference(fine_image))


def test_create_bad_image_without_skip_bad(mixed_dir, tmp_path):
    out = tmp_path / "mixed"
    with pytest.raises(DatasetError, match="h_truncated.png") as error:
        dataset_builder.create_from_images(str(out), str(mixed_dir), resolution=64)
    assert "--skip_bad" in str(error.value)
    assert not out.exists()
    assert leftover_temp_dirs(str(tmp_path)) == []


def test_create_needs_resolution_for_mixed_sizes(mixed_dir, tmp_path):
    with pytest.raises(DatasetError, match="b_nonsquare.png' is 100x80") as error:
        dataset_builder.create_from_images(str(tmp_path / "out"), str(mixed_dir), skip_bad=True)
    assert "--resolution" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_create_rejects_invalid_flags(tmp_path):
    with pytest.raises(DatasetError, match="--resolution=48"):
        dataset_builder.create_from_images(str(tmp_path / "out"), EMOJI_DIR, resolution=48)
    with pytest.raises(DatasetError, match="--channels=2"):
        dataset_builder.create_from_images(str(tmp_path / "out"), EMOJI_DIR, channels=2)


def make_emoji_subset(directory, indices, mode="RGB"):
    directory.mkdir()
    for index in indices:
        load_emoji(index).convert(mode).save(directory / f"{index:04d}.png")
    return directory


def test_create_defaults_grayscale_one_channel(tmp_path):
    images = make_emoji_subset(tmp_path / "gray", range(20, 24), mode="L")
    report = dataset_builder.create_from_images(str(tmp_path / "out"), str(images))

    assert report.channels == 1
    assert report.resolution == 64
    assert report.conversions == {}
    _, levels = find_levels(tmp_path / "out")
    first = read_level(levels[6])[0]
    assert first.shape == (1, 64, 64)
    np.testing.assert_array_equal(first[0], np.asarray(load_emoji(20).convert("L")))


def test_create_resizes_to_requested_resolution(tmp_path):
    images = make_emoji_subset(tmp_path / "images", range(30, 33))
    report = dataset_builder.create_from_images(
        str(tmp_path / "out"), str(images), resolution=16, channels=1
    )
    assert report.resized_or_cropped == 3
    assert report.conversions == {"RGB->L": 3}
    _, levels = find_levels(tmp_path / "out")
    assert list(levels) == [2, 3, 4]
    assert read_level(levels[4])[0].shape == (1, 16, 16)


def test_create_shuffle_is_deterministic(tmp_path):
    images = make_emoji_subset(tmp_path / "images", range(40, 50))
    dataset_builder.create_from_images(str(tmp_path / "a"), str(images), shuffle=True, seed=7)
    dataset_builder.create_from_images(str(tmp_path / "b"), str(images), shuffle=True, seed=7)

    shuffled = read_level(find_levels(tmp_path / "a")[1][6])
    again = read_level(find_levels(tmp_path / "b")[1][6])
    order = np.random.RandomState(7).permutation(10)
    assert not np.array_equal(order, np.arange(10))
    for position, source_index in enumerate(order):
        expected = np.asarray(load_emoji(40 + source_index)).transpose(2, 0, 1)
        np.testing.assert_array_equal(shuffled[position], expected)
        np.testing.assert_array_equal(again[position], expected)


def test_create_overwrite(tmp_path):
    images = make_emoji_subset(tmp_path / "images", range(50, 53))
    out = tmp_path / "out"
    dataset_builder.create_from_images(str(out), str(images))

    with pytest.raises(DatasetError, match="--overwrite") as error:
        dataset_builder.create_from_images(str(out), str(images))
    assert str(out) in str(error.value)

    (images / "0050.png").unlink()
    report = dataset_builder.create_from_images(str(out), str(images), overwrite=True)
    assert report.images_written == 2
    assert len(read_level(find_levels(out)[1][6])) == 2
    assert sorted(os.listdir(out)) == [level_file_name("out", r) for r in range(2, 7)]
    assert leftover_temp_dirs(str(tmp_path)) == []

    (out / "readme.md").write_text("my notes\n")
    with pytest.raises(DatasetError, match="not part of a dataset.*readme.md"):
        dataset_builder.create_from_images(str(out), str(images), overwrite=True)
    assert (out / "readme.md").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupt_keeps_previous_dataset(tmp_path, monkeypatch, jobs):
    images = make_emoji_subset(tmp_path / "images", range(60, 65))
    out = tmp_path / "out"
    dataset_builder.create_from_images(str(out), str(images), jobs=jobs)
    before = sorted(os.listdir(out))

    original_map = OrderedPool.map

    def map_then_interrupt(self, function, items, chunk_size):
        # Ctrl+C while this process writes the third image, after two are written.
        results = original_map(self, function, items, chunk_size)
        for count, result in enumerate(results, start=1):
            if function.func is encode_image_chunk and count == 3:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(OrderedPool, "map", map_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dataset_builder.create_from_images(str(out), str(images), overwrite=True, jobs=jobs)
    with pytest.raises(KeyboardInterrupt):
        dataset_builder.create_from_images(str(tmp_path / "fresh"), str(images), jobs=jobs)

    assert sorted(os.listdir(out)) == before
    assert len(read_level(find_levels(out)[1][6])) == 5
    assert not (tmp_path / "fresh").exists()
    assert leftover_temp_dirs(str(tmp_path)) == []


@pytest.fixture
def varied_dir(mixed_dir):
    """The mixed folder plus 24 emoji, two of them grayscale and one with alpha."""
    for index in range(100, 124):
        mode = {100: "L", 110: "L", 120: "RGBA"}.get(index, "RGB")
        load_emoji(index).convert(mode).save(mixed_dir / f"k{index}.png")
    return mixed_dir


def build_and_read(out, images, **kwargs):
    """Build a dataset and return its report and the bytes of each of its files by name."""
    report = dataset_builder.create_from_images(str(out), str(images), **kwargs)
    files = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}
    return report, files


@pytest.fixture
def pool_sizes(monkeypatch):
    """The `workers` of every OrderedPool created while the test runs."""
    sizes = []
    original_init = OrderedPool.__init__

    def recording_init(self, workers):
        original_init(self, workers)
        sizes.append(self.workers)

    monkeypatch.setattr(OrderedPool, "__init__", recording_init)
    return sizes


@pytest.mark.parametrize("shuffle", [False, True])
def test_jobs_give_identical_files(varied_dir, tmp_path, pool_sizes, shuffle):
    options = dict(resolution=32, skip_bad=True, shuffle=shuffle, seed=5)
    inline_report, inline_files = build_and_read(tmp_path / "ds1", varied_dir, jobs=1, **options)
    pool_report, pool_files = build_and_read(tmp_path / "ds2", varied_dir, jobs=2, **options)
    assert pool_sizes == [1, 2]

    assert list(inline_files) == [f"ds1-r0{r}.tfrecords" for r in range(2, 6)]
    for res_log2 in range(2, 6):
        inline_level = inline_files[f"ds1-r0{res_log2}.tfrecords"]
        pool_level = pool_files[f"ds2-r0{res_log2}.tfrecords"]
        assert len(inline_level) > 0
        assert inline_level == pool_level, f"level r0{res_log2} differs between jobs=1 and 2"

    assert inline_report.images_written == pool_report.images_written == 32
    assert inline_report.input_modes == pool_report.input_modes
    assert inline_report.input_modes["RGBA"] == 2
    assert inline_report.conversions == pool_report.conversions
    assert inline_report.conversions["L->RGB"] == 3
    assert inline_report.resized_or_cropped == pool_report.resized_or_cropped == 32
    bad = [str(varied_dir / "h_truncated.png")]
    assert inline_report.skipped_bad == pool_report.skipped_bad == bad


def test_shuffle_order_with_jobs(tmp_path):
    images = make_emoji_subset(tmp_path / "images", range(130, 150))
    dataset_builder.create_from_images(str(tmp_path / "out"), str(images), shuffle=True, jobs=2)

    stored = read_level(find_levels(tmp_path / "out")[1][6])
    order = np.random.RandomState(dataset_builder.DEFAULT_SEED).permutation(20)
    for position, source_index in enumerate(order):
        expected = np.asarray(load_emoji(130 + source_index)).transpose(2, 0, 1)
        np.testing.assert_array_equal(stored[position], expected)


def test_jobs_bad_image_same_error(varied_dir, tmp_path):
    # A second bad file, later in walk order, so that the first one must be reported.
    (varied_dir / "k999_empty.png").write_bytes(b"")
    messages = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        with pytest.raises(DatasetError) as error:
            dataset_builder.create_from_images(str(out), str(varied_dir), jobs=jobs)
        messages[jobs] = str(error.value)
        assert not out.exists()
    assert messages[2] == messages[1]
    assert messages[1].startswith(f"cannot read image {str(varied_dir / 'h_truncated.png')!r}")
    assert "--skip_bad" in messages[1]
    assert leftover_temp_dirs(str(tmp_path)) == []


def test_jobs_image_unreadable_after_scan(tmp_path, monkeypatch):
    images = make_emoji_subset(tmp_path / "images", range(150, 170))
    broken = images / "0160.png"
    original_scan = dataset_builder.scan_images

    def scan_then_truncate(*args, **kwargs):
        result = original_scan(*args, **kwargs)
        broken.write_bytes(broken.read_bytes()[:100])
        return result

    monkeypatch.setattr(dataset_builder, "scan_images", scan_then_truncate)
    original_bytes = broken.read_bytes()
    messages = {}
    for jobs in (1, 2):
        broken.write_bytes(original_bytes)
        out = tmp_path / f"out{jobs}"
        with pytest.raises(DatasetError) as error:
            dataset_builder.create_from_images(str(out), str(images), jobs=jobs)
        messages[jobs] = str(error.value)
        assert not out.exists()
    assert messages[2] == messages[1]
    assert messages[1].startswith(f"cannot read image {str(broken)!r}")
    assert leftover_temp_dirs(str(tmp_path)) == []


def test_create_rejects_negative_jobs(tmp_path):
    with pytest.raises(DatasetError, match=r"invalid --jobs=-1; expected 0 \(one worker"):
        dataset_builder.create_from_images(str(tmp_path / "out"), EMOJI_DIR, jobs=-1)
    assert not (tmp_path / "out").exists()


def test_resolve_jobs_and_chunk_size():
    assert dataset_builder.resolve_jobs(0) == len(os.sched_getaffinity(0))
    assert dataset_builder.resolve_jobs(3) == 3
    assert dataset_builder.chunk_size(10_000, 2) == dataset_builder.MAX_CHUNK_IMAGES
    # Four chunks per worker for small folders: ceil(36 / 8) = 5.
    assert dataset_builder.chunk_size(36, 2) == 5
    assert dataset_builder.chunk_size(1, 4) == 1
    # 1024x1024 RGB pyramids: 4 MiB each, so 4 fit the 16 MiB chunk budget.
    pyramid_bytes = 3 * 1024 * 1024 * 4 // 3
    assert dataset_builder.chunk_size(10_000, 2, pyramid_bytes) == 4


def test_create_input_dir_errors(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DatasetError, match="not found") as error:
        dataset_builder.create_from_images(str(tmp_path / "out"), str(missing))
    assert str(missing) in str(error.value)

    no_images = tmp_path / "texts"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("not an image\n")
    with pytest.raises(DatasetError, match="no usable images") as error:
        dataset_builder.create_from_images(str(tmp_path / "out"), str(no_images))
    assert str(no_images) in str(error.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Reading back: tf.data, info, extract


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    images = make_emoji_subset(root / "images", range(70, 76))
    dataset_builder.create_from_images(str(root / "emoji"), str(images))
    return root / "emoji"


def test_levels_readable_with_tf_data(small_dataset):
    _, levels = find_levels(small_dataset)
    for res_log2, path in levels.items():
        dataset = tf.data.TFRecordDataset(path).map(
            lambda record: tf.io.parse_single_example(record, FEATURE_SPEC)
        )
        count = 0
        for features in dataset:
            shape = features["shape"].numpy()
            pixels = tf.io.decode_raw(features["data"], tf.uint8).numpy().reshape(shape)
            assert list(shape) == [3, 2**res_log2, 2**res_log2]
            if res_log2 == 6 and count == 0:
                expected = np.asarray(load_emoji(70)).transpose(2, 0, 1)
                np.testing.assert_array_equal(pixels, expected)
            count += 1
        assert count == 6


def test_describe_dataset(small_dataset):
    labels = np.eye(6, 4, dtype=np.float32)
    labels_path = small_dataset / labels_file_name("emoji")
    np.save(open(labels_path, "wb"), labels)
    try:
        info = dataset_builder.describe_dataset(str(small_dataset))
    finally:
        labels_path.unlink()

    assert info.name == "emoji"
    assert [level.res_log2 for level in info.levels] == [2, 3, 4, 5, 6]
    assert [level.num_records for level in info.levels] == [6] * 5
    assert info.levels[-1].shape == [3, 64, 64]
    assert info.labels_shape == (6, 4)
    text = info.summary()
    assert "r06   64x64   records=6 shape=[3, 64, 64]" in text
    assert "labels: emoji-rxx.labels shape=[6, 4] dtype=float32" in text


def test_extract_dataset(small_dataset, tmp_path):
    out = tmp_path / "png"
    counts = dataset_builder.extract_dataset(str(small_dataset), str(out))
    assert counts == {2: 6, 3: 6, 4: 6, 5: 6, 6: 6}
    assert sorted(os.listdir(out)) == ["r02", "r03", "r04", "r05", "r06"]
    assert sorted(os.listdir(out / "r04")) == [f"{i:06d}.png" for i in range(6)]

    records = read_level(find_levels(small_dataset)[1][3])
    with Image.open(out / "r03" / "000005.png") as image:
        assert image.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(image).transpose(2, 0, 1), records[5])

    with pytest.raises(DatasetError, match="--overwrite"):
        dataset_builder.extract_dataset(str(small_dataset), str(out))


# ---------------------------------------------------------------------------
# dataset_tool.py end to end


def run_tool(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "dataset_tool.py"), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )


def test_cli_create_and_info(mixed_dir, tmp_path):
    out = tmp_path / "cli"
    result = run_tool(
        "create_from_images", out, mixed_dir, "--resolution=64", "--skip_bad",
        "--progress_interval=4",
    )
    assert result.returncode == 0, result.stderr
    assert "h_truncated.png" in result.stderr
    assert "images written:      8" in result.stderr
    assert "wrote 4 / 8 images" in result.stderr
    assert "levels:              5 (4, 8, 16, 32, 64), 3 channel(s)" in result.stderr

    result = run_tool("info", out)
    assert result.returncode == 0, result.stderr
    assert "r02    4x4    records=8 shape=[3, 4, 4]" in result.stdout
    assert "labels: none" in result.stdout


@pytest.mark.parametrize("jobs", [1, 2])
def test_cli_bad_image_error(mixed_dir, tmp_path, jobs):
    out = tmp_path / "cli"
    result = run_tool("create_from_images", out, mixed_dir, "--resolution=64", f"--jobs={jobs}")
    assert result.returncode == 1
    assert "error: cannot read image" in result.stderr
    assert "h_truncated.png" in result.stderr
    assert "--skip_bad" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert leftover_temp_dirs(str(tmp_path)) == []


def test_cli_exist_ok_keeps_dataset(small_dataset, tmp_path):
    before = {name: os.path.getmtime(os.path.join(small_dataset, name))
              for name in os.listdir(small_dataset)}
    result = run_tool("create_from_images", small_dataset, tmp_path, "--exist_ok")
    assert result.returncode == 0, result.stderr
    assert "already exists; left unchanged (--exist_ok)" in result.stderr
    after = {name: os.path.getmtime(os.path.join(small_dataset, name))
             for name in os.listdir(small_dataset)}
    assert after == before

    not_a_dataset = tmp_path / "notes"
    not_a_dataset.mkdir()
    (not_a_dataset / "readme.txt").write_text("not a dataset")
    result = run_tool("create_from_images", not_a_dataset, tmp_path, "--exist_ok")
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert str(not_a_dataset) in result.stderr
