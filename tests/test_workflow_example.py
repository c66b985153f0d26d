"""The GitHub Actions example in docs/ calls explainkit with options the command line accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from explainkit.cli.main import cli

WORKFLOW = Path(__file__).resolve().parents[1] / "docs" / "examples" / "explainkit-workflow.yml"


def _explainkit_steps(doc: dict) -> list[tuple[str, list[str]]]:
    steps = []
    for name, job in doc["jobs"].items():
        for step in job["steps"]:
            run = step.get("run", "")
            if run.startswith("explainkit "):
                steps.append((name, shlex.split(run.split("||")[0])[1:]))
    return steps


def test_workflow_commands_parse(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(WORKFLOW.read_text())
    triggers = doc[True] if True in doc else doc["on"]  # YAML 1.1 reads the key `on` as true
    assert {"schedule", "pull_request"} <= set(triggers)
    steps = _explainkit_steps(doc)
    assert [(job, args[0]) for job, args in steps] == [("discover", "discover"), ("gate", "check"),
                                                       ("gate", "check"), ("gate", "diff")]
    # the paths the example names, as empty files and folders: only the parsing is under test
    monkeypatch.chdir(tmp_path)
    for path in ("models/model.safetensors", "base/models/model.safetensors", "ci/policy.toml",
                 "ci/regression.toml", "base-gate-out/report.json", "gate-out/report.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    (tmp_path / "data" / "probe").mkdir(parents=True)
    for _, args in steps:
        command = cli.commands[args[0]]
        with command.make_context(args[0], args[1:]) as ctx:
            assert ctx.params.get("model", ctx.params.get("new")).endswith(("model.safetensors", "report.json"))
