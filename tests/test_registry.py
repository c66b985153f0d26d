"""Registry behaviour, plus conformance tests generated over every registered analyzer."""

from __future__ import annotations

import importlib.metadata
import inspect

import numpy as np
import pytest
import torch

import explainkit
from explainkit.analyzers import Analyzer, get_analyzer, get_analyzer_class, list_analyzers, register_analyzer
from explainkit.analyzers import registry as reg
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError, ExplainkitError
from explainkit.hooks import hook_count
from explainkit.models import TinyCNN
from explainkit.registry import Registry


def test_duplicate_names_raise():
    with pytest.raises(ValueError, match="already registered"):

        @register_analyzer
        class Other(Analyzer):
            name = "performance"


def test_bad_names_and_unknown():
    with pytest.raises(ValueError, match="snake case"):
        register_analyzer(type("X", (Analyzer,), {"name": "Bad Name"}))
    with pytest.raises(ConfigError, match="unknown analyzer 'nope'"):
        get_analyzer("nope")
    with pytest.raises(ConfigError, match="bad parameter for analyzer 'performance'"):
        get_analyzer("performance", no_such_param=1)
    assert list_analyzers("perf*") == ["performance"]


def test_entry_point_plugins_load_after_the_builtins(monkeypatch, caplog):
    class Plugin(Analyzer):
        name = "plugin_x"

    class EP:
        def __init__(self, name, target):
            self.name, self.target = name, target

        def load(self):
            if isinstance(self.target, Exception):
                raise self.target
            return self.target

    fresh = Registry("analyzer", builtins=reg.BUILTIN_ANALYZERS, group="explainkit.analyzers", check=reg._check,
                     on_register=reg._added)
    monkeypatch.setattr(reg, "ANALYZERS", fresh)
    monkeypatch.delenv("EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    eps = [EP("plugin_x", Plugin), EP("broken", ImportError("no such module")), EP("performance", Plugin)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if "analyzers" in group else [])
    assert list_analyzers() == sorted([*reg.BUILTIN_ANALYZERS, "plugin_x"])
    assert get_analyzer_class("plugin_x") is Plugin
    assert get_analyzer_class("performance").__module__ == "explainkit.analyzers.performance"  # built-in kept
    assert "could not load analyzer plugin broken" in caplog.text


def test_builtins_load_without_entry_points(monkeypatch):
    monkeypatch.setenv("EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    fresh = Registry("analyzer", builtins=reg.BUILTIN_ANALYZERS, group="explainkit.analyzers", check=reg._check)
    assert fresh.names() == list(reg.BUILTIN_ANALYZERS)
    with pytest.raises(ValueError, match="named 'gradcam'"):
        fresh.register("other", get_analyzer_class("gradcam"))


def test_registry_aliases_and_errors():
    r = Registry("thing", normalize=str.lower)
    r.register("alpha", 1, aliases=("a",))
    assert r.get("A") == 1 and r.get("alpha") == 1 and r.names() == ["alpha"] and r.aliases == {"a": "alpha"}
    with pytest.raises(ValueError, match="already registered"):
        r.register("alpha", 2)
    with pytest.raises(ValueError, match="alias"):
        r.register("beta", 3, aliases=("a",))
    with pytest.raises(ConfigError, match="unknown thing 'b'; available: alpha"):
        r.get("b")


@pytest.mark.parametrize("name", list_analyzers())
def test_constructor_stores_parameters_only(name):
    cls = get_analyzer_class(name)
    assert cls.summary and cls.title and cls.name == name
    sig = inspect.signature(cls.__init__)
    assert all(p.default is not inspect.Parameter.empty for k, p in sig.parameters.items() if k != "self")
    a = cls()
    assert set(a.get_params()) == {k for k in sig.parameters if k != "self"}
    assert cls(**{k: getattr(a, k) for k in a.get_params()}).get_params() == a.get_params()


@pytest.fixture(scope="module")
def tiny_probe(small_world) -> ProbeSet:
    probe = ProbeSet.from_folder(small_world)
    return probe.subset(np.arange(0, 120, 10))


class _Flaky(TinyCNN):
    """Raises on its k-th forward call (to fail inside analyzers at different points)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(3)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return super().forward(x)


def _handle(model):
    return explainkit.wrap(model, input_size=64, mean="0.5,0.5,0.5", std="0.5,0.5,0.5",
                           class_names=["circle", "square", "triangle"])


@pytest.mark.parametrize("name", [n for n in list_analyzers() if "classification" in get_analyzer_class(n).tasks])
def test_no_hooks_left_after_success_and_failure(name, tiny_probe, demo_model_path, light_specs):
    model = _Flaky(fail_at=0)
    model.load_state_dict(explainkit.load_model(demo_model_path).module.state_dict())
    model.train()
    explainkit.analyze(_handle(model), tiny_probe, light_specs([name]), batch_size=6, progress=False)
    assert hook_count(model) == 0 and model.training
    assert all(p.grad is None for p in model.parameters())
    calls = model.calls
    for fail_at in sorted({k for k in (2, 3, calls // 2, calls - 1, calls) if 2 <= k <= calls}):
        model.fail_at, model.calls = fail_at, 0
        with pytest.raises(ExplainkitError):
            explainkit.analyze(_handle(model), tiny_probe, light_specs([name]), batch_size=6, progress=False)
        assert hook_count(model) == 0 and model.training, f"failure at call {fail_at}"
        assert torch.is_grad_enabled()
