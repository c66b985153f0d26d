"""Policy files: the documented schema, defaults, and one-line errors naming the key and its line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from PIL import Image

from explainkit.cli.main import main
from explainkit.errors import ConfigError
from explainkit.gate.policy import load_policy, parse_policy

GOOD = """\
version = 1

[defaults]
alpha = 0.05
seed = 0
on_inconclusive = "warn"

[[checks]]
id = "spurious.watermark"
kind = "insertion"
artifact = "artifacts/stamp.png"
placement = "random"
repeats = 3
control = "mean_patch"
target_class = "cat"
data = "probe/clean"
max_images = 200
effect = "logit_shift"
tau = 1.0
severity = "error"

[[checks]]
id = "evidence.slices"
kind = "slice_gap"
slice = "cat & stamp"
data = "probe/clean"

[[waivers]]
check = "evidence.slices"
reason = "tracked in #42"
expires = 2027-01-31
"""


@pytest.fixture()
def folder(tmp_path) -> Path:
    (tmp_path / "artifacts").mkdir()
    Image.new("RGBA", (4, 4), (255, 0, 0, 255)).save(tmp_path / "artifacts" / "stamp.png")
    (tmp_path / "probe" / "clean").mkdir(parents=True)
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "policy.toml"
    path.write_text(text)
    return path


def _error(folder: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_policy(_write(folder, text))
    message = str(info.value)
    assert "\n" not in message
    return message


def _line(text: str, needle: str, occurrence: int = 0) -> int:
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line][occurrence]


def test_good_policy_and_defaults(folder):
    policy = load_policy(_write(folder, GOOD))
    first, second = policy.checks
    assert (first.id, first.kind, first.severity, first.tau, first.max_images) == \
        ("spurious.watermark", "insertion", "error", 1.0, 200)
    assert first.options["artifact"] == (folder / "artifacts" / "stamp.png").resolve()
    assert first.data == (folder / "probe" / "clean").resolve()
    assert first.target_class == "cat" and first.line == _line(GOOD, "[[checks]]")
    # evidence kinds warn by default; unset values come from [defaults] and the kind
    assert second.severity == "warning" and second.tau == 0.1 and second.max_images == 200
    assert policy.defaults.multiplicity == "holm" and policy.defaults.ci == 0.95
    waiver = policy.waiver_for("evidence.slices")
    assert waiver.expires == dt.date(2027, 1, 31) and not waiver.expired(dt.date(2027, 1, 31))
    assert waiver.expired(dt.date(2027, 2, 1))
    assert len(policy.sha256) == 64 and policy.to_dict()["checks"][0]["options"]["placement"] == "random"


def test_paths_are_relative_to_the_policy_file(folder, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    policy = load_policy(_write(folder, GOOD))
    assert policy.checks[0].options["artifact"].is_file()


@pytest.mark.parametrize(("old", "new", "fragment", "line_of"), [
    ("tau = 1.0", "taux = 1.0", "check #1 ('spurious.watermark'): unknown key 'taux'", "taux"),
    ("tau = 1.0", 'tau = "big"', "tau must be a finite number, not 'big'", "tau ="),
    ("tau = 1.0", "tau = -1", "tau must be > 0", "tau ="),
    ("repeats = 3", "repeats = 0", "repeats must be >= 1", "repeats"),
    ('placement = "random"', 'placement = "diagonal"', "placement must be one of 'random'", "placement"),
    ('control = "mean_patch"', 'control = "noise"', "control must be one of 'mean_patch', 'grey_patch', "
                                                   "'shuffled_pixels'", "control"),
    ('effect = "logit_shift"', 'effect = "auc"', "effect must be one of", "effect ="),
    ('severity = "error"', 'severity = "fatal"', "severity must be one of 'error', 'warning'", "severity"),
    ('kind = "insertion"', 'kind = "vibes"',
     "kind must be one of attribution_mass, insertion, randomisation, removal, slice_gap, slice_shift, "
     "transform, not 'vibes'",
     'kind = "vibes"'),
    ("alpha = 0.05", "alpha = 1.5", "[defaults]: alpha must be > 0 and < 1", "alpha"),
    ('on_inconclusive = "warn"', 'on_inconclusive = "maybe"', "on_inconclusive must be one of 'warn', 'fail'",
     "on_inconclusive"),
    ("seed = 0", "seed = 0\nmultiplicity = 3", "multiplicity must be one of 'holm'", "multiplicity"),
    ('artifact = "artifacts/stamp.png"', 'artifact = "artifacts/missing.png"',
     "artifact: file 'artifacts/missing.png' not found", "artifact"),
    ('data = "probe/clean"\nmax_images', 'data = "probe/dirty"\nmax_images', "data: folder 'probe/dirty' not found",
     "probe/dirty"),
    ("max_images = 200", "max_images = 2.5", "max_images must be an integer", "max_images"),
    ("expires = 2027-01-31", 'expires = "soon"', "waiver #1: expires must be a date like 2027-01-31", "expires"),
    ('check = "evidence.slices"', 'check = "nope"', "waiver for unknown check 'nope'", 'check = "nope"'),
    ('id = "evidence.slices"', 'id = "spurious.watermark"', "duplicate check id 'spurious.watermark'",
     ('id = "spurious.watermark"', 1)),
    ("version = 1", "version = 1\nextra = true", "unknown key 'extra' (allowed: version, defaults, checks, waivers)",
     "extra"),
])
def test_bad_values_name_key_and_line(folder, old, new, fragment, line_of):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    message = _error(folder, text)
    assert fragment in message
    line = _line(text, *line_of) if isinstance(line_of, tuple) else _line(text, line_of)
    assert message.startswith(f"policy.toml line {line}: "), message


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ("version = 1\n", "", "missing required key 'version'"),
    ("version = 1\n", "version = 2\n", "unsupported policy version 2"),
    ('target_class = "cat"\n', "", "kind 'insertion' needs target_class"),
    ('artifact = "artifacts/stamp.png"\n', "", "missing required key 'artifact'"),
    ('data = "probe/clean"\nmax_images', "max_images", "missing required key 'data'"),
    ('slice = "cat & stamp"\n', "", "kind 'slice_gap' needs exactly one of slice"),
    ('slice = "cat & stamp"\n', 'slice = "cat & stamp"\nconcept = "stamp"\n', "exactly one of slice"),
    ('target_class = "cat"', "target_class = -2", "target_class must be a class name or a non-negative index"),
])
def test_missing_and_conflicting_keys(folder, old, new, fragment):
    assert old in GOOD
    assert fragment in _error(folder, GOOD.replace(old, new, 1))


def test_structure_errors(folder):
    assert "invalid TOML" in _error(folder, "version = = 1")
    assert "has no checks" in _error(folder, "version = 1\n")
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(folder / "absent.toml")
    removal = GOOD.replace('kind = "slice_gap"\nslice = "cat & stamp"', 'kind = "removal"\ntarget_class = 0')
    assert "kind 'removal' needs artifact" in _error(folder, removal)


def test_mapping_policies_and_unknown_kind_keys(folder):
    base = {"version": 1, "checks": [{"id": "a", "kind": "insertion", "artifact": "artifacts/stamp.png",
                                      "target_class": 1, "data": "probe/clean"}]}
    policy = parse_policy(base, base_dir=folder)
    assert policy.checks[0].target_class == 1 and policy.checks[0].tau == 1.0
    bad = {**base, "checks": [{**base["checks"][0], "fill": "inpaint"}]}
    with pytest.raises(ConfigError, match=r"unknown key 'fill' \(allowed: id, kind, data"):
        parse_policy(bad, base_dir=folder)
    prob = {**base, "checks": [{**base["checks"][0], "effect": "prob_shift"}]}
    assert parse_policy(prob, base_dir=folder).checks[0].tau == 0.05


def test_cli_reports_policy_errors_with_exit_code_2(folder, demo_model_path, capsys):
    path = _write(folder, GOOD.replace("tau = 1.0", "taux = 1.0"))
    code = main(["check", str(demo_model_path), "--policy", str(path), "--out", str(folder / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        f"explainkit: error: policy.toml line {_line(GOOD, 'tau = 1.0')}: check #1 ('spurious.watermark'): "
        "unknown key 'taux' (allowed: id, kind, data, severity, tau, target_class, seed, max_images, time_budget_s, "
        "description, artifact, placement, repeats, control, effect, concept)"]
    assert not (folder / "out").exists()
