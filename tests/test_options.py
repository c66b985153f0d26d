"""Declared options: one declaration checks Python values, TOML tables and command-line text, before any model pass."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

import explainkit
from explainkit.analyzers import Analyzer, get_analyzer_class, list_analyzers
from explainkit.backends import BACKENDS, get_backend
from explainkit.cam import get_method, list_methods
from explainkit.cli.main import main
from explainkit.config import parse_analyzer_spec
from explainkit.errors import ConfigError
from explainkit.gate import get_check_kind, list_check_kinds
from explainkit.models import TinyCNN
from explainkit.options import REQUIRED, UNSET, Option, bind_options, check_values


def test_values_are_checked_with_one_message_per_bad_value():
    opts = {"n": Option("int", 3, low=1), "f": Option("float", 0.5, low=0, high=1, high_open=True),
            "c": Option("choice", "a", choices=("a", "b")), "xs": Option("int", (), many=True, low=0),
            "s": Option("str", None), "m": Option("mapping", None, choices=("k",))}
    check_values("t", opts, {"n": 1, "f": 0.0, "c": "b", "xs": [0, 2], "s": None, "m": {"k": {}}})
    with pytest.raises(ConfigError) as err:
        check_values("t", opts, {"n": 0, "f": 1.0, "c": "z", "xs": [1, -1], "s": "", "m": {"q": 1}})
    parts = str(err.value).removeprefix("t: ").split("; ")
    assert parts == ["n must be >= 1, not 0", "f must be >= 0 and < 1, not 1.0",
                     "c must be one of 'a', 'b', not 'z'", "xs[1] must be >= 0, not -1",
                     "s must be a non-empty string, not ''", "m has unknown key(s) 'q' (allowed: k)"]
    with pytest.raises(ConfigError, match="n must be an integer, not True"):
        check_values("t", opts, {"n": True})
    with pytest.raises(ConfigError, match="xs must be a list, each value an integer >= 0, not 3"):
        check_values("t", opts, {"xs": 3})


def test_command_line_text_follows_the_declared_type():
    many = Option("choice", None, choices=("gradcam", "layercam"), many=True)
    assert many.from_text("gradcam", "methods") == ["gradcam"]  # a one-element list stays a list
    assert many.from_text("gradcam|layercam", "methods") == ["gradcam", "layercam"]
    assert many.from_text("none", "methods") is None
    one_or_many = Option("str", None, many=True, or_one=True)
    assert one_or_many.from_text("features.3", "layer") == "features.3"
    assert one_or_many.from_text("a|b", "layer") == ["a", "b"]
    assert Option("float", 1.0).from_text("2", "x") == 2.0 and Option("int", 1).from_text("2", "x") == 2
    assert Option("bool", True).from_text("False", "x") is False
    assert Option("str", "a").from_text("12", "x") == "12"
    assert Option("choice", 1, choices=(1, 2)).from_text("2", "x") == 2
    with pytest.raises(ConfigError, match="x must be an integer, not 'two'"):
        Option("int", 1).from_text("two", "x")
    with pytest.raises(ConfigError, match="cannot be given on the command line"):
        Option("mapping", None).from_text("a", "params")


def test_parse_analyzer_spec_uses_the_declarations():
    name, params = parse_analyzer_spec("gradcam:methods=gradcam,layer=features.3,sanity=false,steps=4")
    assert (name, params) == ("gradcam", {"methods": ["gradcam"], "layer": "features.3", "sanity": False,
                                          "steps": 4})
    assert parse_analyzer_spec("performance:gap_warning=1")[1] == {"gap_warning": 1.0}
    with pytest.raises(ConfigError, match="gradcam: steps must be an integer, not 'x'"):
        parse_analyzer_spec("gradcam:steps=x")
    with pytest.raises(ConfigError, match="unknown analyzer 'nope'"):
        parse_analyzer_spec("nope:a=1")


def test_bind_options_takes_defaults_from_the_signature_and_wants_every_parameter():
    def fn(layer, run, *, eps: float = 1e-6, variant: str = "paper"):
        return None

    bound = bind_options({"eps": Option("float", low=0), "variant": Option("choice", choices=("paper",))}, fn, "m",
                         keyword_only=True)
    assert bound["eps"].default == 1e-6 and bound["variant"].default == "paper"
    with pytest.raises(TypeError, match="eps not declared"):
        bind_options({"variant": Option("choice", choices=("paper",))}, fn, "m", keyword_only=True)
    with pytest.raises(TypeError, match="declares default 1, the signature 1e-06"):
        bind_options({"eps": Option("float", 1), "variant": Option("str")}, fn, "m", keyword_only=True)
    with pytest.raises(TypeError, match="not declared in its options"):

        class Undeclared(Analyzer):
            name = "undeclared"

            def __init__(self, k: int = 1) -> None:
                self.k = k
    with pytest.raises(TypeError, match="split into validate"):

        class Old(Analyzer):
            name = "old"

            def check(self, ctx) -> None:
                pass


@pytest.mark.parametrize("name", list_analyzers())
def test_every_analyzer_declares_its_parameters(name):
    """Conformance over the registry: declared, documented, and the defaults pass their own checks."""
    cls = get_analyzer_class(name)
    assert cls.options and all(o.help and o.default not in (UNSET, REQUIRED) for o in cls.options.values())
    cls().check_params()


def test_every_cam_method_kind_and_backend_declares_its_options():
    for m in list_methods():
        check_values(m, get_method(m).options, get_method(m).defaults)
    for kind in list_check_kinds():
        assert all(o.default is not UNSET for o in get_check_kind(kind).options.values())
    for name, cls in BACKENDS.items():
        check_values(name, cls.options, {k: o.default for k, o in cls.options.items()})
    with pytest.raises(ConfigError, match="backend 'ray': workers must be >= 1, not 0"):
        get_backend("ray", workers=0)


class _Counting(TinyCNN):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize(("params", "message"), [
    ({"steps": 0}, "steps must be >= 1"),
    ({"n_random": 1}, "n_random must be 0"),
    ({"method_params": {"scorecam": {"variant": "x"}}, "methods": ["scorecam"]}, "variant must be one of"),
])
def test_bad_values_fail_before_the_first_model_pass(params, message, small_world):
    """A bad value of one analyzer stops the run before any analyzer fits (k-means prototypes would run the model)."""
    model = _Counting(3).eval()
    handle = explainkit.wrap(model, input_size=64, mean="0.5,0.5,0.5", std="0.5,0.5,0.5",
                             class_names=["circle", "square", "triangle"])
    _Counting.calls = 0
    with pytest.raises(ConfigError, match=message):
        explainkit.analyze(handle, small_world, [("prototypes", {"adapter": "kmeans"}), ("gradcam", params)],
                           progress=False)
    assert _Counting.calls == 0


def test_cli_lists_declared_parameters(capsys):
    assert main(["analyzers", "--params", "gradcam", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["parameters"]}
    assert rows["steps"]["default"] == 8 and rows["steps"]["type"] == "an integer >= 1" and rows["steps"]["help"]
    assert set(rows) == set(get_analyzer_class("gradcam").options)
    assert main(["analyzers", "--params", "performance"]) == 0
    assert "n_resamples" in capsys.readouterr().out
    assert main(["analyzers", "--params", "nope"]) == 2


class _Declared(Analyzer):
    name = "declared"
    options: ClassVar[dict[str, Option]] = {"k": Option("int", low=2, help="k")}

    def __init__(self, k: int = 3) -> None:
        self.k = k


def test_get_params_is_the_declared_parameters():
    assert _Declared(k=5).get_params() == {"k": 5} and list(_Declared.options) == ["k"]
    with pytest.raises(ConfigError, match="declared: k must be >= 2, not 1"):
        _Declared(k=1).check_params()
