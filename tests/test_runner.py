"""The serial runner: capability checks, label mapping, merge determinism, config from TOML."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import explainkit
from explainkit.analyzers.base import Analyzer, RecordState
from explainkit.cli.main import main
from explainkit.errors import CapabilityError, ConfigError
from explainkit.models import TinyCNN


class _NeedsHooks(Analyzer):
    name = "needs_hooks"
    title = "x"
    summary = "x"
    requires = frozenset({"module_hooks", "gradients"})


def test_capability_error_names_runnable_analyzers(demo_model_path, small_world, tmp_path):
    torch.jit.save(torch.jit.script(explainkit.load_model(demo_model_path).module), tmp_path / "ts.pt")
    handle = explainkit.load_model(tmp_path / "ts.pt", trust=True, input_size=64, mean="0.5,0.5,0.5",
                                   std="0.5,0.5,0.5", class_names=["circle", "square", "triangle"])
    with pytest.raises(CapabilityError, match=r"needs module_hooks.*torchscript model.*can run here: .*performance"):
        explainkit.analyze(handle, small_world, [_NeedsHooks()])
    # performance only needs labels, so it runs on TorchScript
    rep = explainkit.analyze(handle, small_world, ["performance"])
    assert rep.section("performance")["data"]["accuracy"]["n"] == 120


def test_labels_follow_model_class_names(small_world, tmp_path, demo_model_path):
    base = explainkit.load_model(demo_model_path)
    order = ["triangle", "circle", "square"]
    model = TinyCNN(3)
    # permute the classifier rows so that output k is class order[k]
    sd = base.module.state_dict()
    perm = [("circle", "square", "triangle").index(c) for c in order]
    sd["classifier.weight"], sd["classifier.bias"] = sd["classifier.weight"][perm], sd["classifier.bias"][perm]
    model.load_state_dict(sd)
    permuted = explainkit.wrap(model.eval(), input_size=64, mean="0.5,0.5,0.5", std="0.5,0.5,0.5", class_names=order)
    a = explainkit.analyze(base, small_world, ["performance"]).section("performance")["data"]["accuracy"]
    b = explainkit.analyze(permuted, small_world, ["performance"])
    assert b.section("performance")["data"]["accuracy"] == a
    assert b["provenance"]["label_mapping"] == "by class name"


def test_merge_is_partition_independent():
    rng = np.random.default_rng(0)
    idx = rng.permutation(40)
    parts = [RecordState.from_batch(idx[i:i + 7], v=rng.normal(size=len(idx[i:i + 7]))) for i in range(0, 40, 7)]
    a = parts[0]
    for p in parts[1:]:
        a = a.merge(p)
    b = parts[-1]
    for p in reversed(parts[:-1]):
        b = p.merge(b)
    assert np.array_equal(a.stacked("v"), b.stacked("v")) and a.indices().tolist() == list(range(40))
    with pytest.raises(ValueError, match="overlap"):
        parts[0].merge(parts[0])


def test_preprocessing_keys_from_toml(small_world, demo_model_path, tmp_path, capsys):
    torch.save(explainkit.load_model(demo_model_path).module.state_dict(), tmp_path / "sd.pt")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{small_world}"\narch = "explainkit.models:tiny_cnn(num_classes=3)"\n'
                   'input_size = 48\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.5, 0.5]\nresize = "stretch"\n'
                   'class_names = "NAMES"\n'.replace("NAMES", str(tmp_path / "names.txt")))
    (tmp_path / "names.txt").write_text("circle\nsquare\ntriangle\n")
    assert main(["analyze", str(tmp_path / "sd.pt"), "--config", str(cfg), "--out", str(tmp_path / "o"),
                 "--format", "json"]) == 0
    prep = json.loads(capsys.readouterr().out)["provenance"]["model"]["preprocessing"]
    assert prep["input_size"] == [48, 48] and prep["std"] == [0.25, 0.5, 0.5] and prep["resize"] == "stretch"
    assert prep["sources"]["input_size"] == "explicit"


def test_default_analyzers_and_duplicates(demo_model_path, small_world):
    rep = explainkit.analyze(explainkit.load_model(demo_model_path), small_world)
    names = [s["analyzer"] for s in rep.sections]
    assert "performance" in names
    with pytest.raises(ConfigError, match="listed twice"):
        explainkit.analyze(explainkit.load_model(demo_model_path), small_world, ["performance", "performance"])


def test_prefetch_order_errors_and_early_stop():
    from explainkit._prefetch import prefetch

    assert list(prefetch(range(50), depth=3)) == list(range(50))
    assert list(prefetch(range(5), depth=0)) == list(range(5))

    def broken():
        yield 1
        raise ValueError("bad image")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad image"):
        next(it)
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for i in prefetch(counting(), depth=2):
        if i == 3:
            break
    assert len(produced) < 20
