"""``explainkit diff``: changes against direct computations (NumPy, SciPy), regression rules, findings, errors.

The reports are the golden demo's check and analysis reports (real documents), edited here to
play a second model version.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from explainkit.cli.main import main
from explainkit.errors import ConfigError, DataError, ExitCode
from explainkit.gate.diff import Regression, diff_reports, load_regressions, load_report, render_diff_html

GOLDEN = Path(__file__).resolve().parent / "golden" / "demo_report.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _grown(check_doc: dict, check_id: str, by: np.ndarray | float) -> dict:
    """A copy of the check report where one check's per-image effects grew by ``by``."""
    new = copy.deepcopy(check_doc)
    c = next(c for c in new["checks"] if c["id"] == check_id)
    per = c["details"]["per_image"]
    per["effect"] = (np.asarray(per["effect"]) + by).tolist()
    return new


def _write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name / "report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return path


def test_identical_reports_change_nothing(golden):
    d = diff_reports(golden["check"], golden["check"])
    assert d["status"] == "ok" and d["exit_code"] == 0
    assert d["findings"] == {"new": [], "gone": []}
    for row in d["checks"]:
        if row["change"] is not None and row["change"]["paired"]:
            assert row["change"]["value"] == 0.0


def test_paired_change_matches_numpy_and_scipy(golden):
    check_id = golden["check"]["checks"][0]["id"]
    old = next(c for c in golden["check"]["checks"] if c["id"] == check_id)
    n = len(old["details"]["per_image"]["effect"])
    by = np.random.default_rng(0).normal(0.3, 0.2, n)
    d = diff_reports(golden["check"], _grown(golden["check"], check_id, by))
    row = next(r for r in d["checks"] if r["id"] == check_id)
    change = row["change"]
    assert change["paired"] and change["n"] == n
    assert change["value"] == pytest.approx(by.mean(), abs=1e-9)
    assert change["p"] == pytest.approx(stats.wilcoxon(by, alternative="greater").pvalue, rel=1e-6)
    assert change["ci"][0] < by.mean() < change["ci"][1]


def test_independent_change_from_the_two_cis():
    def report(value, low, high):
        return {"kind": "check", "sections": [], "checks": [
            {"id": "c", "status": "pass", "n": 40, "effect": {"value": value, "ci_low": low, "ci_high": high}}]}

    d = diff_reports(report(0.2, 0.0, 0.4), report(1.0, 0.7, 1.3), confidence=0.95)
    change = d["checks"][0]["change"]
    z = stats.norm.ppf(0.975)
    se = math.hypot(0.4 / (2 * z), 0.6 / (2 * z))
    assert not change["paired"] and change["value"] == pytest.approx(0.8)
    assert change["ci"] == pytest.approx([0.8 - z * se, 0.8 + z * se])
    assert change["p"] == pytest.approx(stats.norm.sf(0.8 / se))


def test_regression_rules_fail_pass_and_missing(golden):
    check_id = golden["check"]["checks"][0]["id"]
    new = _grown(golden["check"], check_id, 2.0 + np.linspace(-0.1, 0.1, len(
        golden["check"]["checks"][0]["details"]["per_image"]["effect"])))
    rules = [Regression(check_id, 1.0), Regression("not-a-check", 1.0)]
    d = diff_reports(golden["check"], new, regressions=rules)
    by_item = {r["item"]: r for r in d["regressions"]}
    assert by_item[check_id]["status"] == "fail" and d["exit_code"] == ExitCode.FINDINGS
    assert by_item["not-a-check"]["status"] == "inconclusive"
    # Holm over two rules, one with a p-value: its adjusted p is its own (the other has none)
    assert by_item[check_id]["p_adj"] == pytest.approx(by_item[check_id]["change"]["p"])
    small = diff_reports(golden["check"], _grown(golden["check"], check_id, 0.0),
                         regressions=[Regression(check_id, 1.0)])
    assert small["regressions"][0]["status"] == "pass" and small["exit_code"] == 0


def test_new_and_gone_findings_and_units(golden):
    old = copy.deepcopy(golden["check"])
    new = copy.deepcopy(golden["check"])
    failing = [c["id"] for c in old["checks"] if c["status"] == "fail"]
    assert failing
    for c in new["checks"]:
        if c["id"] == failing[0]:
            c["status"] = "pass"
    d = diff_reports(old, new)
    assert d["findings"]["gone"] == [f"check {failing[0]} fails"] and d["findings"]["new"] == []
    a_old = copy.deepcopy(golden["analyze"])
    a_new = copy.deepcopy(golden["analyze"])
    inv = next(s for s in a_new["sections"] if s["analyzer"] == "invert")
    inv["data"]["artifact_neurons"] = (inv["data"].get("artifact_neurons") or []) + [
        {"layer": "features.9", "neuron": 99, "formula": "stamp"}]
    d = diff_reports(a_old, a_new)
    assert d["artifact_units"]["new"] == [{"unit": "features.9/99", "formula": "stamp"}]


def test_slice_accuracy_changes(golden):
    new = copy.deepcopy(golden["analyze"])
    perf = next(s for s in new["sections"] if s["analyzer"] == "performance")
    sl = perf["data"]["slices"][0]
    sl["accuracy"]["value"] -= 0.1
    d = diff_reports(golden["analyze"], new)
    key = sl["slice"] if sl["class"] is None else f"{sl['class']} & {sl['slice']}"
    row = next(r for r in d["slices"] if r["id"] == key)
    assert row["change"]["value"] == pytest.approx(-0.1)


def test_cli_writes_json_and_html_and_exits_1_on_a_failed_rule(golden, tmp_path, capsys):
    check_id = golden["check"]["checks"][0]["id"]
    old = _write(tmp_path, "old", golden["check"])
    new = _write(tmp_path, "new", _grown(golden["check"], check_id, 3.0))
    rules = tmp_path / "rules.toml"
    rules.write_text(f'version = 1\n[[regression]]\nitem = "{check_id}"\ntau = 1.0\n')
    out = tmp_path / "out"
    assert main(["diff", str(old), str(new), "--policy", str(rules), "--out", str(out)]) == ExitCode.FINDINGS
    doc = json.loads((out / "diff.json").read_text())
    assert doc["status"] == "fail" and "FAIL" in capsys.readouterr().out
    assert "<table>" in (out / "diff.html").read_text()
    assert main(["diff", str(old), str(old), "--out", str(tmp_path / "same")]) == ExitCode.OK


def test_bad_inputs_are_one_line_errors(tmp_path, golden, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        load_report(bad)
    other = tmp_path / "other.json"
    other.write_text('{"kind": "something"}')
    with pytest.raises(DataError, match="not an explainkit report"):
        load_report(other)
    rules = tmp_path / "rules.toml"
    for text in ("version = 1\n", 'version = 1\n[[regression]]\nitem = "x"\ntau = -1\n',
                 'version = 1\n[[regression]]\nitem = "x"\ntau = 1\nextra = 2\n', "version = 2\n"):
        rules.write_text(text)
        with pytest.raises(ConfigError):
            load_regressions(rules)
    good = _write(tmp_path, "good", golden["check"])
    assert main(["diff", str(bad), str(good), "--out", str(tmp_path / "o")]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("explainkit: error:")


def test_html_escapes_report_text():
    effect = {"value": 1.0, "ci_low": 0.5, "ci_high": 1.5}
    doc = {"kind": "check", "sections": [], "checks": [{"id": "<script>x</script>", "status": "fail", "n": 3,
                                                        "effect": effect}]}
    page = render_diff_html(diff_reports(doc, doc))
    assert "<script>" not in page and "&lt;script&gt;" in page
