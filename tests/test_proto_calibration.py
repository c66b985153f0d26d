"""Calibration pieces against closed forms: controls, re-initialised copies, decision changes, the headline test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from explainkit.adapters.randomize import randomized_copy
from explainkit.models import TinyCNN, TinyProtoPNet
from explainkit.prototypes import ChannelPrototypes, VectorPrototypes
from explainkit.prototypes.calibration import apply_controls, compare_with_null, control_perturbations
from explainkit.prototypes.decision import DecisionRows, decision_scores, resolve_targets
from explainkit.prototypes.importance import score_views
from explainkit.prototypes.perturb import adjust_contrast, adjust_saturation, make_perturbations
from explainkit.stats import holm

LUMA = np.array([0.299, 0.587, 0.114])


def test_contrast_is_luminance_contrast_after_the_saturation_control():
    """Pillow's contrast = luminance contrast ∘ saturation at the same factor (so saturation is its control)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    f = 0.45
    x = np.asarray(image, np.float64)
    grey = np.floor((x @ LUMA).mean() + 0.5)  # Pillow's mean of the "L" image
    desaturated = np.asarray(adjust_saturation(image, f), np.float64)
    luma = desaturated @ LUMA
    expected = desaturated + ((grey + f * (luma - grey)) - luma)[..., None]  # scale luma about the grey, keep chroma
    assert np.abs(np.asarray(adjust_contrast(image, f), np.float64) - expected.clip(0, 255)).max() <= 2.0


def test_controls_pair_each_contrast_with_saturation_at_its_factor():
    perts = make_perturbations(("hue", "contrast", "saturation"), {"contrast": {"factor": 0.3}})
    controls, pairs = control_perturbations(perts)
    assert [(c.name, c.params) for c in controls] == [("saturation", {"factor": 0.3})] and pairs == [(1, 3)]
    values = np.array([[1.0, 5.0, 2.0, 1.5], [0.0, 1.0, 0.5, 3.0]])
    np.testing.assert_allclose(apply_controls(values, 3, pairs), [[1.0, 3.5, 2.0], [0.0, -2.0, 0.5]])


@pytest.mark.parametrize("mode", ["permute", "reset"])
def test_randomized_copies_leave_the_model_alone(mode):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = randomized_copy(model, seed=1, mode=mode)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    w, w2 = model.features[0][0].weight, twin.features[0][0].weight
    assert not torch.equal(w, w2)
    if mode == "permute":  # the same values, shuffled
        assert torch.equal(w.flatten().sort().values, w2.flatten().sort().values)
    again = randomized_copy(model, seed=1, mode=mode)
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), again.parameters()))


def test_decision_scores_match_log_softmax_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0],  # originals
                           [1.0, 0.0, 0.0], [0.0, 3.0, 0.0],  # view 1
                           [2.0, 2.0, -1.0], [1.0, 1.0, 1.0]])  # view 2
    targets = resolve_targets(logits[:2], np.array([0, -1]))
    assert targets.tolist() == [0, 1]  # label, else predicted
    d = decision_scores(logits, targets, 2)
    lsm = torch.log_softmax(logits.double(), 1).numpy()
    expected = np.array([[lsm[0, 0] - lsm[2, 0], lsm[0, 0] - lsm[4, 0]],
                         [lsm[1, 1] - lsm[3, 1], lsm[1, 1] - lsm[5, 1]]])
    np.testing.assert_allclose(d.delta_log_prob, expected)
    np.testing.assert_allclose(d.delta_logit, [[1.0, 0.0], [-2.0, 0.0]])
    rows = DecisionRows(np.array([5, 2]), d.target, d.delta_log_prob, d.delta_logit, np.zeros((2, 0, 2)))
    merged = DecisionRows.empty(2, 0).merge(rows)
    assert merged.index.tolist() == [2, 5] and merged.target.tolist() == [1, 0]


def test_channel_contributions_are_head_weight_times_pooled_activation():
    """Gradient × activation summed over locations = w[t, c] · mean activation for GAP + linear (exact)."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32)
    adapter = ChannelPrototypes("features.3", [0, 5, 9]).bind(model, (32, 32))
    targets = torch.tensor([0, 2, 1, 2])
    got = adapter.contributions(model, x, targets, torch.zeros(4, 3), [1, 2])
    with torch.no_grad():
        pooled = model.features(x).mean(dim=(2, 3))
    expected = model.classifier.weight[targets][:, [5, 9]] * pooled[:, [5, 9]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_contributions_of_scored_views_are_computed_in_chunks_and_exact():
    """score_views passes the originals to the adapter in chunks of ``max_batch`` (a gradient pass over every image
    at once would hold them all): the contributions equal the closed form, with an uneven last chunk too."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3).eval()
    x = torch.randn(10, 3, 32, 32)  # 5 originals, then one perturbed copy of each
    adapter = ChannelPrototypes("features.3", [0, 5, 9]).bind(model, (32, 32))
    labels = np.array([0, 2, 1, 2, 0])
    chunked = score_views(adapter, model, x, 5, max_batch=2, decision=True, labels=labels)
    whole = score_views(adapter, model, x, 5, decision=True, labels=labels)
    with torch.no_grad():
        pooled = model.features(x[:5]).mean(dim=(2, 3))
    expected = (model.classifier.weight[torch.as_tensor(labels)][:, [0, 5, 9]] * pooled[:, [0, 5, 9]]).detach().double()
    np.testing.assert_allclose(chunked.contribution, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.contribution, whole.contribution, rtol=1e-6, atol=1e-7)


