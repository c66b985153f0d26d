"""The shared pass of a batch, batched faithfulness passes, follow-up rounds and time budgets."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import explainkit
from explainkit.analyzers.base import Analyzer, PassRequest, RecordState, RoundRequest
from explainkit.backends import Backend, Outcome, map_shard, merge_states, shard_indices
from explainkit.backends.passes import merge_requests, rows_per_pass, run_passes
from explainkit.cam import metrics
from explainkit.cam.engine import CamRun
from explainkit.hooks import hook_count
from explainkit.stats.sequential import priority_order


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture()
def handle():
    return explainkit.wrap(Net().eval(), input_size=12, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")


def test_one_pass_gives_what_separate_passes_give(handle):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 12, 12)
    labels = torch.tensor([2, -1, 0, 3, -1])
    requests = merge_requests([PassRequest(("features.0",), gradients=True),
                               PassRequest(input_gradient=True), PassRequest(("features.2",)),
                               PassRequest(("features.2",), gradients=True, target="label"),
                               PassRequest(("features.0",), target="label")])
    assert list(requests) == ["predicted", "label"]
    # gradients only where asked for: the label pass starts its graph at features.2, not at features.0
    assert requests["predicted"] == PassRequest(("features.0", "features.2"), ("features.0",), True, "predicted")
    assert requests["label"] == PassRequest(("features.2", "features.0"), ("features.2",), target="label")
    output, passes = run_passes(handle, x, requests, labels, rows=2)
    model = handle.module
    np.testing.assert_allclose(output, model(x).detach(), rtol=1e-6)
    predicted = model(x).argmax(1)
    assert passes["predicted"].classes.tolist() == predicted.tolist()
    assert passes["label"].classes.tolist() == torch.where(labels >= 0, labels, predicted).tolist()
    # the input gradient, directly
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf).gather(1, predicted[:, None]).sum(), leaf)
    np.testing.assert_allclose(passes["predicted"].input_gradient, g, rtol=1e-5, atol=1e-6)
    # the layer gradients, from the CAM engine's own pass (which starts the graph at the layer)
    for target, classes in (("predicted", predicted), ("label", passes["label"].classes)):
        run = CamRun.create(model, x, layer=["features.0", "features.2"], targets=classes.tolist(), needs_layers=True)
        run.record(gradients=True)
        for name in ("features.0", "features.2"):
            np.testing.assert_allclose(passes[target].activations[name], run.layers[name].activation, rtol=1e-5,
                                       atol=1e-6)  # chunks of 2 rows vs a batch of 5: float32 rounding
        graded = "features.2" if target == "label" else "features.0"
        assert list(passes[target].gradients) == [graded]
        np.testing.assert_allclose(passes[target].gradients[graded], run.layers[graded].gradient, rtol=1e-5, atol=1e-6)
    assert passes["label"].input_gradient is None
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    # chunking never changes the result
    _, whole = run_passes(handle, x, requests, labels)
    np.testing.assert_allclose(whole["predicted"].input_gradient, passes["predicted"].input_gradient, rtol=1e-5,
                               atol=1e-9)


def test_rows_per_pass_bound_cpu_memory():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert rows_per_pass(32, (3, 224, 224), cpu, gradients=True) == 2
    assert rows_per_pass(32, (3, 224, 224), cpu, gradients=False) == 11
    assert rows_per_pass(32, (3, 64, 64), cpu, gradients=False) == 32
    assert rows_per_pass(32, (3, 224, 224), gpu, gradients=True) == 32


def test_faithfulness_of_many_maps_equals_one_map_at_a_time(handle):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 12, 12)
    maps = torch.rand(4, 3, 12, 12)
    run = CamRun.for_classes(handle, x, [0, 3, 1], batch_size=7)
    got = metrics.faithfulness(run, maps, steps=5, average_drop=[True, False, True, False])
    for m in range(4):
        one = metrics.deletion_insertion(run, maps[m], steps=5)
        np.testing.assert_allclose(got.deletion_curve[m], one["deletion_curve"], rtol=1e-5)
        np.testing.assert_allclose(got.insertion[m], one["insertion"], rtol=1e-5)
        drop = metrics.average_drop(run, maps[m])
        if m in (0, 2):
            np.testing.assert_allclose(got.drop[m], drop["drop"], rtol=1e-5, atol=1e-8)
            np.testing.assert_array_equal(got.increase[m], drop["increase"])
        else:
            assert np.isnan(got.drop[m]).all()
    # the curve ends: clean image, all-zero input, blurred image
    np.testing.assert_allclose(got.deletion_curve[:, :, 0], got.insertion_curve[:, :, -1])
    with torch.no_grad():
        zero = torch.softmax(handle.module(torch.zeros(1, 3, 12, 12)), 1)[0, [0, 3, 1]]
    np.testing.assert_allclose(got.deletion_curve[0, :, -1], zero, rtol=1e-5)


class Stages(Analyzer):
    """A toy planner: measures its images in stages of the probe order, up to ``upto`` images."""

    name = "stages"
    options: ClassVar[dict] = {}

    def __init__(self) -> None:
        pass

    def map(self, ctx, batch):
        req = ctx.round_request(self.name)
        lo, hi = (0, 4) if req is None else req.payload
        keep = [j for j, i in enumerate(batch.indices) if lo <= int(i) < hi]
        return RecordState.from_batch(batch.indices[keep], stage=[0 if req is None else ctx.round.number] * len(keep),
                                      logit=batch.logits[keep].amax(1).tolist())

    def next_round(self, ctx, state, number, allowance_s):
        n = len(state.records)
        return None if n >= 12 else RoundRequest(tuple(range(n, 2 * n)), (n, 2 * n))

    def finalize(self, ctx, state):
        return self.section(summary={"n": len(state.records)}, data={"stage": state.column("stage")})


def test_rounds_map_the_requested_images_on_every_backend_alike(demo_model_path, small_world):
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(20))
    report = explainkit.analyze(handle, probe, [Stages()], batch_size=3, progress=False)
    sec = report.section("stages")
    assert sec["summary"]["n"] == 16 and sec["data"]["stage"] == [0] * 4 + [1] * 4 + [2] * 8
    assert report.to_dict()["provenance"]["timings_s"]["stages:rounds"] >= 0


def test_time_budget_shrinks_the_metric_sample_and_says_so(demo_model_path, small_world, tmp_path):
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 5))
    spec = ("gradcam", {"methods": ["gradcam"], "min_metric_images": 4, "metric_images": 24, "precision": 0.0,
                        "road_images": 0, "sanity": False, "n_random": 2, "steps": 3, "n_resamples": 100})
    free = explainkit.analyze(handle, probe, [spec], progress=False).section("gradcam")["data"]["sampling"]
    assert free["metrics"]["stages"] == [4, 8, 16, 24] and free["metrics"]["n"] == 24
    assert free["metrics"]["stopped"] == "maximum sample size (24) reached"
    tight = explainkit.analyze(handle, probe, [spec], progress=False, time_budget=0.05)
    sampling = tight.section("gradcam")["data"]["sampling"]["metrics"]
    assert sampling["n"] < 24 and sampling["stopped"].startswith("time budget")
    assert tight.to_dict()["provenance"]["config"]["time_budget_s"] == 0.05


class TwoShards(Backend):
    """Maps every plan (main pass and rounds) as two interleaved shards, merged in reverse order."""

    name = "two_shards"

    def run(self, plan, ctx):
        samples = plan.sample_indices()
        parts = [map_shard(plan, ctx, samples[shard_indices(len(samples), r, 2)])[0] for r in (1, 0)]
        return Outcome(merge_states(plan, parts))


def test_sequential_metric_sample_is_the_same_on_shards(demo_model_path, small_world, monkeypatch):
    from explainkit import run as run_module

    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 5))
    spec = ("gradcam", {"methods": ["gradcam", "layercam"], "min_metric_images": 4, "metric_images": 16,
                        "precision": 0.05, "min_road_images": 2, "road_images": 4, "sanity": False, "n_random": 2,
                        "steps": 3, "n_resamples": 100, "n_examples": 2})
    serial = explainkit.analyze(handle, probe, [spec], batch_size=7, progress=False).section("gradcam")["data"]
    monkeypatch.setattr(run_module, "get_backend", lambda name, **kw: TwoShards())
    sharded = explainkit.analyze(handle, probe, [spec], batch_size=5, progress=False).section("gradcam")["data"]
    assert serial["sampling"] == sharded["sampling"]
    assert serial["sampling"]["metrics"]["stages"][:2] == [4, 8]
    assert serial["sample_metrics"]["ids"] == sharded["sample_metrics"]["ids"]
    order = [probe.ids[i] for i in priority_order(probe.ids, 0, "attribution-metrics")]
    assert sorted(serial["sample_metrics"]["ids"]) == sorted(order[:serial["sampling"]["metrics"]["n"]])
    np.testing.assert_allclose(serial["sample_metrics"]["metrics"]["gradcam"]["faithfulness"],
                               sharded["sample_metrics"]["metrics"]["gradcam"]["faithfulness"], rtol=1e-5)


def test_integrated_gradients_steps_follow_the_convergence_delta(handle):
    from captum.attr import IntegratedGradients

    from explainkit.cam.captum_bridge import integrated_gradients

    torch.manual_seed(4)
    x = torch.randn(4, 3, 12, 12) * 2
    run = CamRun.create(handle, x, layer=None, targets=None, needs_layers=False)
    run.record(gradients=False)
    got = integrated_gradients(run, n_steps=2, delta_tolerance=0.002, max_steps=64)
    steps = run.cache["integrated_gradients_steps"].tolist()
    assert set(steps) <= {2, 4, 8, 16, 32, 64} and len(set(steps)) > 1
    model, classes = handle.module, run.classes.tolist()
    ig = IntegratedGradients(model)
    for i, (s, c) in enumerate(zip(steps, classes)):
        attr, delta = ig.attribute(x[i:i + 1], target=c, baselines=0.0, n_steps=s, return_convergence_delta=True)
        np.testing.assert_allclose(got[i], attr.abs().sum(1)[0], rtol=1e-4, atol=1e-7)
        with torch.no_grad():
            gap = abs(float(model(x[i:i + 1])[0, c] - model(torch.zeros_like(x[i:i + 1]))[0, c]))
        assert abs(float(delta)) <= 0.002 * gap or s == 64
        if s > 2:  # half the steps were not enough
            _, before = ig.attribute(x[i:i + 1], target=c, baselines=0.0, n_steps=s // 2, return_convergence_delta=True)
            assert abs(float(before)) > 0.002 * gap


def test_analyzers_give_the_same_report_with_and_without_the_shared_pass(demo_model_path, small_world, monkeypatch):
    """The shared pass changes where the maps come from, not what they are: gradcam, captum (Saliency from the
    shared input gradient vs captum's own Saliency) and INVERT (pooled activations and gradient x activation
    from the shared pass vs their own passes) report the same as with their own passes (the old computation)."""
    from test_backends import RANKED, assert_same_json

    from explainkit.cam.analyzer import _AttributionAnalyzer
    from explainkit.invert.analyzer import Invert

    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 5))
    cheap = {"min_metric_images": 4, "metric_images": 4, "min_road_images": 2, "road_images": 2, "steps": 4,
             "n_random": 2, "sanity": False, "n_examples": 1, "n_resamples": 100}
    specs = [("gradcam", {**cheap, "methods": ["gradcam", "gradcampp", "layercam", "eigencam"]}),
             ("captum", {**cheap, "methods": ["saliency"]}), "invert"]

    def sections():
        report = explainkit.analyze(handle, probe, specs, batch_size=8, progress=False)
        return {s["analyzer"]: s for s in report.to_dict()["sections"]}

    shared = sections()
    for cls in (_AttributionAnalyzer, Invert):
        monkeypatch.setattr(cls, "pass_request", lambda self, ctx: None)
    separate = sections()
    for name in ("gradcam", "captum", "invert"):
        assert_same_json(shared[name], separate[name], name, RANKED.get(name, 1e-5))
