"""The worked example of ARCHITECTURE.md, docs/examples/toy_analyzer.py: registered here, run on the demo model."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

import explainkit
from explainkit.analyzers import registry as reg
from explainkit.analyzers.base import RunContext
from explainkit.backends import RunPlan, map_shard, merge_states
from explainkit.cli.docs import options_table
from explainkit.config import parse_analyzer_spec
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError
from explainkit.hooks import hook_count
from explainkit.registry import Registry
from explainkit.report import schema_path
from explainkit.run import build_analyzers, resolve_device
from explainkit.stats import wilson_interval

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "toy_analyzer.py"


@pytest.fixture(scope="module")
def toy():
    spec = importlib.util.spec_from_file_location("toy_analyzer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def registered(toy, monkeypatch):
    """The example registered in a fresh analyzer registry (the process-wide one stays as it was)."""
    fresh = Registry("analyzer", builtins=reg.BUILTIN_ANALYZERS, check=reg._check, on_register=reg._added)
    monkeypatch.setattr(reg, "ANALYZERS", fresh)
    explainkit.register_analyzer(toy.ChannelActivity)
    return toy.ChannelActivity


@pytest.fixture(scope="module")
def probe(small_world):
    return ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 5))


def _direct_pooled(handle, probe, mode):
    """(N, 64) pooled activations of the default layer (``features``), computed without hooks: the layer called
    directly."""
    x = handle.preprocess([probe.load_image(i) for i in range(len(probe))])
    with torch.no_grad():
        act = handle.module.eval().features(x)
    return (act.mean(dim=(2, 3)) if mode == "mean" else act.amax(dim=(2, 3))).numpy()


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_the_example_runs_and_equals_a_direct_computation(registered, probe, demo_handle, pooling):
    pooled = _direct_pooled(demo_handle, probe, pooling)
    s = np.sort(pooled.ravel())
    mid = np.arange(int(0.4 * s.size), int(0.6 * s.size))
    i = mid[np.argmax(s[mid + 1] - s[mid])]
    threshold = float(s[i] + s[i + 1]) / 2  # about half the (image, channel) pairs active, far from any value
    report = explainkit.analyze(demo_handle, probe, [("channel_activity", {"pooling": pooling,
                                                                           "threshold": threshold, "top_k": 3})],
                                batch_size=7, progress=False)
    schema = json.loads(Path(schema_path()).read_text())
    jsonschema.validate(report.to_dict(), schema)
    section = report.to_dict()["sections"][0]
    assert section["analyzer"] == "channel_activity" and section["data"]["layer"] == "features"
    active = (pooled > threshold).sum(axis=0)
    n = len(probe)
    got = section["data"]["active_fraction"]
    np.testing.assert_allclose([m["value"] for m in got], active / n, rtol=0, atol=1e-12)
    np.testing.assert_allclose([(m["ci_low"], m["ci_high"]) for m in got],
                               [wilson_interval(int(a), n) for a in active], rtol=1e-12)
    assert section["data"]["dead_channels"] == [c for c in range(active.size) if active[c] == 0]
    assert section["data"]["top_channels"] == np.argsort(-active, kind="stable")[:3].tolist()
    assert hook_count(demo_handle.module) == 0


def test_the_example_merges_any_partition_to_the_serial_result(registered, probe, demo_handle):
    analyzers = build_analyzers([("channel_activity", {"threshold": 0.2})])
    ctx = RunContext(handle=demo_handle, data=probe, device=resolve_device("cpu"), seed=0, batch_size=4)
    for a in analyzers:
        a.check_params()
        a.validate(ctx)
        a.prepare(ctx)
    plan = RunPlan(demo_handle, probe, analyzers, None, progress=False)
    serial, _ = map_shard(plan, ctx, range(len(probe)))
    order = np.random.default_rng(0).permutation(len(probe))
    parts = [map_shard(plan, ctx, sorted(order[a:b]))[0] for a, b in [(0, 5), (5, 6), (6, len(probe))]]
    merged = merge_states(plan, parts[::-1])
    a = analyzers[0]
    assert a.finalize(ctx, merged[a.name]).to_dict() == a.finalize(ctx, serial[a.name]).to_dict()


def test_the_example_declares_and_checks_its_parameters(registered):
    assert parse_analyzer_spec("channel_activity:pooling=max,threshold=0.5,top_k=2") == (
        "channel_activity", {"pooling": "max", "threshold": 0.5, "top_k": 2})
    with pytest.raises(ConfigError, match="channel_activity: top_k must be an integer"):
        parse_analyzer_spec("channel_activity:top_k=many")
    with pytest.raises(ConfigError, match=re.escape("pooling must be one of 'mean', 'max', not 'median'; top_k must")):
        registered(top_k=0, pooling="median").check_params()
    table = options_table(registered.options)
    assert "| `threshold` | a finite number | `0.0` | pooled activation above which a channel counts as active |" \
        in table
