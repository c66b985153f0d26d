"""The gate on the synthetic world: a model that learned the planted stamp FAILs, its clean twin PASSes.

Both models follow one recipe (same world size, epochs and seed); only the stamp's correlation
with the ``circle`` class differs: 90 % of circles vs 5 % of the others carry it (biased), or 50 %
of every class (clean twin: the stamp says nothing about the class). The clean probe images never
carry the stamp, so the insertion test pastes it into images it has never been on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import explainkit
from explainkit.data.probe import ProbeSet
from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.datasets.training import train_classifier
from explainkit.errors import ExitCode

N_TRAIN, EPOCHS, N_PROBE = 300, 10, 100
TAU = 0.5


def _train(root: Path, seed: int, rate: float, other: float) -> explainkit.ModelHandle:
    write_world(WorldSpec(n_images=N_TRAIN, artifact="stamp", artifact_rate=rate, artifact_other_rate=other,
                          seed=seed), root)
    probe = ProbeSet.from_folder(root)
    model = train_classifier(probe, epochs=EPOCHS, seed=seed).model
    return explainkit.wrap(model, class_names=probe.class_names)


def _unseen_artifact(path: Path) -> Path:
    """A cyan ring on transparent ground: nothing like it is in any world."""
    im = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([0, 0, 11, 11], outline=(0, 230, 230, 255), width=3)
    im.save(path)
    return path


def _world(tmp: Path, seed: int) -> dict[str, object]:
    probe = tmp / "clean"
    write_world(WorldSpec(n_images=N_PROBE, artifact=None, seed=100 + seed), probe)
    stamped = tmp / "stamped"
    write_world(WorldSpec(n_images=N_PROBE, artifact="stamp", artifact_rate=0.5, artifact_other_rate=0.5,
                          seed=200 + seed), stamped)
    return {
        "biased": _train(tmp / "train-biased", seed, 0.9, 0.05),
        "clean": _train(tmp / "train-clean", seed, 0.5, 0.5),
        "probe": probe, "stamped": stamped,
        "stamp": stamped / "artifacts" / "stamp.png", "ring": _unseen_artifact(tmp / "ring.png"),
    }


@pytest.fixture(scope="module")
def world0(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("gate-world0"), seed=0)


def insertion_policy(artifact: Path, data: Path, *, seed: int = 0, control: str = "mean_patch", **extra) -> dict:
    check = {"id": "spurious.stamp", "kind": "insertion", "artifact": str(artifact), "placement": "corner:any",
             "repeats": 3, "control": control, "target_class": "circle", "data": str(data), "max_images": 60,
             "effect": "logit_shift", "tau": TAU, "severity": "error", **extra}
    return {"version": 1, "defaults": {"alpha": 0.05, "seed": seed}, "checks": [check]}


def test_biased_model_fails_and_clean_twin_passes(world0):
    biased = explainkit.check(world0["biased"], insertion_policy(world0["stamp"], world0["probe"]))
    clean = explainkit.check(world0["clean"], insertion_policy(world0["stamp"], world0["probe"]))
    b, c = biased.check("spurious.stamp"), clean.check("spurious.stamp")
    assert b["status"] == "fail" and biased.exit_code == ExitCode.FINDINGS, b["reason"]
    assert c["status"] == "pass" and clean.exit_code == ExitCode.OK, c["reason"]
    assert b["effect"]["ci_low"] > TAU > c["effect"]["ci_high"]
    assert b["n"] == c["n"] == 60 and not b["truncated"]
    # the control patch (a neutral occluder) barely moves either model; the stamp itself does the work
    assert abs(b["metrics"]["control_effect"]["value"]) < 0.2
    assert b["metrics"]["raw_effect"]["value"] == pytest.approx(
        b["effect"]["value"] + b["metrics"]["control_effect"]["value"])


def test_artifact_the_model_never_saw_passes(world0):
    result = explainkit.check(world0["biased"], insertion_policy(world0["ring"], world0["probe"]))
    c = result.check("spurious.stamp")
    assert c["status"] == "pass" and result.exit_code == 0, c["reason"]


def test_time_budget_truncation_is_inconclusive_not_pass(world0):
    policy = insertion_policy(world0["stamp"], world0["probe"], time_budget_s=1e-6)
    result = explainkit.check(world0["clean"], policy, batch_size=14)
    c = result.check("spurious.stamp")
    assert c["truncated"] and c["n"] < c["n_planned"] == 60
    assert c["status"] == "inconclusive" and result.exit_code == 0 and result.status == "inconclusive"
    policy["defaults"]["on_inconclusive"] = "fail"
    assert explainkit.check(world0["clean"], policy, batch_size=14).exit_code == ExitCode.FINDINGS


def test_evidence_kinds_on_the_biased_model(world0):
    policy = {"version": 1, "checks": [
        {"id": "removal", "kind": "removal", "artifact": str(world0["stamp"]), "target_class": "circle",
         "data": str(world0["stamped"]), "tau": TAU},
        {"id": "slices", "kind": "slice_gap", "concept": "stamp", "data": str(world0["stamped"])},
        {"id": "mass", "kind": "attribution_mass", "artifact": str(world0["stamp"]), "data": str(world0["stamped"]),
         "target_class": "circle"},
    ]}
    biased = explainkit.check(world0["biased"], policy)
    clean = explainkit.check(world0["clean"], policy)
    assert biased.check("removal")["status"] == "fail" and clean.check("removal")["status"] == "pass"
    assert biased.check("slices")["status"] == "fail"
    assert biased.check("slices")["effect"]["value"] > clean.check("slices")["effect"]["value"]
    # Grad-CAM of "circle" piles onto the stamp only in the model that learned it
    assert biased.check("mass")["status"] == "fail" and clean.check("mass")["status"] != "fail"
    assert biased.check("mass")["effect"]["ci_low"] > clean.check("mass")["effect"]["ci_high"]
    # evidence kinds warn by default: the run itself passes
    assert biased.exit_code == 0 and all(not c["gating"] for c in biased.checks)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fail_and_pass_across_seeds(tmp_path, seed):
    world = _world(tmp_path, seed)
    biased = explainkit.check(world["biased"], insertion_policy(world["stamp"], world["probe"], seed=seed))
    clean = explainkit.check(world["clean"], insertion_policy(world["stamp"], world["probe"], seed=seed))
    unseen = explainkit.check(world["biased"], insertion_policy(world["ring"], world["probe"], seed=seed))
    assert biased.check("spurious.stamp")["status"] == "fail"
    assert clean.check("spurious.stamp")["status"] == "pass"
    assert unseen.check("spurious.stamp")["status"] == "pass"


def test_same_seed_same_numbers_any_batch_size(world0):
    policy = insertion_policy(world0["stamp"], world0["probe"], max_images=20)
    a = explainkit.check(world0["biased"], policy, batch_size=7).check("spurious.stamp")
    b = explainkit.check(world0["biased"], policy, batch_size=64).check("spurious.stamp")
    assert a["details"]["per_image"]["ids"] == b["details"]["per_image"]["ids"]
    np.testing.assert_allclose(a["details"]["per_image"]["effect"], b["details"]["per_image"]["effect"], atol=1e-5)
    assert a["effect"]["ci_low"] == pytest.approx(b["effect"]["ci_low"], abs=1e-5)
    policy["defaults"]["seed"] = 1
    c = explainkit.check(world0["biased"], policy).check("spurious.stamp")
    assert c["details"]["per_image"]["ids"] != a["details"]["per_image"]["ids"]


def test_controls_on_the_biased_model(world0):
    """mean/grey patches are neutral occluders; shuffled pixels keep the stamp's colours and absorb part of it."""
    effects = {}
    for control in ("mean_patch", "grey_patch", "shuffled_pixels"):
        c = explainkit.check(world0["biased"], insertion_policy(world0["stamp"], world0["probe"], control=control,
                                                               max_images=40)).check("spurious.stamp")
        effects[control] = c
    raw = effects["mean_patch"]["metrics"]["raw_effect"]["value"]
    for c in effects.values():  # the same placements: the raw effect does not depend on the control
        assert c["metrics"]["raw_effect"]["value"] == pytest.approx(raw)
    assert effects["shuffled_pixels"]["metrics"]["control_effect"]["value"] > \
        effects["mean_patch"]["metrics"]["control_effect"]["value"]
    assert any("shuffled_pixels" in n for n in effects["shuffled_pixels"]["notes"])
    assert not effects["mean_patch"]["notes"]


def test_torch_threads_untouched():
    assert torch.get_num_threads() >= 1
