"""End-to-end smoke test of the foundation: load the demo model, analyze, report."""

import json

import jsonschema

import explainkit
from explainkit.report import schema_path


def test_analyze_demo_model_end_to_end(demo_handle, small_world, tmp_path):
    report = explainkit.analyze(demo_handle, small_world, ["performance"], out=tmp_path, seed=0)
    doc = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(doc, json.loads(open(schema_path()).read()))
    perf = report.section("performance")
    acc = perf["data"]["accuracy"]
    assert 0 <= acc["ci_low"] <= acc["value"] <= acc["ci_high"] <= 1
    matrix = perf["data"]["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == 120
    assert acc["value"] == sum(matrix[i][i] for i in range(3)) / 120
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
