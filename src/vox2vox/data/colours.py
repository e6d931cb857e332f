"""One colour per label value, shared by every picture and file that shows labels.

The 2D overlays and 3D renderings of :mod:`vox2vox.report` and the segment colours written into
DICOM SEG and 3D Slicer ``.seg.nrrd`` files (:mod:`vox2vox.data.seg_formats`) all take their
colours from :func:`colours_for`, so a class looks the same in the HTML report and in a viewer.
It lives in ``data/`` because file writers there need it and may not import ``report/``.
"""

from __future__ import annotations

from collections.abc import Sequence

# Colours (RGB in [0, 1]) for label values: BraTS-like defaults for 1/2/3/4 (core red, oedema
# green, enhancing yellow; 3 is enhancing in BraTS 2023), then a qualitative cycle for the rest.
_LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.90, 0.10, 0.10),
    2: (0.10, 0.80, 0.20),
    3: (1.00, 0.85, 0.00),
    4: (1.00, 0.85, 0.00),
}
_CYCLE = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.09, 0.75, 0.81),
    (0.74, 0.74, 0.13),
)


def colours_for(values: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """A colour per label value: the fixed BraTS-like ones first, then the cycle for the rest."""
    colours: dict[int, tuple[float, float, float]] = {}
    others = [v for v in values if v not in _LABEL_COLOURS]
    for v in values:
        if v in _LABEL_COLOURS:
            colours[v] = _LABEL_COLOURS[v]
    for i, v in enumerate(others):
        colours[v] = _CYCLE[i % len(_CYCLE)]
    # 3 and 4 share yellow in the defaults; if both appear, give 3 its own colour.
    if 3 in colours and 4 in colours:
        colours[3] = (0.95, 0.45, 0.05)
    return colours
