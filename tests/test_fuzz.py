"""Property-based tests (hypothesis) over shapes, dtypes, spacings, orientations and label values.

io, preprocessing, metrics and labels either work (and then exactly: round trips return the input)
or raise the project's own Vox2VoxError; any other exception is a bug.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vox2vox.data.io import read_volume, write_volume
from vox2vox.data.labels import CONVENTIONS, get_convention
from vox2vox.data.preprocessing import PreprocessConfig, preprocess, undo_preprocessing
from vox2vox.errors import Vox2VoxError
from vox2vox.report.metrics import (
    HD95_ONE_EMPTY_MM,
    dice,
    hd95,
    sensitivity,
    specificity,
    volume_ml,
)

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [np.uint8, np.int16, np.float32, np.float64, np.bool_]
shapes3 = st.tuples(*[st.integers(1, 6)] * 3)
spacings = st.tuples(*[st.floats(0.2, 5.0)] * 3)


@st.composite
def affines(draw) -> np.ndarray:
    """A voxel-to-world affine with any axis permutation, flips, spacing and origin."""
    perm = draw(st.permutations([0, 1, 2]))
    signs = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
    spacing = draw(spacings)
    affine = np.zeros((4, 4))
    for col, row in enumerate(perm):
        affine[row, col] = signs[col] * spacing[col]
    affine[:3, 3] = draw(st.tuples(*[st.floats(-200, 200)] * 3))
    affine[3, 3] = 1.0
    return affine


@st.composite
def volumes(draw, shape=shapes3) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    elements = None
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, width=32)
    return draw(hnp.arrays(dtype, draw(shape), elements=elements))


@FUZZ
@given(data=volumes(), affine=affines())
def test_nifti_round_trip_through_the_canonical_grid(tmp_path_factory, data, affine):
    folder = tmp_path_factory.mktemp("io")
    on_disk = data.astype(np.uint8) if data.dtype == np.bool_ else data
    src = folder / "in.nii.gz"
    nib.save(nib.Nifti1Image(on_disk, affine), str(src))
    array, geometry = read_volume(src)
    assert array.shape == geometry.shape and sorted(array.shape) == sorted(data.shape)
    assert np.allclose(sorted(geometry.spacing), sorted(np.linalg.norm(affine[:3, :3], axis=0)))
    out = folder / "out.nii.gz"
    write_volume(array, geometry, out)
    back = nib.load(str(out))
    assert back.shape == data.shape
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    expected = on_disk.astype(np.float32) if on_disk.dtype.kind == "f" else on_disk
    assert np.array_equal(np.asanyarray(back.dataobj), expected)


@FUZZ
@given(data=volumes(), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_voxels_are_a_vox2vox_error(tmp_path_factory, data, bad):
    assume(data.size > 0)
    data = data.astype(np.float32)
    data.flat[0] = bad
    src = tmp_path_factory.mktemp("nan") / "in.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src))
    with pytest.raises(Vox2VoxError, match="NaN/Inf"):
        read_volume(src)
    zeroed, _ = read_volume(src, nonfinite="zero")
    assert np.isfinite(zeroed).all()


@FUZZ
@given(
    shape=st.tuples(*[st.integers(2, 10)] * 3),
    channels=st.integers(1, 2),
    spacing=spacings,
    normalize=st.sampled_from(["zscore-nonzero", "zscore", "none"]),
    crop=st.booleans(),
    target=st.one_of(st.none(), spacings),
    pad=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_undo_preprocessing_returns_the_original_grid(shape, channels, spacing, normalize, crop, target, pad, seed):
    rng = np.random.default_rng(seed)
    image = np.zeros((channels, *shape), np.float32)
    lo = [int(rng.integers(0, n // 2 + 1)) for n in shape]
    hi = [int(rng.integers(lo_ + 1, n + 1)) for lo_, n in zip(lo, shape, strict=True)]
    inside = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    image[(slice(None), *inside)] = rng.normal(50, 10, (channels, *[b - a for a, b in zip(lo, hi, strict=True)]))
    label = np.zeros(shape, np.int64)
    label[inside] = rng.integers(0, 3, [b - a for a, b in zip(lo, hi, strict=True)])
    config = PreprocessConfig(normalize=normalize, crop_foreground=crop, target_spacing=target, pad_multiple=pad)
    out, out_label, record = preprocess(image, label, spacing=spacing, config=config)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.shape[1:] == out_label.shape and all(n % pad == 0 for n in out.shape[1:])
    back = undo_preprocessing(out_label, record)
    assert back.shape == shape
    probs = undo_preprocessing(np.stack([out_label == c for c in range(3)]).astype(np.float32), record, order=1)
    assert probs.shape == (3, *shape)
    if target is None or tuple(record["resampled_shape"]) == tuple(hi_ - lo_ for lo_, hi_ in record["crop"]):
        assert np.array_equal(back, label)  # no resampling: the exact original labels come back
    with pytest.raises(Vox2VoxError):
        undo_preprocessing(out_label[:-1], record)


@st.composite
def mask_pairs(draw):
    shape = draw(st.tuples(*[st.integers(1, 7)] * 3))
    pred = draw(hnp.arrays(np.bool_, shape))
    truth = draw(hnp.arrays(np.bool_, shape))
    return pred, truth


@FUZZ
@given(masks=mask_pairs(), spacing=spacings)
def test_metrics_are_in_range_symmetric_and_follow_the_empty_rules(masks, spacing):
    pred, truth = masks
    d = dice(pred, truth)
    assert 0.0 <= d <= 1.0 and d == dice(truth, pred)
    h = hd95(pred, truth, spacing=spacing)
    assert h == pytest.approx(hd95(truth, pred, spacing=spacing))
    assert 0.0 <= sensitivity(pred, truth) <= 1.0 and 0.0 <= specificity(pred, truth) <= 1.0
    assert volume_ml(pred, spacing=spacing) >= 0.0
    if not pred.any() and not truth.any():
        assert (d, h) == (1.0, 0.0)
    elif not pred.any() or not truth.any():
        assert (d, h) == (0.0, HD95_ONE_EMPTY_MM)
    else:
        diagonal = float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing)))
        assert 0.0 <= h <= diagonal + 1e-6
    if np.array_equal(pred, truth):
        assert d == 1.0 and h == 0.0


@FUZZ
@given(masks=mask_pairs(), spacing=st.tuples(*[st.sampled_from([0.0, -1.0, np.nan, np.inf, 1.0])] * 3))
def test_metrics_reject_bad_spacing_and_shapes_with_the_project_error(masks, spacing):
    pred, truth = masks
    assume(not all(s == 1.0 for s in spacing))
    with pytest.raises(Vox2VoxError, match="spacing"):
        hd95(pred | True, truth | True, spacing=spacing)
    with pytest.raises(Vox2VoxError, match="spacing"):
        volume_ml(pred, spacing=spacing)
    with pytest.raises(Vox2VoxError, match="shape"):
        dice(pred, np.zeros((*truth.shape, 2), bool))


@FUZZ
@given(
    name=st.sampled_from(sorted(CONVENTIONS)),
    shape=st.tuples(*[st.integers(1, 5)] * 3),
    dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_label_conventions_round_trip(name, shape, dtype, seed):
    conv = get_convention(name)
    rng = np.random.default_rng(seed)
    source = rng.choice(np.asarray(conv.source_values), size=shape).astype(dtype)
    classes = conv.to_classes(source)
    assert classes.dtype == np.int64 and classes.min() >= 0 and classes.max() < conv.n_classes
    assert np.array_equal(conv.to_source(classes), source.astype(np.int64))
    # Folded extras (BraTS 2015's 3) map into a class, whose source value is the folded one.
    for extra, into in conv.extra_map.items():
        assert conv.to_source(conv.to_classes(np.array([extra], dtype)))[0] == into


@FUZZ
@given(
    name=st.sampled_from(sorted(CONVENTIONS)),
    value=st.one_of(st.integers(-1000, 70000), st.floats(allow_nan=True, allow_infinity=True, width=32)),
)
def test_unknown_label_values_are_a_vox2vox_error(name, value):
    conv = get_convention(name)
    # Float label files are read to within 1e-4 of an integer (0.99999997 after resampling is 1).
    near = np.isfinite(value) and abs(value - round(value)) <= 1e-4 and round(value) in conv.accepted_values
    assume(value not in conv.accepted_values and not near)
    dtype = np.float32 if isinstance(value, float) else np.int64
    label = np.array([[[0, value]]], dtype=dtype)
    with pytest.raises(Vox2VoxError):
        conv.to_classes(label)
    with pytest.raises(Vox2VoxError):
        conv.to_source(np.array([conv.n_classes + abs(int(value) if np.isfinite(value) else 0)]))

