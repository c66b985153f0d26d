"""Information-theoretic factor analysis: the GCMI estimators against direct formulas and closed forms,
the permutation test's family-wise error rate, factor reading, and the analyzer on planted worlds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special

from explainkit.errors import ConfigError, DataError
from explainkit.information.api import factor_information
from explainkit.information.factors import Factor, probe_factors, usable_factors
from explainkit.information.gcmi import copnorm, factor_entropy, groupings, layer_mi, resampling_plan, unit_mi


def _model_mi_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Ince et al.'s Gaussian model MI with bias correction, written out with per-level Cholesky factors."""
    x = x - x.mean(0)
    n, d = x.shape

    def corrected_logdet_half(v):
        m = v.shape[0]
        cov = (v - v.mean(0)).T @ (v - v.mean(0)) / (m - 1)
        dims = np.arange(1, d + 1)
        bias = d * (math.log(2) - math.log(m - 1)) / 2 + np.sum(special.psi((m - dims) / 2) / 2)
        return np.log(np.diag(np.linalg.cholesky(cov))).sum() - bias

    levels, counts = np.unique(y, return_counts=True)
    cond = sum(c / n * corrected_logdet_half(x[y == k]) for k, c in zip(levels, counts))
    return (corrected_logdet_half(x) - cond) / math.log(2)


def test_unit_mi_equals_the_direct_model_formula():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 4)) + y[:, None] * np.array([0.0, 0.3, 1.0, 2.0])
    z = copnorm(x)
    got = unit_mi(z, groupings(y))[0]
    np.testing.assert_allclose(got, [_model_mi_direct(z[:, [j]], y) for j in range(4)], rtol=1e-10, atol=1e-12)
    assert got[0] < 0.05 < got[1] < got[2] < got[3] < factor_entropy(y)


def test_unit_mi_bias_correction_centres_the_null():
    rng = np.random.default_rng(1)
    corrected, raw = [], []
    for _ in range(200):
        y = rng.integers(0, 4, 60)
        z = copnorm(rng.normal(size=(60, 1)))
        corrected.append(unit_mi(z, groupings(y))[0, 0])
        levels = [z[y == k, 0] for k in range(4)]
        raw.append(0.5 * np.log2(z.var(ddof=1) / np.exp(sum(len(v) / 60 * np.log(v.var(ddof=1)) for v in levels))))
    assert abs(np.mean(corrected)) < 0.015 < np.mean(raw)  # uncorrected ~0.03 bits of pure bias


def test_layer_mi_matches_numerical_integration_and_saturates_at_the_entropy():
    rng = np.random.default_rng(2)
    n = 100_000
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 1)) + 2.0 * y[:, None]
    grid = np.linspace(-8, 10, 200_001)
    mix = 0.5 * np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi) + 0.5 * np.exp(-(grid - 2) ** 2 / 2) / np.sqrt(2 * np.pi)
    true = (-np.trapezoid(mix * np.log(mix), grid) - 0.5 * np.log(2 * np.pi * np.e)) / np.log(2)
    assert layer_mi(x, groupings(y))[0] == pytest.approx(true, abs=0.005)
    y3 = rng.integers(0, 3, 3000)
    separated = rng.normal(size=(3000, 4)) * 0.05 + np.eye(3, 4)[y3] * 5
    mi = layer_mi(copnorm(separated), groupings(y3))[0]
    assert 0.9 * factor_entropy(y3) < mi < 1.01 * factor_entropy(y3)


def _noise_factors(rng, n):
    return [Factor("a", ("0", "1", "2"), rng.integers(0, 3, n), "test"),
            Factor("b", ("0", "1"), rng.integers(0, 2, n), "test")]


def test_permutation_test_controls_the_family_wise_error_and_finds_planted_information():
    rng = np.random.default_rng(3)
    n, reps, false_unit, false_layer = 80, 60, 0, 0
    for r in range(reps):
        acts = {"l1": rng.normal(size=(n, 6)), "l2": rng.normal(size=(n, 4))}
        res = factor_information(acts, _noise_factors(rng, n), components=2, permutations=99, resamples=0,
                                 pairs=False, seed=r)
        false_unit += any((lay.unit_p < 0.05).any() for lay in res.layers)
        false_layer += any((lay.layer_p < 0.05).any() for lay in res.layers)
    # family-wise error <= 0.05 (binomial 99th percentile at 60 runs: 8)
    assert false_unit <= 8 and false_layer <= 8
    f = _noise_factors(rng, 200)
    acts = {"l1": np.c_[rng.normal(size=(200, 5)), f[0].codes + rng.normal(0, 0.5, 200)]}
    res = factor_information(acts, f, components=3, permutations=199, resamples=100, seed=0)
    lay = res.layers[0]
    assert lay.unit_p[5, 0] < 0.05 and lay.layer_p[0] < 0.05 and (lay.unit_p[:5, 0] >= 0.05).all()
    assert lay.unit_ci[5, 0, 0] < lay.unit_mi[5, 0] < lay.unit_ci[5, 0, 1]
    assert lay.layer_mi[1] < 0.1 < 0.2 < lay.layer_mi[0]
    assert [p["factors"] for p in lay.pairs] == [["a", "b"]]


