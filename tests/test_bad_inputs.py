"""Bad inputs to the dataset tool and the dataset reader, each with its message or outcome."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from msg_tf import dataset as dataset_lib
from msg_tf import dataset_builder
from msg_tf.tfrecord_format import (
    DatasetError,
    build_pyramid,
    find_levels,
    labels_file_name,
    level_file_name,
    parse_example_numpy,
    serialize_example,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "data", "emoji64", "*.png")))


def load_emoji(index: int, size: int = 64) -> Image.Image:
    with Image.open(EMOJI_FILES[index]) as image:
        image = image.convert("RGB")
    if size != 64:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def chw(image: Image.Image) -> np.ndarray:
    return np.asarray(image).transpose(2, 0, 1)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """Encode a PNG by hand, so tests can declare any size or bit depth in the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def leftovers(parent) -> list[str]:
    return glob.glob(os.path.join(parent, "*.tmp-*")) + glob.glob(os.path.join(parent, "*.old-*"))


def read_level(path: str) -> list[np.ndarray]:
    return [parse_example_numpy(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def run_tool(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "dataset_tool.py"), *map(os.fsencode, args)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )


@pytest.fixture
def image_dir(tmp_path):
    """A folder with two good 16x16 emoji, to which each test adds its bad file."""
    root = tmp_path / "images"
    root.mkdir()
    load_emoji(0, 16).save(root / "a_good.png")
    load_emoji(1, 16).save(root / "b_good.png")
    return root


# ---------------------------------------------------------------------------
# create_from_images: folders without usable images


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="contains no files") as error:
        dataset_builder.create_from_images(str(out), str(empty))
    assert repr(str(empty)) in str(error.value)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_folder_without_images(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image\n")
    (texts / "table.csv").write_text("a,b\n")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="2 files but none with an image extension") as error:
        dataset_builder.create_from_images(str(out), str(texts))
    assert ".png" in str(error.value)
    assert "notes.txt" in str(error.value)
    assert not out.exists()


def test_folder_of_only_bad_images_with_skip_bad(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="all 1 image files are unreadable") as error:
        dataset_builder.create_from_images(str(out), str(images), skip_bad=True)
    assert "empty.png" in str(error.value)
    assert not out.exists()


# ---------------------------------------------------------------------------
# create_from_images: unreadable image files


