"""The HTML report in a real headless Chromium, networking off: no console messages, every image decodes."""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import explainkit
from explainkit.analyzers import get_analyzer_class, list_analyzers

CHROMIUM = shutil.which(os.environ.get("EXPLAINKIT_CHROMIUM", "chromium")) or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")]

_PROBE = """<script>window.addEventListener('load',function(){var imgs=[].slice.call(document.images);
var bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).length;
document.body.setAttribute('data-ek-test',JSON.stringify({n:imgs.length,bad:bad}));});</script>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def full_report(small_world, demo_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 4))
    names = [n for n in list_analyzers() if not get_analyzer_class(n)().missing_requirements(handle, probe)]
    explainkit.analyze(handle, probe, names, out=out, progress=False)
    return out / "report.html", names


def test_report_loads_without_console_messages_and_images_decode(full_report, tmp_path, artifacts_dir):
    page, names = full_report
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    result = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri())
    consoles = [ln for ln in result.stderr.splitlines() if ":CONSOLE" in ln]
    assert not consoles, consoles
    match = re.search(r'data-ek-test="([^"]*)"', result.stdout)
    assert match, result.stderr[-2000:]
    state = json.loads(html_lib.unescape(match.group(1)))
    assert state["bad"] == 0, state
    assert state["n"] == page.read_text().count("<img ")
    for name in names:
        assert f'id="sec-{name}"' in result.stdout
    shot = artifacts_dir / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