def test_resampling_plan_and_bad_inputs():
    perms, weights = resampling_plan(10, 3, 2, np.random.default_rng(0))
    assert perms.shape == (3, 10) and all(sorted(p) == list(range(10)) for p in perms)
    assert weights.shape == (2, 10) and (weights.sum(1) == 10).all()
    f = [Factor("a", ("0", "1"), np.array([0, 1] * 5), "test")]
    with pytest.raises(DataError, match="must be"):
        factor_information({"l": np.zeros((9, 2))}, f)
    with pytest.raises(DataError, match="NaN"):
        factor_information({"l": np.full((10, 2), np.nan)}, f)
    with pytest.raises(ConfigError):
        factor_information({"l": np.zeros((10, 2))}, f, permutations=0)


def test_factors_from_world_json_and_from_the_concept_table(small_world, tmp_path):
    import explainkit

    probe = explainkit.ProbeSet.from_folder(small_world)
    factors = {f.name: f for f in probe_factors(probe)}
    assert list(factors) == ["shape", "colour", "texture", "background", "stamp"]
    world = json.loads((small_world / "world.json").read_text())["samples"]
    by_id = {s["id"]: s for s in world}
    shape = factors["shape"]
    assert [shape.levels[c] for c in shape.codes] == [by_id[i]["shape"] for i in probe.ids]
    assert probe.class_names == shape.levels and (shape.codes == probe.labels).all()
    # without world.json: one-hot columns grouped by the descriptions' "factor", the artifact as a binary column
    probe.root = tmp_path
    table = {f.name: f for f in probe_factors(probe)}
    assert list(table) == ["shape", "colour", "texture", "background", "stamp"]
    assert (table["shape"].codes == shape.codes).all() and table["stamp"].levels == ("absent", "present")
    with pytest.raises(ConfigError, match="unknown factor"):
        probe_factors(probe, ["nope"])
    (tmp_path / "world.json").write_text('{"samples": [{"id": "x.png", "shape": "circle"}]}')
    with pytest.raises(DataError, match="no record"):
        probe_factors(probe)


def test_continuous_world_values_are_left_out_with_a_reason(small_world, demo_model_path, tmp_path):
    import explainkit

    probe = explainkit.ProbeSet.from_folder(small_world).subset(range(12))
    probe.root = tmp_path
    samples = [{"id": i, "shape": by, "x": 0.5 + k} for k, (i, by) in enumerate(zip(probe.ids, "ab" * 6))]
    (tmp_path / "world.json").write_text(json.dumps({"samples": samples}))
    usable, skipped = usable_factors(probe_factors(probe))
    assert [f.name for f in usable] == ["shape"] and list(skipped) == ["x"]
    assert "12 levels, the rarest with 1 image" in skipped["x"]
    with pytest.raises(ConfigError, match="factor 'x' cannot be estimated"):
        explainkit.analyze(explainkit.load_model(demo_model_path), probe, [("information", {"factors": ["x"]})],
                           progress=False)


@pytest.fixture(scope="module")
def info_run(small_world, demo_model_path, tmp_path_factory):
    """Cheap planted check: the demo model decides by shape (and learned the stamp)."""
    import explainkit

    out = tmp_path_factory.mktemp("information-report")
    report = explainkit.analyze(explainkit.load_model(demo_model_path), small_world,
                                [("information", {"layer": ["features.1", "features.3"], "permutations": 199,
                                                  "resamples": 100})], out=out)
    return report, out


