import os

import numpy as np
import pytest

from msg_tf import dataset as dataset_lib
from msg_tf import tfrecord_format
from msg_tf.tfrecord_format import DatasetError


def stored_levels(dataset_dir):
    """Read every level of a dataset with NumPy: {res: uint8 [N, H, W, C]}."""
    _, paths = tfrecord_format.find_levels(dataset_dir)
    import tensorflow as tf
    levels = {}
    for res_log2, path in paths.items():
        records = [tfrecord_format.parse_example_numpy(r.numpy())
                   for r in tf.data.TFRecordDataset(path)]
        levels[2 ** res_log2] = np.stack(records).transpose(0, 2, 3, 1)
    return levels


def test_inspect_dataset(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)
    assert info.max_resolution == 32
    assert info.num_channels == 3
    assert info.num_images == 64
    assert sorted(info.level_paths) == [2, 3, 4, 5]


def test_batches_match_stored_pyramid(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)
    levels = stored_levels(emoji_dataset)
    batch = next(iter(dataset_lib.make_dataset(info, 32, 8, shuffle=False)))
    assert [tuple(image.shape) for image in batch] == [(8, r, r, 3) for r in (4, 8, 16, 32)]
    for image in batch:
        res = image.shape[1]
        expected = levels[res][:8].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)
        assert image.numpy().min() >= -1.0
        assert image.numpy().max() <= 1.0


def test_lower_model_resolution_skips_top_levels(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)
    levels = stored_levels(emoji_dataset)
    batch = next(iter(dataset_lib.make_dataset(info, 16, 4, shuffle=False)))
    assert [image.shape[1] for image in batch] == [4, 8, 16]
    np.testing.assert_allclose(batch[-1].numpy(),
                               levels[16][:4].astype(np.float32) / 127.5 - 1.0, atol=1e-6)


def test_mirror_flips_all_scales_alike(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)
    levels = stored_levels(emoji_dataset)
    batch = next(iter(dataset_lib.make_dataset(info, 32, 64, shuffle=False,
                                               mirror_augment=True, seed=3)))
    flipped_per_scale = []
    for image in batch:
        res = image.shape[1]
        plain = levels[res].astype(np.float32) / 127.5 - 1.0
        got = image.numpy()
        is_plain = np.all(np.isclose(got, plain, atol=1e-6), axis=(1, 2, 3))
        is_flipped = np.all(np.isclose(got, plain[:, :, ::-1], atol=1e-6), axis=(1, 2, 3))
        assert np.all(is_plain | is_flipped)
        # Symmetric images are both; count them as not flipped.
        flipped_per_scale.append(is_flipped & ~is_plain)
    top = flipped_per_scale[-1]
    assert 10 < top.sum() < 54
    # Every asymmetric sample flipped at the finest scale is flipped at every scale where
    # it is asymmetric too.
    for flipped in flipped_per_scale[:-1]:
        assert not np.any(flipped & ~top)


def test_mirror_is_deterministic_per_seed(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)

    def first_batch(seed):
        ds = dataset_lib.make_dataset(info, 8, 16, shuffle=True, mirror_augment=True, seed=seed)
        return next(iter(ds))[-1].numpy()

    np.testing.assert_array_equal(first_batch(5), first_batch(5))
    assert not np.array_equal(first_batch(5), first_batch(6))


def test_resolution_above_dataset(emoji_dataset):
    info = dataset_lib.inspect_dataset(emoji_dataset)
    with pytest.raises(DatasetError, match=r"goes up to 32x32, below the model resolution 64: "
                                           r"lower --resolution to 32"):
        dataset_lib.make_dataset(info, 64, 8)


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        dataset_lib.inspect_dataset(str(tmp_path / "absent"))


def test_record_shape_disagrees_with_level(emoji_dataset, tmp_path):
    # A 16x16 record stored under the 32x32 file name.
    broken = tmp_path / "broken"
    broken.mkdir()
    _, paths = tfrecord_format.find_levels(emoji_dataset)
    for res_log2, path in paths.items():
        source = paths[4] if res_log2 == 5 else path
        os.symlink(source, broken / tfrecord_format.level_file_name("broken", res_log2))
    with pytest.raises(DatasetError, match=r"shape \[3, 16, 16\].*expected \[1 or 3, 32, 32\]"):
        dataset_lib.inspect_dataset(str(broken))


def test_to_uint8_rounds_and_clips():
    values = np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])
    np.testing.assert_array_equal(dataset_lib.to_uint8(values), [0, 0, 128, 255, 255, 255])
