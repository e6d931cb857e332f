"""The domain-randomised scans the prior trains on: seeded, within their stated ranges, varied."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vox2vox.data.randomised import TISSUES, PriorRanges, _intensities, randomised_scan

SMALL = PriorRanges(shape=(48, 56, 48), spacing_mm=3.0)


def test_a_scan_is_a_pure_function_of_its_seed():
    a_img, a_lab = randomised_scan(np.random.default_rng(7), SMALL)
    b_img, b_lab = randomised_scan(np.random.default_rng(7), SMALL)
    c_img, _ = randomised_scan(np.random.default_rng(8), SMALL)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_scans_are_zscored_inside_the_brain_and_zero_outside():
    image, label = randomised_scan(np.random.default_rng(3), SMALL)
    assert image.shape == (1, *SMALL.shape) and image.dtype == np.float32
    assert label.shape == SMALL.shape and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    inside = image[0] != 0
    assert abs(float(image[0][inside].mean())) < 1e-3 and abs(float(image[0][inside].std()) - 1.0) < 1e-3
    assert not np.any(label.astype(bool) & ~inside)  # tumour only inside the brain


def test_tumours_cover_their_stated_range_of_sizes_and_counts():
    ranges = PriorRanges(shape=(48, 56, 48), spacing_mm=3.0)
    volumes_ml, counts, empty = [], [], 0
    for seed in range(40):
        _, label = randomised_scan(np.random.default_rng(seed), ranges)
        if not label.any():
            empty += 1
            continue
        volumes_ml.append(label.sum() * ranges.spacing_mm**3 / 1000.0)
        counts.append(ndimage.label(label)[1])
    assert 0 < empty < 12  # healthy scans exist (p_no_tumour) but are rare
    assert min(volumes_ml) < 5.0 and max(volumes_ml) > 60.0  # small lesions and large ones
    assert max(counts) >= 2  # several lesions


def test_no_contrast_is_assumed_but_the_tumour_always_differs_from_white_matter():
    ranges = PriorRanges()
    rng = np.random.default_rng(0)
    brighter = darker = 0
    wm, oedema = TISSUES.index("wm"), TISSUES.index("oedema")
    for _ in range(400):
        means = _intensities(rng, ranges)
        assert np.all((means >= 0) & (means <= 1))
        gap = means[oedema] - means[wm]
        assert abs(gap) >= ranges.min_tumour_contrast
        brighter += gap > 0
        darker += gap < 0
    assert brighter > 100 and darker > 100  # FLAIR/T2-like and T1-like tumours both occur


@pytest.mark.parametrize("seed", [0, 1])
def test_intensity_of_the_tumour_varies_between_scans(seed):
    rng = np.random.default_rng(seed)
    tumour_means = []
    for _ in range(8):
        image, label = randomised_scan(rng, SMALL)
        if label.any():
            tumour_means.append(float(image[0][label > 0].mean()))
    assert max(tumour_means) - min(tumour_means) > 1.0  # in z units: no fixed appearance to memorise
