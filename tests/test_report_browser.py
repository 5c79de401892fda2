"""The HTML report renders in a real headless browser (Debian's chromium, installed by scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness._engine.report import build_report

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


def layout(page: Path, profile: Path, width: int = 1280, height: int = 800) -> dict:
    """Where the headline table and the first figure lie in ``page`` rendered in a ``width`` x ``height`` window:
    a copy of the page with a script that writes their bounding boxes into the DOM, read back with --dump-dom."""
    import json
    import re

    probe = page.with_name("probe.html")
    script = ("<script>const box = s => { const e = document.querySelector(s); if (!e) return null; "
              "const r = e.getBoundingClientRect(); return [r.top, r.bottom, r.left, r.right]; };"
              "document.body.setAttribute('data-layout', JSON.stringify({headline: box('#headline-table'), "
              "figure: box('img'), viewport: [innerWidth, innerHeight]}));</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
           f"--window-size={width},{height}", "--dump-dom", probe.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-layout="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))


def test_the_headline_table_is_in_the_first_screen(tmp_path):
    run, _ = make_run(tmp_path / "run", control=True)
    report = build_report(run)
    where = layout(report.files["html"], tmp_path / "profile")
    top, bottom, left, right = where["headline"]
    # The whole headline table is visible without scrolling in a 1280 x 800 window, and comes before any figure.
    assert 0 < top and bottom <= where["viewport"][1] and right <= where["viewport"][0]
    assert where["figure"][0] > top
    # The same probe tells a page whose headline sits below a screen of other content: it is not in the first screen.
    late = tmp_path / "late.html"
    late.write_text(report.files["html"].read_text().replace('<h2 id="answer">',
                                                             '<div style="height:900px"></div><h2 id="answer">'))
    assert layout(late, tmp_path / "profile-late")["headline"][0] > 800
    # And a screenshot of that first screen holds the headline's colours (the dark header row).
    image = screenshot(report.files["html"], tmp_path / "first.png", tmp_path / "profile-shot", height=800)
    header = (np.abs(image - np.array([0x1f, 0x4e, 0x79]) / 255).max(axis=-1) < 0.02).mean()
    assert header > 0.005
