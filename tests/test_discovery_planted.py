"""``explainkit discover`` on planted worlds: the cue comes out on top, with statistics; its policy runs.

The default tests use the bundled demo model (trained where the stamp marks 90 % of circles) on the
demo's probe world (the stamp on 40 % of every class), with and without the stamp's concept
column. The slow tests train 32-px models (about 10 s each): a stamp, a background tint and a
colour cast, each correlated with ``circle`` in training, and clean twins over several seeds.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

import explainkit
from explainkit.adapters.activations import extract_activations
from explainkit.analyzers.base import RunContext
from explainkit.backends.plan import RunPlan, map_shard
from explainkit.cli.main import main
from explainkit.data.probe import ProbeSet
from explainkit.datasets.demo import PROBE_WORLD
from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.datasets.training import train_classifier
from explainkit.discovery.analyzer import Discovery
from explainkit.errors import ExitCode
from explainkit.gate.policy import load_policy
from explainkit.loading.preprocessing import Preprocessing
from explainkit.report import schema_path

TAU = 0.2


def _truth(root: Path, cue: str) -> dict[str, bool]:
    return {s["id"]: bool(s[cue]) for s in json.loads((root / "world.json").read_text())["samples"]}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The demo's probe world (150 of its images), with and without the stamp's concept column."""
    base = tmp_path_factory.mktemp("discover")
    write_world(replace(PROBE_WORLD, n_images=150), base / "named")
    write_world(replace(PROBE_WORLD, n_images=150, artifact_column=False), base / "unnamed")
    return base


@pytest.fixture(scope="module")
def named(worlds, demo_model_path):
    """``explainkit discover`` (command line) on the world that names the stamp."""
    out = worlds / "out-named"
    code = main(["discover", str(demo_model_path), "--data", str(worlds / "named"), "--out", str(out),
                 "--no-progress"])
    assert code == ExitCode.OK
    return out


def _independent_effect(section: dict, cand: dict) -> float:
    """The candidate's effect from the per-image table, one class at a time (no library code)."""
    per = section["data"]["per_image"]
    members = set(cand["members"])
    diffs, weights = [], []
    for cls in sorted(set(per["label"])):
        rows = [i for i, (lab, split) in enumerate(zip(per["label"], per["split"]))
                if lab == cls and split == "confirmation"]
        p = np.array([per["prob"][cand["target_class"]][i] for i in rows])
        inside = np.array([per["ids"][i] in members for i in rows])
        if inside.sum() >= 5 and (~inside).sum() >= 5:
            diffs.append(p[inside].mean() - p[~inside].mean())
            weights.append(inside.sum())
    return float(np.dot(diffs, weights) / np.sum(weights))