def test_demo_model_carries_shape_and_stamp_information(info_run):
    report = info_run[0]
    data = report.section("information")["data"]
    assert data["heatmap"]["rows"] == ["features.1", "features.3"]
    last = {c["factor"]: c for c in data["layers"][1]["factors"]}
    assert last["shape"]["significant"] and last["stamp"]["significant"]
    assert last["shape"]["mi"]["unit"] == "bits"
    assert last["shape"]["mi"]["value"] > last["texture"]["mi"]["value"]
    assert last["shape"]["n_significant_units"] > last["texture"]["n_significant_units"]
    assert any(f["analyzer"] == "information" and "stamp" in f["message"] for f in report.findings)
    for layer in data["layers"]:
        for c in layer["factors"]:
            m = c["mi"]
            assert m["ci_low"] <= m["ci_high"] and 0 < m["p_fwer"] <= 1
            assert m["value"] <= 1.05 * next(f["entropy_bits"] for f in data["factors"] if f["name"] == c["factor"])


def test_information_section_schema_and_html(info_run, validated_section):
    _, out = info_run
    section = validated_section(out, "information")
    html = (out / "report.html").read_text()
    assert "Layer × factor map" in html and "Co-information" in html
    pairs = section["data"]["layers"][0]["pairs"]
    assert len(pairs) == 10 and all(p["value"] is None and "not estimated" in p["reason"] for p in pairs)
    assert section["data"]["skipped_factors"] == []
    assert all(c["reason"] is None for lay in section["data"]["layers"] for c in lay["factors"])


@pytest.mark.slow
@pytest.mark.parametrize("decides", ["texture", "shape"])
def test_planted_world_models_carry_the_factor_that_decides_the_class(decides, tmp_path):
    """Xu et al.'s validation: a model trained where texture (shape) decides the class carries more texture
    (shape) information than shape (texture) information in its last layer, and significantly so."""
    import explainkit
    from explainkit.datasets.synthetic import WorldSpec, write_world
    from explainkit.datasets.training import accuracy, train_classifier

    train, probe_dir = tmp_path / "train", tmp_path / "probe"
    write_world(WorldSpec(n_images=600, class_factor=decides, seed=11), train)
    write_world(WorldSpec(n_images=300, class_factor=decides, seed=12), probe_dir)
    result = train_classifier(explainkit.ProbeSet.from_folder(train), epochs=12, seed=0)
    # chance 1/3; held-out accuracy: texture is learned to ~1.0, shape to ~0.7 in 12 epochs
    assert accuracy(result.model, explainkit.ProbeSet.from_folder(probe_dir)) > 0.6
    handle = explainkit.wrap(result.model, input_size=64, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    report = explainkit.analyze(handle, probe_dir, [("information", {"layer": "features.3"})])
    cells = {c["factor"]: c for c in report.section("information")["data"]["layers"][0]["factors"]}
    other = "shape" if decides == "texture" else "texture"
    assert cells[decides]["significant"]
    assert cells[decides]["mi"]["share_of_entropy"] > cells[other]["mi"]["share_of_entropy"] + 0.2


def test_co_information_of_copied_xor_and_independent_factors():
    """Closed forms: a copied factor is pure redundancy (co-information = -I(X; F)), an XOR pair pure
    synergy (= I(X; F1 xor F2), neither factor alone informative), an independent pair none (CI covers 0)."""
    rng = np.random.default_rng(4)
    n = 800
    a, b, c = rng.integers(0, 2, (3, n))

    def run(x, f1, f2):
        fs = [Factor("f1", ("0", "1"), f1, "test"), Factor("f2", ("0", "1"), f2, "test")]
        res = factor_information({"l": x[:, None]}, fs, components=1, permutations=99, resamples=50, seed=0)
        return res.layers[0].layer_mi, res.layers[0].pairs[0]

    mi, copy = run(a * 6.0 + rng.normal(size=n), a, a.copy())
    assert copy["value"] == pytest.approx(-mi[0], abs=1e-12) and copy["ci_high"] < -0.5
    x = (a ^ b) * 6.0 + rng.normal(size=n)
    mi, xor = run(x, a, b)
    alone = factor_information({"l": x[:, None]}, [Factor("x", ("0", "1"), a ^ b, "test")], components=1,
                               permutations=99, resamples=0, seed=0).layers[0].layer_mi[0]
    assert np.abs(mi).max() < 0.02 and xor["ci_low"] > 0.5 and xor["value"] == pytest.approx(alone, abs=0.05)
    _, none = run(a * 6.0 + rng.normal(size=n), a, c)
    assert none["ci_low"] < 0 < none["ci_high"] and abs(none["value"]) < 0.02