def test_prototype_contributions_are_last_layer_weight_times_similarity():
    torch.manual_seed(0)
    model = TinyProtoPNet(num_classes=2, prototypes_per_class=2).eval()
    adapter = VectorPrototypes.from_model(model, input_size=(32, 32))
    best = torch.rand(3, 4)
    targets = torch.tensor([1, 0, 1])
    got = adapter.contributions(model, torch.zeros(3, 3, 32, 32), targets, best)
    torch.testing.assert_close(got, model.last_layer.weight.detach()[targets] * best)


def _t_test(d: float, var: float, df: float) -> float:
    return float(stats.t.sf(d / np.sqrt(var), df))


def test_compare_with_null_against_the_formula():
    names = ["a", "b", "c"]
    model = np.array([5.0, 2.0, 1.0])
    cov = np.diag([0.04, 0.09, 0.01])
    null = np.array([[0.1, 0.0, 0.2], [0.3, -0.1, 0.0], [-0.1, 0.1, 0.1]])
    out = compare_with_null(names, model, cov, 50, null, alpha=0.05)
    k = 3
    value = model - null.mean(0)
    np.testing.assert_allclose(out.value, value)
    assert out.order == [0, 1, 2] and out.status == "ahead" and out.first == "a"
    ps = []
    for j, comp in zip((1, 2), out.comparisons):
        spread = np.var(null[:, 0] - null[:, j], ddof=1) * (1 + 1 / k)
        sampling = cov[0, 0] + cov[j, j]
        df = (sampling + spread) ** 2 / (sampling**2 / 50 + spread**2 / (k - 1))
        assert comp["df"] == pytest.approx(df)
        assert comp["p"] == pytest.approx(_t_test(value[0] - value[j], sampling + spread, df))
        ps.append(comp["p"])
    np.testing.assert_allclose([c["p_holm"] for c in out.comparisons], holm(np.array(ps)))
    half = stats.t.ppf(0.975, out.comparisons[0]["df"]) * np.sqrt(cov[0, 0] + cov[1, 1] + np.var(
        null[:, 0] - null[:, 1], ddof=1) * (1 + 1 / k))
    assert out.comparisons[0]["ci_low"] == pytest.approx(value[0] - value[1] - half)


def test_compare_with_null_says_tie_or_none_when_the_data_do_not_decide():
    names = ["a", "b"]
    tie = compare_with_null(names, np.array([1.0, 0.9]), np.eye(2) * 0.01, 100, np.zeros((3, 2)))
    assert tie.status == "tie" and tie.tied == ["a", "b"] and not tie.comparisons[0]["significant"]
    # a model that looks like its re-initialised copies: nothing above the null
    rng = np.random.default_rng(0)
    null = rng.normal(size=(3, 2))
    none = compare_with_null(names, null[0] + 0.1, np.eye(2) * 1e-4, 100, null)
    assert none.status in ("none", "tie") and none.first in (None, "a", "b")
    assert compare_with_null(names, np.array([-1.0, -2.0]), np.eye(2) * 0.01, 100, np.zeros((3, 2))).status == "none"


def _accumulator(rng, p: int, c: int, r: int, dead: int | None):
    """A filled SplitAccumulator; prototype ``dead`` has no weight on any image or resample."""
    from explainkit.prototypes.importance import SplitAccumulator

    acc = SplitAccumulator.empty(p, c, r, 1)
    acc.n = 20
    acc.sum_w, acc.sum_wd = rng.uniform(1, 2, p), rng.normal(0, 1, (p, c))
    acc.sum_wabs, acc.sum_contrib = np.abs(acc.sum_wd) + 0.5, rng.uniform(0, 1, p)
    acc.boot_w = acc.sum_w * rng.uniform(0.5, 1.5, (r, p))
    acc.boot_wd = acc.sum_wd * rng.uniform(0.5, 1.5, (r, p, c))
    if dead is not None:
        for name in ("sum_w", "sum_contrib", "sum_wd", "sum_wabs"):
            getattr(acc, name)[dead] = 0.0
        acc.boot_w[:, dead], acc.boot_wd[:, dead] = 0.0, 0.0
    return acc


def test_a_dead_prototype_gets_null_calibrated_importance_without_warnings():
    """A prototype with no weight on any image (a dead channel) has no finite bootstrap replicate: its calibrated
    importance and interval are null, the others' are what they are without it, and numpy warns about nothing."""
    import warnings

    from explainkit.prototypes.relevance import prototype_relevance

    rng = np.random.default_rng(0)
    acc = _accumulator(rng, 4, 3, 30, dead=3)
    nulls = [_accumulator(rng, 4, 3, 30, dead=None) for _ in range(3)]
    names = ["hue", "shape", "texture"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = prototype_relevance(acc, nulls, names, [], seed=0, alpha=0.05)
    assert np.isnan(out["calibrated"][3]).all() and np.isnan(out["ci_low"][3]).all() and out["weights"][3] == 0
    assert np.isfinite(out["calibrated"][:3]).all() and (out["ci_low"][:3] <= out["ci_high"][:3]).all()
    # the dead prototype adds nothing to the levels: the live ones are calibrated as if it were not there
    alive = _accumulator(np.random.default_rng(0), 3, 3, 30, dead=None)
    for name in ("sum_w", "sum_wd", "sum_wabs", "sum_contrib", "boot_w", "boot_wd"):
        setattr(alive, name, getattr(acc, name)[:, :3] if name.startswith("boot") else getattr(acc, name)[:3])
    alone = prototype_relevance(alive, nulls, names, [], seed=0, alpha=0.05)
    for key in ("calibrated", "ci_low", "ci_high"):
        np.testing.assert_allclose(out[key][:3], alone[key])
