"""The run report: one offline HTML file; rendered in headless Chromium, it is not blank and shows every figure.

Chromium comes from Debian's `chromium` package (scripts/setup.sh installs it); without it this test fails
and says so, rather than skipping.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cards import build_run  # the same realistic run folder the card tests use

from pipeline import report
from pipeline.errors import UserError

KEPT_RGB = (0x3A, 0x8C, 0x4F)  # the "kept" green of every bar chart: visible only if the figures rendered


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("runs"))


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def _figures(html_text: str) -> dict[str, Image.Image]:
    parser = _Images()
    parser.feed(html_text)
    out = {}
    for img in parser.images:
        assert img["alt"] == report.FIGURES[img["id"]]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["id"]
        out[img["id"]] = Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix) :]))).convert("RGB")
    return out


def _ink(image: Image.Image) -> float:
    """Fraction of pixels that are not (near-)white."""
    return float((np.asarray(image.convert("L")) < 235).mean())


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "chromium is not installed; run `bash scripts/setup.sh` (it apt-installs the `chromium` package)"
    )


def _screenshot(html_path: Path, tmp_path: Path) -> Image.Image:
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,3000",
        html_path.resolve().as_uri(),
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    )
    assert shot.is_file(), f"chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}"
    return Image.open(shot).convert("RGB")


def _count_color(image: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())


def test_report_renders_in_chromium_with_every_figure(run_dir, tmp_path):
    path = report.write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    # Offline: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.IGNORECASE)
    assert "url(" not in text and "@import" not in text and "<script" not in text

    figures = _figures(text)
    assert list(figures) == list(report.FIGURES)  # every figure, once, in order
    for fig_id, image in figures.items():
        assert image.width >= 600 and image.height >= 250, fig_id
        assert _ink(image) > 0.01, f"{fig_id} is blank"
    # Figures that draw data carry the "kept" green (rows kept, lengths kept by verify, pass rate).
    for fig_id in ("fig-rows", "fig-lengths", "fig-pass-rate"):
        assert _count_color(figures[fig_id], KEPT_RGB) > 500, fig_id

    shot = _screenshot(path, tmp_path)
    assert shot.size == (1200, 3000)
    assert _ink(shot) > 0.05, "the screenshot is blank"
    # The browser decoded and painted the embedded figures, not just the text around them.
    assert _count_color(shot, KEPT_RGB) > 2000

    # The summary table carries each stage's numbers from its manifest.
    for folder, m in report.stage_manifests(run_dir):
        assert f"<td>{folder.name}</td><td>{m['rows_in']}</td><td>{m['rows_out']}</td>" in text


def test_validation_figure_follows_the_run(run_dir, tmp_path):
    """No loop: a note (or the student's eval*.json); PGKD iterations: the curve."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    no_loop = _figures(report.render_report(run))["fig-validation"]
    assert _count_color(no_loop, (0x8A, 0xA6, 0xC8)) == 0  # no bars, no curve: only the note

    (run / "eval_before.json").write_text(json.dumps({"pass@1": 0.31, "model": "smollm2-135m-instruct"}))
    (run / "eval_after.json").write_text(json.dumps({"pass@1": 0.47, "adapter": "train-sft/adapter"}))
    assert report.eval_results(run) == [("after", 0.47), ("before", 0.31)]
    evals = _figures(report.render_report(run))["fig-validation"]
    assert _count_color(evals, (0x8A, 0xA6, 0xC8)) > 1000  # the two bars

    for k, acc in enumerate([0.30, 0.42, 0.45]):
        d = run / "loop" / f"iter_{k}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(
            json.dumps({"iteration": k, "val_accuracy": acc, "teacher_calls": 10 * k})
        )
    assert [m["val_accuracy"] for m in report.loop_metrics(run)] == [0.30, 0.42, 0.45]
    curve = _figures(report.render_report(run))["fig-validation"]
    assert _count_color(curve, KEPT_RGB) > 300  # the curve
    assert _count_color(curve, (0x8A, 0xA6, 0xC8)) == 0  # and no longer the eval bars


def test_report_of_a_partial_run_still_has_every_figure(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(run_dir / "00-prompts", run / "00-prompts")
    figures = _figures(report.render_report(run))
    assert list(figures) == list(report.FIGURES)
    assert all(_ink(image) > 0.005 for image in figures.values())


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        report.write_report(tmp_path / "missing")
    with pytest.raises(UserError, match="no finished stage"):
        report.write_report(tmp_path)
