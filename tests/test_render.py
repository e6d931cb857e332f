"""3D renderings: an off-screen PNG that is not blank, from arrays and through ``vox2vox render``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vox2vox.cli import main
from vox2vox.data.synthetic import make_phantom, write_brats_folder
from vox2vox.errors import Vox2VoxError

pytest.importorskip("pyvista", reason="pyvista is in the test extra: pip install -e '.[test]'")

# The smallest off-screen render, in a child process: a VTK without any OpenGL context can abort
# the interpreter, which must not take the test session with it.
_PROBE = """
from vox2vox.report.render import require_pyvista
pv = require_pyvista()
p = pv.Plotter(off_screen=True, window_size=(64, 64))
p.add_mesh(pv.Sphere())
img = p.screenshot(return_img=True)
assert img.std() > 0, "blank probe image"
print(p.ren_win.GetClassName())
"""


@pytest.fixture(scope="module")
def offscreen() -> str:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        # Printed as well as given to skip, so CI's log says why no 3D test ran.
        print(f"VTK cannot render off-screen here: {reason}", file=sys.stderr)
        pytest.skip(f"VTK cannot render off-screen here ({reason}); run .ci/system-deps for libEGL/OSMesa")
    return proc.stdout.strip()


def _coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels that are strongly coloured (label surfaces), as opposed to white/grey background and outline."""
    rgb = pixels[..., :3].astype(np.float32)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 60


def test_render_prediction_and_truth_side_by_side(offscreen, tmp_path):
    from matplotlib.image import imread

    from vox2vox.report.render import render_labels

    image, truth = make_phantom(shape=(40, 40, 40), rng=np.random.default_rng(0))
    pred = truth.copy()
    pred[pred == 4] = 1
    out = render_labels(tmp_path / "r.png", pred, truth=truth, image=image[3], panel_size=(320, 320))
    pixels = (imread(out)[..., :3] * 255).astype(np.uint8)
    assert pixels.shape == (320, 640, 3)
    assert float(pixels.std()) > 10
    left, right = _coloured(pixels[:, :320]), _coloured(pixels[:, 320:])
    # Both panels show tumour surfaces, and their difference (4 relabelled as 1) shows too.
    assert left.sum() > 500 and right.sum() > 500, (left.sum(), right.sum())
    assert not np.array_equal(pixels[:, :320], pixels[:, 320:])


def test_cli_render_case_folder_and_label_file(offscreen, tmp_path, capsys):
    import nibabel as nib

    ids = write_brats_folder(tmp_path / "data", n_cases=1, seed=2, shape=(32, 32, 32))
    case = tmp_path / "data" / ids[0]
    assert main(["render", str(case), "--out", str(tmp_path / "case.png")]) == 0
    assert (tmp_path / "case.png").stat().st_size > 1000
    seg = case / f"{ids[0]}_seg.nii.gz"
    assert main(["render", str(seg), "--truth", str(seg), "--out", str(tmp_path / "pair.png")]) == 0
    # A label map on another grid is refused with one line naming the file.
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), other)
    capsys.readouterr()
    assert main(["render", str(other), "--truth", str(seg), "--out", str(tmp_path / "bad.png")]) == 2
    assert str(seg) in capsys.readouterr().err


def test_missing_pyvista_says_how_to_install(monkeypatch):
    from vox2vox.report import render

    monkeypatch.setitem(sys.modules, "pyvista", None)
    with pytest.raises(Vox2VoxError, match=r"pip install 'vox2vox\[render\]'"):
        render.require_pyvista()
