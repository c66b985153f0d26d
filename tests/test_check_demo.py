"""The demo's gate: the example policy and stamp asset, on the bundled model (which learned the stamp)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

import explainkit
from explainkit.datasets.demo import PROBE_WORLD, bundled_asset, run_demo
from explainkit.datasets.synthetic import stamp_template, write_world
from explainkit.errors import ExitCode
from explainkit.gate import list_check_kinds, load_policy
from explainkit.report import schema_path


def test_stamp_asset_is_the_worlds_stamp():
    with Image.open(bundled_asset("stamp.png")) as im:
        asset = np.asarray(im.convert("RGBA"))
    np.testing.assert_array_equal(asset, np.asarray(stamp_template(PROBE_WORLD.size)))


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """The example policy and stamp next to a 60-image probe world like the demo's."""
    folder = tmp_path_factory.mktemp("demo-gate")
    write_world(replace(PROBE_WORLD, n_images=60), folder / "probe")
    for name in ("demo_policy.toml", "stamp.png"):
        shutil.copyfile(bundled_asset(name), folder / name)
    return folder


def test_example_policy_uses_every_kind(demo_folder):
    policy = load_policy(demo_folder / "demo_policy.toml")
    assert sorted({c.kind for c in policy.checks}) == sorted(list_check_kinds())
    gating = [c.id for c in policy.checks if c.severity == "error"]
    assert gating == ["spurious.stamp"]


@pytest.fixture(scope="module")
def demo_check(demo_folder, demo_model_path):
    """The example policy run once on the demo model (shared by the tests below)."""
    return explainkit.check(explainkit.load_model(demo_model_path), demo_folder / "demo_policy.toml",
                            out=demo_folder / "check", junit=demo_folder / "check" / "junit.xml")


def test_example_policy_fails_the_demo_model(demo_folder, demo_check):
    result = demo_check
    assert result.exit_code == ExitCode.FINDINGS and result.status == "fail"
    statuses = {c["id"]: c["status"] for c in result.checks}
    assert statuses["spurious.stamp"] == "fail" and statuses["attribution.stamp"] == "fail"
    assert "error" not in statuses.values(), [c["error"] for c in result.checks]
    on_disk = json.loads((demo_folder / "check" / "report.json").read_text())
    assert on_disk["exit_code"] == 1 and [c["id"] for c in on_disk["checks"]] == list(statuses)
    jsonschema.validate(on_disk, json.loads(Path(schema_path()).read_text()))
    failures = [c.get("name") for c in ET.parse(demo_folder / "check" / "junit.xml").getroot().iter("testcase")
                if c.find("failure") is not None]
    assert "spurious.stamp" in failures


@pytest.mark.parametrize("kind", list_check_kinds())
def test_every_kind_runs_on_the_demo_world(kind, demo_check):
    """Conformance over the kind registry: each kind has an example in the demo policy, and it measures on the
    demo world (no ERROR) a record that validates, with a consistent effect, CI, p-values and sample size."""
    records = [c for c in demo_check.checks if c["kind"] == kind]
    assert records, f"add an example [[checks]] of kind {kind!r} to explainkit/datasets/assets/demo_policy.toml"
    schema = json.loads(Path(schema_path()).read_text())
    for rec in records:
        assert rec["status"] != "error", rec["error"]
        jsonschema.validate(rec, {**schema["$defs"]["check"], "$defs": schema["$defs"]})
        effect = rec["effect"]
        assert effect["unit"] and effect["value"] is not None, rec["id"]
        if effect["ci_low"] is not None:  # (a slice under min_slice_size has no CI)
            assert effect["ci_low"] <= effect["value"] <= effect["ci_high"], rec["id"]
        assert 0 <= rec["p"] <= rec["p_adj"] <= 1 and rec["tau"] > 0, rec["id"]
        assert 0 < rec["n"] <= rec["n_planned"] and not rec["truncated"], rec["id"]


@pytest.mark.slow
def test_run_demo_end_to_end(tmp_path):
    """The full demo (about 2-3 minutes on 2 cores): every angle shows the stamp, and it returns normally."""
    messages: list[str] = []
    paths = run_demo(tmp_path / "demo", progress=False, echo=messages.append)
    report = json.loads(paths["json"].read_text())
    sections = {s["analyzer"]: s for s in report["sections"]}
    assert {"performance", "gradcam", "invert"} <= set(sections)
    gate = json.loads(paths["check_json"].read_text())
    assert gate["exit_code"] == 1
    assert {c["id"]: c["status"] for c in gate["checks"]}["spurious.stamp"] == "fail"
    assert any("would exit 1" in m for m in messages)
    assert any("'stamp'" in f["message"] for f in report["findings"] if f["analyzer"] == "invert")
    assert paths["junit"].is_file() and paths["check_report"].is_file() and paths["policy"].is_file()
