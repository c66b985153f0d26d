"""Adapters of the seed papers' prototype models: registry, maps = the model's own, the section, batching."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

import explainkit
from explainkit.analyzers.base import RunContext
from explainkit.data.probe import ProbeSet
from explainkit.datasets import prototype_models as recipes
from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.errors import ConfigError
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyCNN, TinyProtoPNet, cbc_net, prob_psenn
from explainkit.prototypes.registry import (
    AdapterKind,
    AdapterRequest,
    detect_adapter_kind,
    get_adapter_kind,
    list_adapter_kinds,
    register_adapter_kind,
)
from explainkit.prototypes.similarity import log_similarity, squared_l2_distances
from explainkit.report import schema_path

SCHEMA = json.loads(open(schema_path()).read())
#: kind → (factory name, tiny training recipe)
MODELS = {
    "case_based": ("case_based_net", lambda d: recipes.train_case_based(d, epochs=2)),
    "st_protopnet": ("st_protopnet",
                     lambda d: recipes.train_st_protopnet(d, pretrain_epochs=1, epochs=1, last_layer_epochs=1)),
    "tversky": ("tversky_net", lambda d: recipes.train_tversky(d, epochs=2)),
    "hopfield": ("hopfield_net", lambda d: recipes.train_hopfield(d, epochs=2)),
    "cbc": ("cbc_net", lambda d: recipes.train_cbc(d, epochs=2)),
    "prob_psenn": ("prob_psenn", lambda d: recipes.train_prob_psenn(d, pretrain_epochs=1, epochs=1)),
}
LIGHT = {"local_images": 1, "max_shown": 2, "n_resamples": 50, "sample_size": 8,
         "characteristics": ["hue", "shape", "contrast"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("protomodels")
    spec = dict(class_factor="shape", textures=("plain",), backgrounds=("bg_dark",))
    write_world(WorldSpec(n_images=48, seed=0, **spec), root / "train")
    write_world(WorldSpec(n_images=12, seed=1, **spec), root / "probe")
    return ProbeSet.from_folder(root / "train"), root / "probe"


@pytest.fixture(scope="module")
def trained(world):
    """kind → a model trained for a moment (seeded), in a handle."""
    train, _ = world
    cache = {}

    def get(kind):
        if kind not in cache:
            model = MODELS[kind][1](train).model
            cache[kind] = explainkit.wrap(model, class_names=train.class_names, **SYNTHETIC_PREPROCESSING)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def sections(trained, world):
    """kind → (report JSON, HTML) of the prototypes analyzer on the tiny-trained model."""
    _, probe = world
    cache = {}

    def get(kind, tmp_path_factory=None):
        if kind not in cache:
            out = world[1].parent / f"out_{kind}"
            params = dict(LIGHT, **({"model_options": {"samples": 4}} if kind == "prob_psenn" else {}))
            explainkit.analyze(trained(kind), probe, [("prototypes", params)], seed=0, batch_size=12, out=out)
            cache[kind] = (json.loads((out / "report.json").read_text()), (out / "report.html").read_text())
        return cache[kind]

    return get


def _build(kind, handle, probe, **options):
    ctx = RunContext(handle=handle, data=probe, device=torch.device("cpu"))
    return get_adapter_kind(kind).build(AdapterRequest(ctx, None, options, lambda i: True, lambda i: 0))


def test_the_registry_knows_and_detects_every_kind():
    segmentation = {"scaleprotoseg"}  # tests/test_scaleprotoseg.py
    assert set(MODELS) | segmentation | {"vectors", "channels", "exemplars", "kmeans"} == set(list_adapter_kinds())
    torch.manual_seed(0)
    for kind, (factory, _) in MODELS.items():
        assert detect_adapter_kind(getattr(explainkit.models, factory)()) == kind
    assert detect_adapter_kind(cbc_net(head="rbf")) == "cbc"
    assert detect_adapter_kind(TinyProtoPNet()) == "vectors" and detect_adapter_kind(TinyCNN()) == "channels"
    with pytest.raises(ConfigError, match="unknown prototype adapter"):
        get_adapter_kind("nope")
    with pytest.raises(ValueError):
        register_adapter_kind(AdapterKind("tversky", lambda r: None, "a second tversky"))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_adapter_maps_are_the_models_own_similarities(kind, world):
    torch.manual_seed(1)
    model = getattr(explainkit.models, MODELS[kind][0])().eval()
    handle = explainkit.wrap(model, **SYNTHETIC_PREPROCESSING)
    adapter = _build(kind, handle, ProbeSet.from_folder(world[1]))
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        maps = adapter.similarity_maps(handle, x)
        assert maps.shape[:2] == (3, adapter.num_prototypes)
        assert torch.allclose(adapter.similarity_maps(handle, x, [2, 0]), maps[:, [2, 0]])
        pooled = maps.flatten(2).amax(2)
        if kind == "case_based":
            assert maps.shape[2:] == (1, 1)
            assert torch.allclose(-model.distances(model.encode(x)), maps[:, :, 0, 0], rtol=1e-5, atol=1e-4)
        elif kind == "st_protopnet":
            own = model.similarity_maps(x)
            assert torch.allclose(maps, torch.cat([own["support"], own["trivial"]], 1), atol=1e-5)
            assert adapter.prototype_class(0) == adapter.prototype_class(adapter.per_set) == 0
        elif kind == "tversky":
            assert torch.allclose(maps.mean(dim=(2, 3)), model(x), atol=1e-5)
        elif kind == "hopfield":
            assert torch.allclose(model.last_layer(pooled), model(x), atol=1e-5)
        elif kind == "cbc":
            assert torch.allclose(model.reasoning(pooled), model.class_probabilities(x), atol=1e-6)
        else:
            z = model.latent(x)
            mean = model.prototype_layer.prototype_mean
            assert torch.allclose(maps, log_similarity(squared_l2_distances(z, mean)), atol=1e-5)
    box = adapter.patch_box(handle, x[:1], 0)
    assert 0 <= box[0] < box[1] <= 64 and 0 <= box[2] < box[3] <= 64


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_section_carries_the_models_own_explanation(kind, sections):
    doc, html = sections(kind)
    jsonschema.validate(doc, SCHEMA)
    section = next(s for s in doc["sections"] if s["analyzer"] == "prototypes")
    data, e = section["data"], section["data"]["model_explanation"]
    assert data["adapter"]["kind"] == kind and e["kind"] == kind and e["reference"]
    assert e["title"] in html
    n = data["adapter"]["num_prototypes"]
    if kind == "case_based":
        assert len(e["prototypes"]) == n and e["r1"]["value"] >= 0 and e["r2"]["value"] >= 0
        assert all(f"prototypes:{p['decoded']}" in doc["assets"] for p in e["prototypes"])
        assert {p["class"] for p in e["prototypes"]} <= {0, 1, 2}
    elif kind == "st_protopnet":
        support, trivial = (e["sets"][s]["prototypes"] for s in ("support", "trivial"))
        assert sorted(p["prototype"] for p in support) == list(range(n // 2))
        assert sorted(p["prototype"] for p in trivial) == list(range(n // 2, n))
        assert all(0 <= p["boundary_distance"] <= np.pi / 2 for p in support + trivial)
        assert 0 <= e["support_closer"]["p"] <= 1
    elif kind == "tversky":
        assert set(e["parameters"]) == {"theta", "alpha", "beta", "intersection", "difference"}
        assert all(f["measure"] > 0 for p in e["prototypes"] for f in p["features"])
        assert len(e["features"]) == 16
    elif kind == "hopfield":
        assert e["beta"] == pytest.approx(32**-0.5, rel=1e-6)
        assert sum(p["top_share"]["value"] for p in e["patterns"]) == pytest.approx(1.0)
        assert 1 <= e["mean_effective_patterns"]["value"] <= n
    elif kind == "cbc":
        for comp in e["components"]:
            for c in comp["classes"]:
                assert c["positive"] + c["negative"] + c["indefinite"] == pytest.approx(1.0, abs=1e-6)
                assert 0 <= c["mean_detection"]["value"] <= 1
    else:
        assert e["samples"] == 4 and len(e["prototypes"]) == n and e["n_images"] == 12
        assert all(0 <= p["verdict_agreement"]["value"] <= 1 for p in e["prototypes"])
        epistemic = [u["epistemic"] for u in e["uncertain_inputs"]]
        assert len(epistemic) == 5 and epistemic == sorted(epistemic, reverse=True) and min(epistemic) > -1e-9


@pytest.mark.parametrize("kind", ["case_based", "tversky", "prob_psenn"])
def test_model_explanations_do_not_depend_on_batching(kind, trained, world):
    params = dict(LIGHT, characteristics=["hue", "shape"], local_images=0, max_shown=0,
                  **({"model_options": {"samples": 3}} if kind == "prob_psenn" else {}))
    runs = [explainkit.analyze(trained(kind), world[1], [("prototypes", params)], seed=2, batch_size=b)
            for b in (5, 12)]
    a, b = (r.section("prototypes")["data"]["model_explanation"] for r in runs)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or _close(a, b)


def _close(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-7)
    return a == b


def test_a_state_dict_loaded_with_an_explainkit_arch_is_read_by_its_adapter(trained, world, tmp_path):
    path = tmp_path / "hopfield.pt"
    torch.save(trained("hopfield").module.state_dict(), path)
    handle = explainkit.load_model(path, arch="explainkit:hopfield_net(num_classes=3)")
    report = explainkit.analyze(handle, world[1], [("prototypes", dict(LIGHT, characteristics=["hue"]))], seed=0)
    assert report.section("prototypes")["data"]["model_explanation"]["kind"] == "hopfield"


def test_bad_adapter_requests_fail_with_one_line(world):
    probe = ProbeSet.from_folder(world[1])
    handle = explainkit.wrap(TinyCNN().eval(), **SYNTHETIC_PREPROCESSING)
    for kind, text in (("case_based", "case-based"), ("st_protopnet", "support and trivial"), ("tversky", "Tversky"),
                       ("hopfield", "Hopfield"), ("cbc", "RBF components"), ("prob_psenn", "Gaussian")):
        with pytest.raises(ConfigError, match=text):
            _build(kind, handle, probe)
    gaussian = explainkit.wrap(prob_psenn().eval(), **SYNTHETIC_PREPROCESSING)
    with pytest.raises(ConfigError, match=r"no model_options \['draws'\]; known: samples, seed"):
        _build("prob_psenn", gaussian, probe, model_options={"draws": 3})
    for value, text in ((1, ">= 2"), (2.5, "an integer"), ("8", "an integer"), (True, "an integer")):
        with pytest.raises(ConfigError, match=f"samples must be {text}"):
            _build("prob_psenn", gaussian, probe, model_options={"samples": value})
    with pytest.raises(ConfigError, match="'channels' has no model_options"):  # checked before the first pass
        explainkit.analyze(handle, world[1], [("prototypes", {"model_options": {"samples": 4}})])
    with pytest.raises(ConfigError, match="adapter"):
        explainkit.analyze(handle, world[1], [("prototypes", {"adapter": "tversky_net"})])
