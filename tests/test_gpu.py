"""The CUDA path (runs where a GPU is present): same results as the CPU, no host syncs in the
perturbation loop, autocast with float32 statistics, channels-last models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import explainkit
from explainkit.analyzers.base import PassRequest
from explainkit.backends.passes import run_passes
from explainkit.cam import metrics
from explainkit.cam.engine import CamRun

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SPEC = {"methods": ["gradcam", "layercam"], "min_metric_images": 4, "metric_images": 8, "road_images": 2,
        "min_road_images": 2, "sanity_images": 2, "min_sanity_images": 2, "steps": 4, "n_random": 2,
        "n_examples": 2, "n_resamples": 200}


@pytest.fixture(scope="module")
def probe(small_world):
    return explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 4))


def test_cuda_run_matches_the_cpu_run(probe, demo_model_path):
    specs = [("gradcam", SPEC), ("captum", {**SPEC, "methods": ["saliency"]}), "invert", "performance"]
    cpu = explainkit.analyze(explainkit.load_model(demo_model_path), probe, specs, progress=False)
    gpu = explainkit.analyze(explainkit.load_model(demo_model_path), probe, specs, device="cuda", progress=False)
    for name in ("gradcam", "captum"):
        a, b = cpu.section(name)["data"], gpu.section(name)["data"]
        assert a["sampling"]["metrics"]["n"] == b["sampling"]["metrics"]["n"]
        assert a["sample_metrics"]["ids"] == b["sample_metrics"]["ids"]
        assert a["per_image"]["class"] == b["per_image"]["class"]
        for m in a["sample_metrics"]["metrics"]:
            np.testing.assert_allclose(a["sample_metrics"]["metrics"][m]["faithfulness"],
                                       b["sample_metrics"]["metrics"][m]["faithfulness"], atol=2e-3)
    assert cpu.section("performance")["summary"] == gpu.section("performance")["summary"]


def test_perturbation_stream_does_not_sync_with_the_host(demo_model_path, probe):
    handle = explainkit.load_model(demo_model_path).to("cuda")
    x = handle.preprocess([probe.load_image(i) for i in range(6)]).cuda()
    maps = torch.rand(3, 6, *x.shape[-2:], device="cuda")
    run = CamRun.for_classes(handle, x, [0, 1, 2, 0, 1, 2], batch_size=8)
    metrics.faithfulness(run, maps, steps=4)  # warm-up (cuDNN autotuning may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics.faithfulness(run, maps, steps=4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]  # the one copy of the results at the end


def test_autocast_passes_keep_float32_statistics(demo_model_path, probe):
    handle = explainkit.load_model(demo_model_path).to("cuda")
    handle.module.eval()
    x = handle.preprocess([probe.load_image(i) for i in range(8)]).cuda().contiguous(memory_format=torch.channels_last)
    request = {"predicted": PassRequest(("features",), gradients=True, input_gradient=True)}
    full_out, full = run_passes(handle, x, request)
    half_out, half = run_passes(handle, x, request, amp="bfloat16")
    p = half["predicted"]
    assert p.activations["features"].dtype == p.gradients["features"].dtype == p.input_gradient.dtype == torch.float32
    assert (p.classes == full["predicted"].classes).float().mean() >= 0.75
    torch.testing.assert_close(half_out.float(), full_out, atol=0.1, rtol=0.05)
    report = explainkit.analyze(handle, probe, [("gradcam", SPEC)], device="cuda", autocast="bfloat16",
                                progress=False)
    data = report.section("gradcam")["data"]
    assert all(np.isfinite(data["per_image"]["probability"]))
    assert report.to_dict()["provenance"]["config"]["autocast"] == "bfloat16"
    conv = next(m for m in handle.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
