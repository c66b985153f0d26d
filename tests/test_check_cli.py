"""``explainkit check`` end to end: exit codes 0-4 through click's CliRunner, JUnit XML, GitHub output.

The bundled demo model learned the stamp (it was trained with the stamp on 90 % of circles): pasting
the stamp into clean probe images FAILs, pasting a shape it never saw PASSes. A copy of it with
NaN weights cannot be evaluated (ERROR, exit 3); a garbage file is refused (exit 4).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from explainkit.cli.main import main
from explainkit.errors import ExitCode

MAX_IMAGES = 40


def invoke(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real entry point (with its exit-code mapping) inside CliRunner's isolation."""
    runner = CliRunner()
    with runner.isolation(env={"GITHUB_ACTIONS": None, **(env or {})}) as (out, err, _):
        code = main(list(argv))
    return code, out.getvalue().decode(), err.getvalue().decode()


def _ring(path: Path) -> Path:
    im = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([0, 0, 11, 11], outline=(0, 230, 230, 255), width=3)
    im.save(path)
    return path


CHECK = """
[[checks]]
id = "{id}"
kind = "insertion"
artifact = "{artifact}"
placement = "corner:any"
repeats = 2
target_class = "circle"
data = "{data}"
max_images = {max_images}
tau = 1.0
{extra}
"""


def write_policy(folder: Path, checks: list[dict], defaults: str = "alpha = 0.05\nseed = 0") -> Path:
    text = f"version = 1\n\n[defaults]\n{defaults}\n" + "".join(
        CHECK.format(**{"max_images": MAX_IMAGES, "extra": "", **c}) for c in checks)
    path = folder / "policy.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_world):
    folder = tmp_path_factory.mktemp("check-cli")
    _ring(folder / "ring.png")
    return folder, {"stamp": str(small_world / "artifacts" / "stamp.png"), "ring": str(folder / "ring.png"),
                    "data": str(small_world)}


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, demo_model_path) -> Path:
    """The demo architecture with NaN weights: every logit is NaN."""
    import explainkit
    from explainkit.loading.save import save_model
    from explainkit.models import SYNTHETIC_PREPROCESSING

    handle = explainkit.load_model(demo_model_path)
    with torch.no_grad():
        for p in handle.module.parameters():
            p.fill_(float("nan"))
    return save_model(handle.module, tmp_path_factory.mktemp("nan") / "nan.safetensors",
                      arch="explainkit.models:tiny_cnn(num_classes=3)", class_names=handle.class_names,
                      preprocessing=SYNTHETIC_PREPROCESSING)


def test_exit_0_when_the_model_never_saw_the_artifact(setup, demo_model_path):
    folder, p = setup
    policy = write_policy(folder, [{"id": "ring", "artifact": p["ring"], "data": p["data"]}])
    code, out, _ = invoke("check", str(demo_model_path), "--policy", str(policy), "--out", str(folder / "o0"))
    assert code == ExitCode.OK, out
    assert "PASS" in out and "ring" in out


def test_exit_1_and_junit_failure_and_skipped(setup, demo_model_path):
    folder, p = setup
    policy = write_policy(folder, [
        {"id": "spurious.stamp", "artifact": p["stamp"], "data": p["data"]},
        {"id": "cut.short", "artifact": p["ring"], "data": p["data"], "extra": "time_budget_s = 1e-9"},
    ])
    junit = folder / "junit1.xml"
    code, out, _ = invoke("check", str(demo_model_path), "--policy", str(policy), "--out", str(folder / "o1"),
                          "--junit", str(junit), "--batch-size", "10")
    assert code == ExitCode.FINDINGS, out
    assert (folder / "o1" / "report.json").is_file() and (folder / "o1" / "report.html").is_file()
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("2", "1", "1", "0")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    fail, cut = cases["spurious.stamp"], cases["cut.short"]
    assert fail.find("failure") is not None and fail.find("skipped") is None
    assert fail.find("failure").get("type") == "SpuriousReliance"
    assert fail.find("failure").get("message").startswith("FAIL")
    assert cut.find("skipped") is not None and cut.find("skipped").get("message").startswith("INCONCLUSIVE")
    props = {q.get("name"): q.get("value") for q in fail.iter("property")}
    assert props["status"] == "fail" and props["correction"] == "holm" and int(props["n"]) == MAX_IMAGES
    assert float(props["ci_low"]) > float(props["tau"]) == 1.0
    assert float(props["p_adj"]) >= float(props["p"])


def test_github_annotations_and_step_summary(setup, demo_model_path, tmp_path):
    folder, p = setup
    policy = write_policy(folder, [{"id": "spurious.stamp", "artifact": p["stamp"], "data": p["data"]}])
    summary = tmp_path / "summary.md"
    code, out, _ = invoke("check", str(demo_model_path), "--policy", str(policy), "--out", str(tmp_path / "o"),
                          env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert code == ExitCode.FINDINGS
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    assert len(errors) == 1 and "spurious.stamp" in errors[0]
    line = policy.read_text().splitlines().index("[[checks]]") + 1
    assert f"line={line}" in errors[0]
    assert "spurious.stamp" in summary.read_text()


def test_exit_2_policy_error_names_key_and_line(setup, demo_model_path):
    folder, p = setup
    policy = write_policy(folder, [{"id": "x", "artifact": p["stamp"], "data": p["data"]}],
                          defaults="alpha = 0.05\nseed = 0\non_inconclusive = \"maybe\"")
    code, out, err = invoke("check", str(demo_model_path), "--policy", str(policy), "--out", str(folder / "o2"))
    assert code == ExitCode.USAGE and out == ""
    assert err.strip().splitlines() == [
        "explainkit: error: policy.toml line 6: [defaults]: on_inconclusive must be one of 'warn', 'fail', "
        "not 'maybe'"]
    assert not (folder / "o2").exists()


def test_exit_3_when_a_gating_check_cannot_run(setup, nan_model):
    folder, p = setup
    policy = write_policy(folder, [{"id": "spurious.stamp", "artifact": p["stamp"], "data": p["data"],
                                    "max_images": 12}])
    junit = folder / "junit3.xml"
    code, out, _ = invoke("check", str(nan_model), "--policy", str(policy), "--out", str(folder / "o3"),
                          "--junit", str(junit))
    assert code == ExitCode.RUNTIME, out
    case = ET.parse(junit).getroot().find(".//testcase")
    assert case.find("error") is not None and case.find("failure") is None
    assert "non-finite" in case.find("error").text


def test_exit_4_model_refused(setup, tmp_path):
    folder, p = setup
    policy = write_policy(folder, [{"id": "x", "artifact": p["stamp"], "data": p["data"]}])
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a model at all")
    code, out, err = invoke("check", str(garbage), "--policy", str(policy), "--out", str(tmp_path / "o4"))
    assert code == ExitCode.REFUSED and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("explainkit: error:")