def truncated_png() -> bytes:
    with open(EMOJI_FILES[2], "rb") as file:
        data = file.read()
    return data[: len(data) // 2]


BAD_FILES = [
    ("zero_byte.png", lambda: b"", r"UnidentifiedImageError: cannot identify image file"),
    ("truncated.png", truncated_png, r"OSError: image file is truncated"),
    ("text.png", lambda: b"hello, not a PNG\n", r"UnidentifiedImageError: cannot identify"),
    (
        "bomb.png",
        lambda: png_bytes(100_000, 100_000, 8, 2, b""),
        r"declares too many pixels.*10000000000 pixels.*MAX_IMAGE_PIXELS = 89478485",
    ),
    (
        # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; it is rejected as well.
        "bomb_warning_range.png",
        lambda: png_bytes(10_000, 10_000, 8, 2, b""),
        r"declares too many pixels.*100000000 pixels",
    ),
]


@pytest.mark.parametrize("file_name,make_bytes,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_image_rejected(image_dir, tmp_path, file_name, make_bytes, message):
    bad_path = image_dir / file_name
    bad_path.write_bytes(make_bytes())
    out = tmp_path / "out"

    with pytest.raises(DatasetError, match=message) as error:
        dataset_builder.create_from_images(str(out), str(image_dir))
    assert repr(str(bad_path)) in str(error.value)
    assert "--skip_bad" in str(error.value)
    assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("file_name,make_bytes,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_image_skipped(image_dir, tmp_path, caplog, file_name, make_bytes, message):
    bad_path = image_dir / file_name
    bad_path.write_bytes(make_bytes())
    out = tmp_path / "out"

    with caplog.at_level(logging.INFO, logger="absl"):
        report = dataset_builder.create_from_images(str(out), str(image_dir), skip_bad=True)
    assert report.skipped_bad == [str(bad_path)]
    assert report.images_written == 2
    assert f"skipping bad image {str(bad_path)!r}" in caplog.text
    assert f"skipped bad image:   {str(bad_path)!r}" in caplog.text
    assert len(read_level(find_levels(out)[1][4])) == 2


# ---------------------------------------------------------------------------
# create_from_images: modes, bit depths and orientation


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    original = load_emoji(3, 32)
    original.convert("CMYK").save(images / "cmyk.jpg", quality=95)

    report = dataset_builder.create_from_images(str(tmp_path / "out"), str(images))
    assert report.input_modes == {"CMYK": 1}
    assert report.conversions == {"CMYK->RGB": 1}
    assert report.channels == 3

    stored = read_level(find_levels(tmp_path / "out")[1][5])[0].astype(float)
    # JPEG is lossy, so the round trip is close but not exact.
    assert np.abs(stored - chw(original)).mean() < 2.0


def test_sixteen_bit_grayscale_scaled_by_257(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    values = np.full((4, 4), 65535, dtype=np.uint16)
    values[0, :4] = [0, 1000, 32896, 65280]
    Image.fromarray(values).save(images / "gray16.png")

    report = dataset_builder.create_from_images(str(tmp_path / "out"), str(images))
    assert report.input_modes == {"I;16": 1}
    assert report.channels == 1
    stored = read_level(find_levels(tmp_path / "out")[1][2])[0]
    # Keeping the high byte would give [0, 3, 128, 255].
    np.testing.assert_array_equal(stored[0, 0], [0, 4, 128, 254])


def test_sixteen_bit_rgb_keeps_high_byte(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    samples = np.full((4, 4, 3), 65535, dtype=">u2")
    samples[0, 0] = [0, 257, 65280]
    samples[0, 1] = [32896, 255, 1000]
    rows = b"".join(b"\0" + row.tobytes() for row in samples)  # filter type 0 per row
    (images / "rgb16.png").write_bytes(png_bytes(4, 4, 16, 2, rows))

    report = dataset_builder.create_from_images(str(tmp_path / "out"), str(images))
    # Pillow has no 16-bit RGB mode and decodes the file as 8-bit RGB.
    assert report.input_modes == {"RGB": 1}
    stored = read_level(find_levels(tmp_path / "out")[1][2])[0]
    np.testing.assert_array_equal(stored[:, 0, 0], [0, 1, 255])
    np.testing.assert_array_equal(stored[:, 0, 1], [128, 0, 3])


@pytest.mark.parametrize(
    "orientation,stored_transpose,upright_transpose",
    [
        (6, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_90),
    ],
)
def test_exif_orientation_applied(tmp_path, orientation, stored_transpose, upright_transpose):
    # Upright, the photo is 32 wide and 64 tall with an emoji in its centre square.
    upright = Image.new("RGB", (32, 64), (255, 255, 255))
    upright.paste(load_emoji(4, 32), (0, 16))
    # A camera stores the sensor's pixels (64 wide) and an EXIF tag for turning them upright.
    exif = Image.Exif()
    exif[0x0112] = orientation
    images = tmp_path / "images"
    images.mkdir()
    photo = images / "photo.jpg"
    upright.transpose(stored_transpose).save(photo, quality=95, exif=exif.tobytes())

    infos, _ = dataset_builder.scan_images([str(photo)], skip_bad=False)
    assert (infos[0].width, infos[0].height) == (32, 64)

    dataset_builder.create_from_images(str(tmp_path / "out"), str(images), resolution=32)
    stored = read_level(find_levels(tmp_path / "out")[1][5])[0]
    # Comparing with the decoded JPEG pixels, turned by hand, keeps JPEG loss out of the check.
    with Image.open(photo) as decoded:
        decoded = decoded.convert("RGB")
    upright_centre = decoded.transpose(upright_transpose).crop((0, 16, 32, 48))
    np.testing.assert_array_equal(stored, chw(upright_centre))
    unrotated_centre = decoded.crop((16, 0, 48, 32))
    assert np.abs(stored.astype(int) - chw(unrotated_centre)).mean() > 20


# ---------------------------------------------------------------------------
# create_from_images: the folder walk and file names


def test_symlink_loops_end_walk(image_dir, tmp_path, caplog):
    sub = image_dir / "sub"
    sub.mkdir()
    load_emoji(5, 16).save(sub / "c_nested.png")
    os.symlink("..", sub / "loop_to_parent")
    os.symlink(".", sub / "loop_to_self")
    os.symlink("sub", image_dir / "z_second_link")
    os.symlink("self_link.png", image_dir / "self_link.png")

    with caplog.at_level(logging.INFO, logger="absl"):
        report = dataset_builder.create_from_images(
            str(tmp_path / "out"), str(image_dir), skip_bad=True
        )
    assert report.images_written == 3
    # A link that points to itself cannot be opened, so it counts as a bad image.
    assert report.skipped_bad == [str(image_dir / "self_link.png")]
    assert "Too many levels of symbolic links" in caplog.text
    for link in ("sub/loop_to_parent", "sub/loop_to_self", "z_second_link"):
        assert f"skipping {str(image_dir / link)!r}: it links to" in caplog.text
    assert "already walked (symlink loop or duplicate link)" in caplog.text


def test_symlinked_folder_is_followed(image_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load_emoji(6, 16).save(elsewhere / "c_linked.png")
    os.symlink(elsewhere, image_dir / "linked")

    report = dataset_builder.create_from_images(str(tmp_path / "out"), str(image_dir))
    assert report.images_written == 3


def test_non_utf8_and_spaced_names(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    raw_dir = os.fsencode(images)
    load_emoji(7, 16).save(os.path.join(raw_dir, b"bad\xff.png"))
    load_emoji(8, 16).save(images / "with space.png")
    with open(os.path.join(raw_dir, b"broken\xfe.png"), "wb") as file:
        file.write(truncated_png())

    with caplog.at_level(logging.INFO, logger="absl"):
        report = dataset_builder.create_from_images(
            str(tmp_path / "out"), str(images), skip_bad=True
        )
    assert report.images_written == 2
    broken = os.fsdecode(os.path.join(raw_dir, b"broken\xfe.png"))
    assert report.skipped_bad == [broken]
    assert "broken\\udcfe.png" in caplog.text
    assert "broken\udcfe" not in caplog.text

    # Sorted walk order: 'bad\udcff.png' before 'with space.png'.
    top = read_level(find_levels(tmp_path / "out")[1][4])
    np.testing.assert_array_equal(top[0], chw(load_emoji(7, 16)))
    np.testing.assert_array_equal(top[1], chw(load_emoji(8, 16)))


def test_cli_names_non_utf8_bad_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    load_emoji(9, 16).save(images / "good.png")
    with open(os.path.join(os.fsencode(images), b"broken\xfe.png"), "wb") as file:
        file.write(b"")

    result = run_tool("create_from_images", tmp_path / "out", images)
    assert result.returncode == 1
    assert "error: cannot read image" in result.stderr
    assert "broken\\udcfe.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()

    result = run_tool("create_from_images", tmp_path / "out", images, "--skip_bad")
    assert result.returncode == 0, result.stderr
    assert "skipped bad image:   " in result.stderr
    assert "broken\\udcfe.png" in result.stderr


def test_non_utf8_output_dir_rejected(image_dir, tmp_path):
    out = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"out\xff"))
    with pytest.raises(DatasetError, match="not valid UTF-8") as error:
        dataset_builder.create_from_images(out, str(image_dir))
    assert "out\\udcff" in str(error.value)
    assert not os.path.exists(out)


def test_output_inside_input_rejected(image_dir, tmp_path):
    inside = image_dir / "dataset"
    with pytest.raises(DatasetError, match="is inside the image directory") as error:
        dataset_builder.create_from_images(str(inside), str(image_dir))
    assert "Choose an output directory outside" in str(error.value)
    assert not inside.exists()
    assert leftovers(image_dir) == []

    with pytest.raises(DatasetError, match="is inside the image directory"):
        dataset_builder.create_from_images(str(image_dir), str(image_dir), overwrite=True)

    # A symlink outside the folder that leads into it is resolved first.
    os.symlink(image_dir, tmp_path / "link_to_images")
    with pytest.raises(DatasetError, match="is inside the image directory"):
        dataset_builder.create_from_images(str(tmp_path / "link_to_images" / "ds"), str(image_dir))
    assert sorted(os.listdir(image_dir)) == ["a_good.png", "b_good.png"]


def test_input_inside_output_rejected(image_dir, tmp_path):
    with pytest.raises(DatasetError, match="which --overwrite would replace"):
        dataset_builder.create_from_images(str(tmp_path), str(image_dir), overwrite=True)
    assert sorted(os.listdir(image_dir)) == ["a_good.png", "b_good.png"]


# ---------------------------------------------------------------------------
# Datasets: levels that are missing, disagree or are surrounded by other files


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory):
    """A 16x16 dataset of six emoji: levels r02, r03, r04."""
    root = tmp_path_factory.mktemp("built")
    images = root / "images"
    images.mkdir()
    for index in range(10, 16):
        load_emoji(index, 16).save(images / f"{index:04d}.png")
    dataset_builder.create_from_images(str(root / "faces"), str(images))
    return root / "faces"


@pytest.fixture
def dataset_copy(built_dataset, tmp_path):
    copy = tmp_path / "faces"
    shutil.copytree(built_dataset, copy)
    return copy


def rewrite_level(path, images_chw):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images_chw:
            writer.write(serialize_example(image))


def test_missing_level(dataset_copy):
    (dataset_copy / "faces-r03.tfrecords").unlink()
    with pytest.raises(DatasetError, match="missing faces-r03.tfrecords") as error:
        dataset_lib.inspect_dataset(str(dataset_copy))
    assert "Rebuild the dataset" in str(error.value)

    result = run_tool("info", dataset_copy)
    assert result.returncode == 1
    assert "error: the levels in" in result.stderr
    assert "missing faces-r03.tfrecords" in result.stderr


def test_levels_with_different_record_counts(dataset_copy):
    r03 = dataset_copy / "faces-r03.tfrecords"
    rewrite_level(r03, read_level(str(r03))[:5])
    message = r"different numbers of records \(r02: 6, r03: 5, r04: 6\)"

    with pytest.raises(DatasetError, match=message):
        dataset_lib.inspect_dataset(str(dataset_copy))

    info = dataset_builder.describe_dataset(str(dataset_copy))
    assert [level.num_records for level in info.levels] == [6, 5, 6]
    with pytest.raises(DatasetError, match=message):
        dataset_builder.check_dataset(info)

    result = run_tool("info", dataset_copy)
    assert result.returncode == 1
    assert "r03    8x8    records=5" in result.stdout
    assert "error: the levels of" in result.stderr
    assert "r03: 5" in result.stderr

    result = run_tool("create_from_images", dataset_copy, dataset_copy.parent, "--exist_ok")
    assert result.returncode == 1
    assert "different numbers of records" in result.stderr


def test_truncated_level_file(dataset_copy):
    r04 = dataset_copy / "faces-r04.tfrecords"
    data = r04.read_bytes()
    r04.write_bytes(data[:-100])
    with pytest.raises(DatasetError, match="truncated or not an uncompressed TFRecord") as error:
        dataset_lib.inspect_dataset(str(dataset_copy))
    assert "faces-r04.tfrecords" in str(error.value)


def test_first_record_shape_wrong_below_top(dataset_copy):
    # One-channel records in the 8x8 level of a three-channel dataset.
    r03 = dataset_copy / "faces-r03.tfrecords"
    rewrite_level(r03, [image[:1].copy() for image in read_level(str(r03))])
    with pytest.raises(
        DatasetError, match=r"faces-r03.tfrecords' have shape \[1, 8, 8\].*expected \[3, 8, 8\]"
    ):
        dataset_lib.inspect_dataset(str(dataset_copy))


def test_later_record_shape_wrong_fails_at_read(dataset_copy):
    # Record 3 of the 8x8 level is a 4x4 image, and inspect_dataset reads only record 0.
    r03 = dataset_copy / "faces-r03.tfrecords"
    records = read_level(str(r03))
    records[3] = read_level(str(dataset_copy / "faces-r02.tfrecords"))[3]
    rewrite_level(r03, records)

    info = dataset_lib.inspect_dataset(str(dataset_copy))
    dataset = dataset_lib.make_dataset(info, 16, 2, shuffle=False, repeat=False)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        for _ in dataset:
            pass
    message = error.value.message
    assert f"record 3 of {r03} has shape [3 4 4] (C, H, W) and 48 data bytes" in message
    assert "expected shape [3 8 8] and 192 bytes" in message
    assert "Rebuild the dataset with dataset_tool.py create_from_images" in message


def test_record_data_length_wrong_fails_at_read(dataset_copy):
    r04 = dataset_copy / "faces-r04.tfrecords"
    records = [serialize_example(image) for image in read_level(str(r04))]
    short = tf.train.Example.FromString(records[1])
    short.features.feature["data"].bytes_list.value[0] = b"\0" * 100
    records[1] = short.SerializeToString()
    with tf.io.TFRecordWriter(str(r04)) as writer:
        for record in records:
            writer.write(record)

    info = dataset_lib.inspect_dataset(str(dataset_copy))
    dataset = dataset_lib.make_dataset(info, 16, 1, shuffle=False, repeat=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record 1 of .*faces-r04.tfrecords"
                       r" has shape \[3 16 16\] \(C, H, W\) and 100 data bytes"):
        for _ in dataset:
            pass


def test_unknown_files_ignored_with_warning(dataset_copy, caplog):
    (dataset_copy / "notes.txt").write_text("my notes\n")
    (dataset_copy / "faces-r3.tfrecords").write_bytes(b"")
    (dataset_copy / "old").mkdir()
    np.save(open(dataset_copy / labels_file_name("faces"), "wb"), np.zeros((6, 2), np.float32))

    with caplog.at_level(logging.WARNING):
        info = dataset_lib.inspect_dataset(str(dataset_copy))
    assert info.num_images == 6
    assert "ignoring 3 entries" in caplog.text
    assert "'faces-r3.tfrecords', 'notes.txt', 'old'" in caplog.text
    assert "must be named faces-r02.tfrecords ... faces-r10.tfrecords" in caplog.text
    assert "faces-rxx.labels" not in caplog.text


def test_labels_row_count_mismatch(dataset_copy):
    np.save(open(dataset_copy / labels_file_name("faces"), "wb"), np.zeros((4, 2), np.float32))
    info = dataset_builder.describe_dataset(str(dataset_copy))
    with pytest.raises(DatasetError, match=r"have shape \[4, 2\], expected \[6, L\]"):
        dataset_builder.check_dataset(info)


# ---------------------------------------------------------------------------
# Datasets written the way NVIDIA's StyleGAN dataset_tool.py writes them


def write_stylegan_dataset(directory, images_chw):
    """Write levels as NVIDIA's StyleGAN exporter does: float pyramid, rounded only on write."""
    directory.mkdir()
    name = directory.name
    top_log2 = images_chw[0].shape[1].bit_length() - 1
    writers = {
        k: tf.io.TFRecordWriter(str(directory / f"{name}-r{k:02d}.tfrecords"))
        for k in range(2, top_log2 + 1)
    }
    stored = {k: [] for k in writers}
    for image in images_chw:
        level = image.astype(np.float32)
        for k in range(top_log2, 1, -1):
            quantized = np.rint(level).clip(0, 255).astype(np.uint8)
            stored[k].append(quantized)
            shape = tf.train.Int64List(value=quantized.shape)
            data = tf.train.BytesList(value=[quantized.tobytes()])
            example = tf.train.Example(features=tf.train.Features(feature={
                "shape": tf.train.Feature(int64_list=shape),
                "data": tf.train.Feature(bytes_list=data),
            }))
            writers[k].write(example.SerializeToString())
            level = (level[:, 0::2, 0::2] + level[:, 0::2, 1::2]
                     + level[:, 1::2, 0::2] + level[:, 1::2, 1::2]) * 0.25
    for writer in writers.values():
        writer.close()
    return stored


def test_stylegan_dataset_reads_stored_values(tmp_path):
    images = [chw(load_emoji(index, 32)) for index in range(20, 24)]
    stored = write_stylegan_dataset(tmp_path / "nvidia", images)

    # The float pyramid differs from ours in some pixels, so the test can tell
    # stored values from recomputed ones.
    ours = [build_pyramid(image) for image in images]
    differences = [
        np.abs(stored[k][i].astype(int) - ours[i][5 - k].astype(int)).max()
        for i in range(4) for k in range(2, 5)
    ]
    assert max(differences) == 1

    info = dataset_lib.inspect_dataset(str(tmp_path / "nvidia"))
    assert (info.name, info.max_resolution, info.num_channels, info.num_images) == (
        "nvidia", 32, 3, 4)
    dataset_builder.check_dataset(dataset_builder.describe_dataset(str(tmp_path / "nvidia")))

    batch = next(iter(dataset_lib.make_dataset(info, 32, 4, shuffle=False)))
    for k, images_nhwc in zip(range(2, 6), batch):
        got = dataset_lib.to_uint8(images_nhwc.numpy())
        expected = np.stack(stored[k]).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(got, expected)