def test_named_stamp_is_the_top_candidate(named, worlds):
    report = json.loads((named / "report.json").read_text())
    jsonschema.validate(report, json.loads(Path(schema_path()).read_text()))
    section = next(s for s in report["sections"] if s["analyzer"] == "discovery")
    top = section["data"]["candidates"][0]
    assert (top["cue"], top["source"], top["target_class"], top["significant"]) == ("stamp", "concept", "circle", True)
    assert top["ci"][0] > TAU and top["p_adj"] < 1e-10 and top["group_lead"]
    assert top["effect"] == pytest.approx(_independent_effect(section, top), abs=1e-5)
    # Holm over every tested candidate, by hand
    p = np.array([c["p"] for c in section["data"]["candidates"]])
    order = np.argsort(p)
    holm = np.minimum(1, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    np.testing.assert_allclose(np.array([c["p_adj"] for c in section["data"]["candidates"]])[order], holm)
    truth = _truth(worlds / "named", "stamp")
    assert sorted(top["members"]) == sorted(k for k, v in truth.items() if v)
    excluded = {e["concept"] for e in section["data"]["excluded_concepts"]}
    assert {"circle", "square", "triangle"} <= excluded  # the class factor coincides with the label
    # the other image-derived slices of the stamp group under it; nothing unrelated is significant
    stamp_group = [c for c in section["data"]["candidates"] if c["group"] == top["group"]]
    assert all(np.mean([truth[m] for m in c["members"]]) > 0.9 for c in stamp_group
               if c["target_class"] == "circle")
    assert sum(c["significant"] and c["group"] != top["group"] for c in section["data"]["candidates"]) <= 1
    html = (named / "report.html").read_text()
    assert "Discovered candidate spurious cues" in html and html.count("data:image/jpeg") >= 4


def test_diff_of_a_discovery_report_pairs_the_candidate(named):
    """A second version whose members' target probability rose by 0.1 on the confirmation split: +0.1, paired."""
    import copy

    from explainkit.gate.diff import Regression, diff_reports

    old = json.loads((named / "report.json").read_text())
    new = copy.deepcopy(old)
    data = next(s for s in new["sections"] if s["analyzer"] == "discovery")["data"]
    top = data["candidates"][0]
    members = set(top["members"])
    per = data["per_image"]
    prob = per["prob"][top["target_class"]]
    for i, (sid, split) in enumerate(zip(per["ids"], per["split"])):
        if sid in members and split == "confirmation":
            prob[i] += 0.1
    d = diff_reports(old, new, regressions=[Regression(top["id"], 0.05)])
    row = next(r for r in d["candidates"] if r["id"] == top["id"])
    assert row["change"]["paired"] and row["change"]["value"] == pytest.approx(0.1, abs=1e-9)
    assert d["regressions"][0]["status"] == "fail"
    assert diff_reports(old, old)["findings"] == {"new": [], "gone": []}


def test_policy_from_discover_is_valid_and_its_insertion_check_fails(named, demo_model_path, tmp_path):
    policy = load_policy(named / "policy.toml")
    kinds = {c.kind for c in policy.checks}
    assert {"insertion", "removal", "slice_shift"} <= kinds
    insertion = next(c for c in policy.checks if c.kind == "insertion")
    assert insertion.severity == "error" and insertion.options["placement"] == "corner:any"
    members = (named / "members").glob("*.txt")
    assert [m.name for m in members] == ["discover.concept.stamp_circle.txt"]
    code = main(["check", str(demo_model_path), "--policy", str(named / "policy.toml"), "--out", str(tmp_path),
                 "--no-progress"])
    assert code == ExitCode.FINDINGS
    checks = {c["kind"]: c for c in json.loads((tmp_path / "report.json").read_text())["checks"]}
    assert checks["insertion"]["status"] == "fail" and checks["slice_shift"]["status"] == "fail"
    assert checks["slice_shift"]["effect"]["ci_low"] > TAU


def test_slice_shift_reads_member_lists_strictly(worlds, demo_model_path, tmp_path, capsys):
    members = tmp_path / "m.txt"
    members.write_text("# a comment\ncircle/img_00000.png\n\nnot/there.png\n")
    policy = tmp_path / "p.toml"
    body = (f'version = 1\n[[checks]]\nid = "s"\nkind = "slice_shift"\ntarget_class = "circle"\n'
            f'data = "{worlds / "named"}"\n')
    policy.write_text(body + 'members = "m.txt"\n')
    assert main(["check", str(demo_model_path), "--policy", str(policy)]) == ExitCode.USAGE
    assert "members file m.txt line 4: not/there.png is not an image of the probe set" in capsys.readouterr().err
    policy.write_text(body + 'members = "m.txt"\nconcept = "stamp"\n')
    assert main(["check", str(demo_model_path), "--policy", str(policy)]) == ExitCode.USAGE
    assert "needs exactly one of members (a file) and concept" in capsys.readouterr().err


def test_unnamed_stamp_is_found_from_images(worlds, demo_model_path, tmp_path):
    result = explainkit.discover(explainkit.load_model(demo_model_path), worlds / "unnamed", out=tmp_path)
    truth = _truth(worlds / "unnamed", "stamp")
    top = result.candidates[0]
    assert top["source"] in ("cluster", "attribution") and top["significant"] and top["target_class"] == "circle"
    assert np.mean([truth[m] for m in top["members"]]) >= 0.9 and top["ci"][0] > TAU
    assert not any(c["significant"] for c in result.candidates if c["source"] == "concept")
    assert (tmp_path / "policy.toml").is_file() and load_policy(tmp_path / "policy.toml").checks


def test_embeddings_and_predictions_come_from_one_forward_pass(worlds, demo_model_path):
    handle = explainkit.load_model(demo_model_path)
    probe = ProbeSet.from_folder(worlds / "named").subset(np.arange(0, 150, 5))
    analyzer = Discovery(sources=["concept", "cluster"])
    ctx = RunContext(handle=handle, data=probe, device=torch.device("cpu"), batch_size=8)
    analyzer.check_params()
    analyzer.validate(ctx)
    analyzer.prepare(ctx)
    calls = []
    handle.module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    states, _ = map_shard(RunPlan(handle, probe, [analyzer], None, progress=False), ctx, range(len(probe)))
    assert calls == [8, 8, 8, 6]  # one pass per batch, nothing else
    acts, _ = extract_activations(handle, probe, [analyzer.layer_])
    np.testing.assert_allclose(states["discovery"].stacked("emb"), acts[analyzer.layer_], rtol=1e-5, atol=1e-6)


def test_models_without_hooks_or_with_a_fixed_batch(worlds, demo_model_path, tmp_path):
    """TorchScript (no module hooks): the logits are the embedding, and the sources needing a layer say why
    they did not run. torch.export with a fixed batch of 8: the captured layer is trimmed to each batch."""
    module = explainkit.load_model(demo_model_path).module.eval()
    torch.jit.save(torch.jit.script(module), tmp_path / "ts.pt")
    torch.export.save(torch.export.export(module, (torch.randn(8, 3, 64, 64),)), tmp_path / "m.pt2")
    prep = {"input_size": 64, "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5", "class_names": None}
    probe = ProbeSet.from_folder(worlds / "named").subset(np.arange(0, 150, 2))
    for name, layer in (("ts.pt", "@logits"), ("m.pt2", "features.3")):
        handle = explainkit.load_model(tmp_path / name, trust=True, **prep)
        result = explainkit.discover(handle, probe, batch_size=8, layer=None if name == "ts.pt" else layer,
                                     params={"examples": 0})
        data = result.report.section("discovery")["data"]
        assert data["embedding"]["layer"] == layer
        assert data["sources"]["concept"]["ran"] and data["sources"]["cluster"]["ran"]
        if name == "ts.pt":
            assert not data["sources"]["attribution"]["ran"] and "module hooks" in data["sources"]["invert"]["reason"]
        assert result.candidates[0]["cue"] == "stamp" and result.candidates[0]["significant"]


def test_command_line_errors_are_one_line_with_exit_codes(worlds, demo_model_path, tmp_path, capsys):
    model = str(demo_model_path)
    cases = [
        ([model], ExitCode.USAGE, "--data is required"),
        ([model, "--data", str(tmp_path / "nope")], ExitCode.USAGE, "does not exist"),
        ([model, "--data", str(worlds / "unnamed"), "--source", "invert"], ExitCode.USAGE,
         "cannot run here: invert (no concept is marked as an artifact"),
        ([model, "--data", str(worlds / "named"), "--layer", "nope"], ExitCode.USAGE, "no layer named 'nope'"),
        ([model, "--data", str(worlds / "named"), "--tau", "2"], ExitCode.USAGE, "--tau"),
    ]
    bad_config = tmp_path / "c.toml"
    bad_config.write_text("[analyzer.discovery]\nclusters = 3\n")
    cases.append(([model, "--data", str(worlds / "named"), "--config", str(bad_config)], ExitCode.USAGE,
                  "bad parameter for analyzer 'discovery'"))
    refused = tmp_path / "model.pt"
    refused.write_bytes(b"not a model at all")
    cases.append(([str(refused), "--data", str(worlds / "named")], ExitCode.REFUSED, ""))
    for args, code, message in cases:
        assert main(["discover", *args, "--out", str(tmp_path / "out")]) == code, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("explainkit: error:") and message in err[0] and "Traceback" not in "".join(err)
    assert not (tmp_path / "out").exists()


# -- slow: trained models on planted worlds and clean twins -------------------------------------------

SIZE = 32
PREP = Preprocessing((SIZE, SIZE), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _model(root: Path, seed: int, kind: str | None, rates: tuple[float, float] = (0.9, 0.05)) -> explainkit.ModelHandle:
    """A 32-px classifier trained on a world where the cue marks ``rates`` of circles / of the other classes."""
    spec = WorldSpec(n_images=600, size=SIZE, artifact="cue" if kind else None, artifact_kind=kind or "stamp",
                     artifact_rate=rates[0], artifact_other_rate=rates[1], seed=1000 + seed)
    write_world(spec, root)
    probe = ProbeSet.from_folder(root)
    model = train_classifier(probe, epochs=30, seed=seed, preprocessing=PREP).model
    return explainkit.wrap(model, input_size=SIZE, mean="0.5,0.5,0.5", std="0.5,0.5,0.5",
                           class_names=probe.class_names)


def _probe(root: Path, seed: int, kind: str, column: bool) -> Path:
    write_world(WorldSpec(n_images=300, size=SIZE, artifact="cue", artifact_kind=kind, artifact_rate=0.4,
                          artifact_other_rate=0.4, artifact_column=column, seed=2000 + seed), root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stamp", "background", "cast"])
def test_planted_cues_come_first(kind, tmp_path):
    handle = _model(tmp_path / "train", 0, kind)
    for column in (True, False):
        root = _probe(tmp_path / f"probe-{column}", 0, kind, column)
        result = explainkit.discover(handle, root, out=tmp_path / f"out-{column}")
        top = result.candidates[0]
        truth = _truth(root, "cue")
        assert top["significant"] and top["target_class"] == "circle" and top["ci"][0] > TAU, (kind, column, top)
        assert np.mean([truth[m] for m in top["members"]]) >= 0.9, (kind, column, top["cue"])
        if column:
            assert (top["cue"], top["source"]) == ("cue", "concept")
        tomllib.loads((tmp_path / f"out-{column}" / "policy.toml").read_text())


@pytest.mark.slow
def test_clean_models_yield_no_significant_candidate(tmp_path):
    """Models trained without any correlation, five seeds, probes with and without an (unused) stamp column."""
    named = []
    for seed in range(5):
        handle = _model(tmp_path / f"train-{seed}", seed, None)
        for column in (True, False):
            root = _probe(tmp_path / f"probe-{seed}-{column}", seed, "stamp", column)
            result = explainkit.discover(handle, root)
            named += [(seed, column, c["cue"], c["effect"], c["p_adj"]) for c in result.significant]
    assert named == []
