"""ilex.synth: SynthMorph's synthesis (shapes, deformations, images, pairs) and label-map loading."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from ilex.errors import IlexError
from ilex.synth import (
    SynthSettings,
    labels_to_image,
    load_label_maps,
    one_hot,
    random_displacement,
    shapes_labels,
    shapes_pair,
    synth_pair,
    warp_labels,
)
from ilex.transforms import folding_fraction, jacobian_determinant

SHAPE = (32, 32, 32)
DEFAULTS = SynthSettings()
# The image model alone: no blur, bias, noise or gamma, no normalisation, no cleared background.
PLAIN = dataclasses.replace(
    DEFAULTS, blur_std=0.0, bias_std=0.0, noise_std=0.0, gamma_std=0.0, normalize=False, zero_background=0.0
)

shapes_jit = jax.jit(shapes_labels, static_argnums=(1, 2))
pair_jit = jax.jit(synth_pair, static_argnums=(2, 3))
shapes_pair_jit = jax.jit(shapes_pair, static_argnums=(1, 2))


def quadrants(shape=SHAPE):
    """Labels 0..3 in four equal slabs along x."""
    return jnp.asarray(np.repeat(np.arange(4), shape[0] // 4)[:, None, None] * np.ones(shape, np.int32))


def test_shapes_every_label_present():
    # Measured: all 26 labels in 199 of 200 maps of 32³ (keys split from key(1)); the smallest label
    # of the 1 % quantile map held 120 voxels. Four fixed keys, so the test is deterministic.
    for seed in range(4):
        labels = np.asarray(shapes_jit(jax.random.key(seed), SHAPE, DEFAULTS))
        assert labels.dtype == np.int32 and labels.shape == SHAPE
        np.testing.assert_array_equal(np.unique(labels), np.arange(26))


def test_shapes_label_count_as_asked():
    settings = dataclasses.replace(DEFAULTS, n_shape_labels=7)
    labels = np.asarray(shapes_jit(jax.random.key(5), (24, 32, 28), settings))
    assert labels.shape == (24, 32, 28)
    np.testing.assert_array_equal(np.unique(labels), np.arange(7))


def test_random_displacement_folds_nowhere():
    # Measured over 100 keys at 32³: min det J 0.84 (0.80 with the SD fixed at its maximum).
    keys = jax.random.split(jax.random.key(2), 8)
    s = DEFAULTS
    fields = jax.jit(jax.vmap(lambda k: random_displacement(k, SHAPE, s.warp_std, s.warp_res, s.int_steps)))(keys)
    assert fields.shape == (8, *SHAPE, 3) and fields.dtype == jnp.float32
    assert float(jnp.abs(fields).max()) > 0.1  # it does move
    for field in fields:
        det = jacobian_determinant(field)
        assert float(folding_fraction(det)) == 0.0
        assert float(det.min()) > 0.0


def test_warp_labels_nearest():
    labels = quadrants()
    np.testing.assert_array_equal(warp_labels(labels, jnp.zeros((*SHAPE, 3))), labels)
    shift = jnp.zeros((*SHAPE, 3)).at[..., 0].set(8.0)  # read 8 voxels further along x
    moved = np.asarray(warp_labels(labels, shift))
    np.testing.assert_array_equal(moved[:24], np.asarray(labels)[8:])
    assert (moved[24:] == 0).all()  # outside: background
    hot = one_hot(labels, 4)
    assert hot.shape == (*SHAPE, 4) and float(hot.sum()) == np.prod(SHAPE)


def test_image_statistics_within_drawn_ranges():
    # Each label holds 8192 voxels: the standard error of a label's mean is at most 25/sqrt(8192) = 0.28
    # and of its SD about 0.2, so 1.5 is about five of them. Clipping to [0, 255] only pulls a mean
    # inward and an SD down, so the ranges still hold.
    labels = quadrants()
    tol = 1.5
    for seed in range(6):
        image = np.asarray(labels_to_image(jax.random.key(seed), labels, 4, PLAIN))[..., 0]
        for j in range(4):
            values = image[np.asarray(labels) == j]
            (m0, m1), (s0, s1) = (
                (PLAIN.mean_range, PLAIN.std_range) if j else (PLAIN.background_mean_range, PLAIN.background_std_range)
            )
            assert m0 - tol <= values.mean() <= m1 + tol, (seed, j, values.mean())
            assert s0 - tol <= values.std() <= s1 + tol, (seed, j, values.std())


def test_image_defaults_normalised_and_background_cleared():
    labels = quadrants()
    image = np.asarray(jax.jit(labels_to_image, static_argnums=(2, 3))(jax.random.key(3), labels, 4, DEFAULTS))
    assert image.shape == (*SHAPE, 1) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0  # gamma keeps 0 and 1
    cleared = np.asarray(labels_to_image(jax.random.key(3), labels, 4, dataclasses.replace(PLAIN, zero_background=1.0)))
    assert (cleared[np.asarray(labels) == 0] == 0).all() and (cleared[np.asarray(labels) > 0] > 0).mean() > 0.99


def test_pair_same_key_same_output_bit_for_bit():
    a = shapes_pair_jit(jax.random.key(7), SHAPE, DEFAULTS)
    b = shapes_pair_jit(jax.random.key(7), SHAPE, DEFAULTS)
    c = shapes_pair_jit(jax.random.key(8), SHAPE, DEFAULTS)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    src, trg, src_lab, trg_lab = a
    assert src.shape == trg.shape == (*SHAPE, 1) and src_lab.shape == trg_lab.shape == SHAPE
    assert not np.array_equal(np.asarray(src_lab), np.asarray(trg_lab))  # two deformations


def test_vmap_over_keys_equals_loop():
    keys = jax.random.split(jax.random.key(11), 3)
    labels = quadrants()
    batched = jax.jit(jax.vmap(synth_pair, in_axes=(0, None, None, None)), static_argnums=(2, 3))(
        keys, labels, 4, DEFAULTS
    )
    for i, key in enumerate(keys):
        single = pair_jit(key, labels, 4, DEFAULTS)
        for x, y in zip(batched, single, strict=True):
            # Labels bit for bit; images to 1e-6 of their [0, 1] range (measured: bit for bit on CPU).
            if x.dtype == jnp.int32:
                np.testing.assert_array_equal(np.asarray(x[i]), np.asarray(y))
            else:
                np.testing.assert_allclose(np.asarray(x[i]), np.asarray(y), rtol=0, atol=1e-6)


def test_pair_flips_both_maps_alike():
    # No deformation: both label maps are the input flipped along the same axes (voxelmorph flips the
    # pair's stacked maps at once).
    still = dataclasses.replace(DEFAULTS, warp_std=0.0)
    labels = np.random.default_rng(0).integers(0, 4, SHAPE).astype(np.int32)
    flips = {
        axes: np.flip(labels, axes) if axes else labels
        for axes in ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
    }
    seen = set()
    for seed in range(6):
        _, _, src, trg = pair_jit(jax.random.key(seed), jnp.asarray(labels), 4, still)
        np.testing.assert_array_equal(np.asarray(src), np.asarray(trg))
        seen |= {axes for axes, f in flips.items() if np.array_equal(np.asarray(src), f)}
    assert len(seen) > 1


# Loading label maps.


def save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), os.fspath(path))
    return os.fspath(path)


def two_maps(folder):
    a = np.zeros((6, 6, 6), np.int16)
    a[:3] = 2
    a[3:, :2] = 17
    b = np.zeros((6, 6, 6), np.int16)
    b[:2] = 41
    b[4:] = 17
    os.makedirs(folder, exist_ok=True)
    return save(folder / "a.nii.gz", a), save(folder / "b.nii.gz", b), a, b


def test_load_folder_and_csv(tmp_path):
    _, _, a, b = two_maps(tmp_path / "maps")
    maps, labels = load_label_maps(tmp_path / "maps")
    assert labels == [0, 2, 17, 41] and maps.dtype == np.int32 and maps.shape == (2, 6, 6, 6)
    np.testing.assert_array_equal(np.asarray(labels)[maps[0]], a)
    np.testing.assert_array_equal(np.asarray(labels)[maps[1]], b)
    (tmp_path / "list.csv").write_text("path,age\nmaps/b.nii.gz,30\n")  # relative to the CSV's folder
    maps, labels = load_label_maps(tmp_path / "list.csv")
    assert labels == [0, 17, 41] and maps.shape == (1, 6, 6, 6)


def test_load_merge_table_and_extent(tmp_path):
    two_maps(tmp_path / "maps")
    (tmp_path / "table.csv").write_text("label,new_label\n2,17\n41,\n")  # merge 2 into 17, drop 41
    maps, labels = load_label_maps(tmp_path / "maps", table=tmp_path / "table.csv")
    assert labels == [0, 17]
    assert (maps[0][:3] == 1).all() and (maps[1][:2] == 0).all()
    (tmp_path / "drop.csv").write_text("label,new_label\n41,-1\n")
    assert load_label_maps(tmp_path / "maps", table=tmp_path / "drop.csv")[1] == [0, 2, 17]
    cropped, _ = load_label_maps(tmp_path / "maps", extent=4)
    full, _ = load_label_maps(tmp_path / "maps")
    np.testing.assert_array_equal(cropped, full[:, 1:5, 1:5, 1:5])
    padded, _ = load_label_maps(tmp_path / "maps", extent=9)
    np.testing.assert_array_equal(padded[:, 1:7, 1:7, 1:7], full)
    assert padded.sum() == full.sum()


def refused(match, source, **kwargs):
    with pytest.raises(IlexError) as info:
        load_label_maps(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


def test_load_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in refused("no label maps", tmp_path / "empty")
    (tmp_path / "empty.csv").write_text("path\n")
    assert str(tmp_path / "empty.csv") in refused("no label maps listed", tmp_path / "empty.csv")
    (tmp_path / "nopath.csv").write_text("file\nx.nii.gz\n")
    assert str(tmp_path / "nopath.csv") in refused("no column 'path'", tmp_path / "nopath.csv")

    a = two_maps(tmp_path / "maps")[2]
    shifted = np.diag([1.0, 1, 1, 1])
    shifted[0, 3] = 1.0  # one voxel along x
    for name, data, affine in (("bigger", np.zeros((7, 6, 6), np.int16), None), ("moved", a, shifted)):
        folder = tmp_path / f"grid_{name}"
        folder.mkdir()
        save(folder / "a.nii.gz", a)
        other = save(folder / "b.nii.gz", data, affine)
        assert other in refused("not on the grid of", folder)
    # resample=True: nearest onto the first map's grid; b's voxel i is a's voxel i - 1.
    maps, labels = load_label_maps(tmp_path / "grid_moved", resample=True)
    moved = np.asarray(labels)[maps[1]]
    np.testing.assert_array_equal(moved[1:], a[:-1])
    assert (moved[0] == 0).all()

    bad = tmp_path / "bad"
    bad.mkdir()
    path = save(bad / "float.nii.gz", a.astype(np.float32) + 0.5)
    assert path in refused("non-integer value", bad)
    os.remove(path)
    path = save(bad / "t1.nii.gz", (np.arange(12**3) % 1100).astype(np.int16).reshape(12, 12, 12))
    assert path in refused("intensity image", bad)
    os.remove(path)
    path = bad / "broken.nii.gz"
    path.write_bytes(b"not an image")
    assert str(path) in refused("not a readable", bad)
    (tmp_path / "missing.csv").write_text("path\nnowhere.nii.gz\n")
    assert str(tmp_path / "nowhere.nii.gz") in refused("no such", tmp_path / "missing.csv")
    (tmp_path / "badtable.csv").write_text("label,new\n1,2\n")
    assert str(tmp_path / "badtable.csv") in refused(
        "label,new_label", tmp_path / "maps", table=tmp_path / "badtable.csv"
    )
