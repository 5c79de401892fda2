"""The HTML report renders in a real headless browser (Debian's chromium, installed by scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.report import build_report

from .test_report import make_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs the "
                                                          "Debian package `chromium`)")


def screenshot(page: Path, out: Path, profile: Path, height: int = 2400) -> np.ndarray:
    """Render ``page`` headless and return the screenshot as an RGB array in [0, 1]."""
    from matplotlib.image import imread

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
           f"--window-size=1280,{height}", f"--screenshot={out}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return imread(out)[..., :3]


def ink(image: np.ndarray) -> float:
    """Fraction of pixels that are not (near) white."""
    return float((image.min(axis=-1) < 0.9).mean())


def test_html_report_renders_in_headless_chromium(tmp_path):
    run, _ = make_run(tmp_path / "run", not_started={"attacks/uat/base/s2"})
    report = build_report(run)
    image = screenshot(report.files["html"], tmp_path / "report.png", tmp_path / "profile")
    assert image.shape[:2] == (2400, 1280)
    # A rendered report: text, tables and the embedded figures cover a good part of the page in many colours
    # (plot lines, table shading, the indicators' green/red rows).
    assert ink(image) > 0.05
    colours = np.unique((image.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200
    # The same check on a blank page fails: the test tells a rendered report from an empty one.
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert ink(screenshot(blank, tmp_path / "blank.png", tmp_path / "profile-blank", height=600)) < 0.001
