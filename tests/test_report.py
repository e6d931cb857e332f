"""The HTML report: built from a tiny demo, self-contained, and shown by a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vox2vox.cli import main
from vox2vox.demo import run_demo
from vox2vox.report.report import find_inputs, write_report

# Injected into a copy of the report: collects script errors and failed resources from the start,
# then, once everything has loaded, writes what the page shows into the DOM for --dump-dom.
_PROBE_HEAD = """<script>window.__v2vErrors=[];
window.addEventListener('error',function(e){window.__v2vErrors.push(String(e.message||(e.target&&e.target.src)||'error'))},true);
</script>"""
_PROBE_BODY = """<script>window.addEventListener('load',function(){
var imgs=Array.prototype.slice.call(document.images);
var r={images:imgs.length,shown:imgs.filter(function(i){return i.complete&&i.naturalWidth>0}).length,
widths:imgs.map(function(i){return i.naturalWidth}),errors:window.__v2vErrors};
var p=document.createElement('pre');p.id='v2v-probe';p.textContent=JSON.stringify(r);document.body.appendChild(p);});
</script>"""
_CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "demo"
    run_demo(out, size="tiny", progress=False)
    return out


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is not installed; run .ci/system-deps (Debian package 'chromium')")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    return subprocess.run(
        [_chromium(), *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_demo_report_is_self_contained(demo_dir):
    path = write_report(demo_dir)
    assert path == demo_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for heading in ("Overview", "Training", "Evaluation", "Best and worst cases", "Software versions"):
        assert f"<h2>{heading}</h2>" in page
    # Nothing is fetched: every src is a data URI and no URL is referenced.
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page
    assert page.count('src="data:image/png;base64,') >= 3  # curves, box plots, the one test case
    assert "Test_000" in page and "torch" in page


def test_report_loads_in_headless_chromium(demo_dir, tmp_path):
    page = write_report(demo_dir, tmp_path / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_BODY + "</body>", 1))
    proc = _run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="v2v-probe">(.*?)</pre>', proc.stdout)
    assert match, f"the page did not finish loading in Chromium; stderr: {proc.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert probe["errors"] == []
    assert probe["images"] >= 3 and probe["shown"] == probe["images"], probe
    assert min(probe["widths"]) > 100

    # And it looks like something: a screenshot of the report itself is far from blank.
    shot = tmp_path / "shot.png"
    proc = _run_chromium(tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1400, 1000)
    assert float(pixels.std()) > 0.05
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 100


def test_bare_run_dir_says_no_predictions(demo_dir, tmp_path):
    inputs = find_inputs(demo_dir / "run")
    assert inputs.run_dir == demo_dir / "run" and inputs.evaluation_csv is None and inputs.predictions is None
    page = write_report(demo_dir / "run", tmp_path / "run.html").read_text(encoding="utf-8")
    assert "<h2>Training</h2>" in page and "<h2>Evaluation</h2>" not in page


def test_evaluation_folder_without_predictions_says_so(demo_dir, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    for name in ("evaluation.csv", "evaluation_summary.json"):
        shutil.copy(demo_dir / name, folder / name)
    page = write_report(folder).read_text(encoding="utf-8")
    assert "No predictions folder found" in page
    # Given the folders explicitly (as vox2vox evaluate can), the overlays come back.
    page = write_report(folder, truth=demo_dir / "data" / "test", predictions=demo_dir / "predictions").read_text()
    assert "only case: Test_000" in page


def test_cli_report(demo_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", str(demo_dir), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    assert main(["report", str(demo_dir), "--out", str(tmp_path / "r.txt")]) == 2
