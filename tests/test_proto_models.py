"""The seed papers' prototype models: their equations against hand computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainkit.errors import ConfigError
from explainkit.loading.arch import build_arch, parse_arch
from explainkit.models import PROTOTYPE_MODELS, cbc_net, hopfield_net, prob_psenn, st_protopnet, tversky_net
from explainkit.prototypes.models.casebased import CaseBasedLoss, CaseBasedNet, r1_term, r2_term
from explainkit.prototypes.models.cbc import CBCReasoning, cbc_probabilities, margin_loss, rbf_detection
from explainkit.prototypes.models.hopfield import HopfieldAssociation, hopfield_retrieval
from explainkit.prototypes.models.probpsenn import GaussianPrototypes, predictive_uncertainty
from explainkit.prototypes.models.stprotopnet import STLoss, boundary_distance, class_pair_similarity
from explainkit.prototypes.models.tversky import TverskyProjection, salience, tversky_similarity


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(4, 3, 64, 64)


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_factories_build_from_arch_specs_and_return_logits(name, x):
    spec = parse_arch(f"explainkit:{name}(num_classes=4)")
    assert parse_arch(f"explainkit.models:{name}").name == spec.name == name
    torch.manual_seed(0)
    model = build_arch(spec).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 4) and torch.isfinite(out).all()


# ---------------------------------------------------------------- case-based reasoning (Li et al. 2018)


def test_r1_r2_and_the_loss_match_a_direct_computation():
    torch.manual_seed(1)
    protos, codes = torch.randn(5, 7), torch.randn(9, 7)
    d = torch.tensor([[float(((p - c) ** 2).sum()) for c in codes] for p in protos])  # (P, N)
    assert r1_term(protos, codes).item() == pytest.approx(d.min(1).values.mean().item(), rel=1e-5)
    assert r2_term(protos, codes).item() == pytest.approx(d.min(0).values.mean().item(), rel=1e-5)

    torch.manual_seed(2)
    model = CaseBasedNet(num_classes=3, num_prototypes=4)
    xb, yb = torch.rand(6, 3, 64, 64) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    total, logits, terms = CaseBasedLoss()(model, xb, yb)
    z = model.encode(xb).flatten(1)
    dist = torch.stack([((z - p.flatten()) ** 2).sum(1) for p in model.prototypes], 1)  # (B, P)
    assert torch.allclose(logits, dist @ model.last_layer.weight.t(), rtol=1e-4)
    recon = ((model.decode(model.encode(xb)) - (xb * 0.5 + 0.5)) ** 2).sum((1, 2, 3)).mean()
    expected = 20 * F.cross_entropy(logits, yb) + recon + dist.min(0).values.mean() + dist.min(1).values.mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["r1"] == pytest.approx(dist.min(0).values.mean().item(), rel=1e-4)
    # a prototype speaks for the class of its most negative weight
    with torch.no_grad():
        model.last_layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, -1.0, 3.0]]))
    assert model.prototype_classes() == [1, 1, 2, 0]
    decoded = model.decode(model.prototypes)
    assert decoded.shape == (4, 3, 64, 64) and decoded.min() >= 0 and decoded.max() <= 1


# ---------------------------------------------------------------- ST-ProtoPNet (Wang et al. 2023)


def test_boundary_distance_is_half_the_angle_to_the_nearest_other_class_prototype():
    angles = torch.tensor([0.0, 0.2, 1.0, 2.0])  # unit vectors on a circle
    vectors = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
    distance = boundary_distance(vectors, [0, 0, 1, 1])
    assert distance.tolist() == pytest.approx([0.5, 0.4, 0.4, 0.9], abs=1e-5)
    assert torch.isnan(boundary_distance(vectors, [0, 0, 0, 0])).all()


def test_class_pair_similarity_and_the_st_losses_match_loops():
    torch.manual_seed(3)
    protos = torch.randn(3, 2, 5)  # 3 classes × 2 prototypes
    for reduce, fn in (("min", min), ("max", max)):
        out = class_pair_similarity(protos, reduce)
        for a in range(3):
            for b in range(3):
                ref = fn(float(protos[a, i] @ protos[b, j]) for i in range(2) for j in range(2))
                assert out[a, b].item() == pytest.approx(ref, rel=1e-5)

    torch.manual_seed(4)
    model = st_protopnet(num_classes=3, prototypes_per_class=2)
    model.normalize_prototypes()
    xb, yb = torch.rand(5, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1])
    loss = STLoss(cluster=0, separation_trivial=0, separation_support=0, orthogonality=0, l1=0, discrimination=0,
                  closeness=1.0)
    value, _ = loss(model, xb, yb, "support")
    logits, _ = model.branch_logits(xb)
    p = model.prototype_vectors_support.flatten(1).view(3, 2, -1)
    p = p.detach()
    closeness = -np.mean([min(float(p[a, i] @ p[b, j]) for i in range(2) for j in range(2))
                          for a in range(3) for b in range(3) if a != b])
    assert value.item() == pytest.approx(F.cross_entropy(logits["support"], yb).item() + closeness, rel=1e-4)
    # orthogonality: sum over classes of |P_c P_cᵀ - I|_1
    orth = STLoss(cluster=0, separation_trivial=0, separation_support=0, orthogonality=1.0, l1=0, discrimination=0,
                  closeness=0)(model, xb, yb, "trivial")[0] - F.cross_entropy(logits["trivial"], yb)
    q = model.prototype_vectors_trivial.detach().flatten(1).view(3, 2, -1)
    assert orth.item() == pytest.approx(float(sum((q[c] @ q[c].t() - torch.eye(2)).abs().sum() for c in range(3))),
                                        rel=1e-4)
    maps = model.similarity_maps(xb)
    summed = model.last_layer_support(maps["support"].flatten(2).amax(2)) + model.last_layer_trivial(
        maps["trivial"].flatten(2).amax(2))
    assert torch.allclose(model(xb), summed, atol=1e-5)


# ---------------------------------------------------------------- Tversky (Doumbouya et al. 2025)


def _tversky_by_hand(a, b, features, alpha, beta, theta, intersection, difference):
    ma, mb = [float(a @ f) for f in features], [float(b @ f) for f in features]
    common = {"product": lambda u, v: u * v, "min": min, "max": max, "mean": lambda u, v: (u + v) / 2,
              "gmean": lambda u, v: math.sqrt(u * v)}[intersection]
    inter = sum(common(u, v) for u, v in zip(ma, mb) if u > 0 and v > 0)

    def minus(xs, ys):
        if difference == "ignorematch":
            return sum(u for u, v in zip(xs, ys) if u > 0 and v <= 0)
        return sum(u - v for u, v in zip(xs, ys) if u > 0 and v > 0 and u > v)

    return theta * inter - alpha * minus(ma, mb) - beta * minus(mb, ma)


@pytest.mark.parametrize("difference", ["ignorematch", "substractmatch"])
@pytest.mark.parametrize("intersection", ["product", "min", "max", "mean", "gmean"])
def test_tversky_similarity_matches_a_hand_computation(intersection, difference):
    features = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, -1.0, 0.5]])
    a = torch.tensor([[2.0, 0.5, -1.0], [0.3, -2.0, 1.5]])
    b = torch.tensor([[1.0, 1.5, 0.5], [-1.0, 0.2, 2.0], [0.0, 0.0, 0.0]])
    out = tversky_similarity(a, b, features, 0.7, 0.2, 1.3, intersection, difference)
    for i in range(2):
        for j in range(3):
            ref = _tversky_by_hand(a[i], b[j], features, 0.7, 0.2, 1.3, intersection, difference)
            assert out[i, j].item() == pytest.approx(ref, abs=1e-5)


def test_tversky_similarity_is_asymmetric_and_salience_sums_present_features():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    small, big = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    s_ab = tversky_similarity(small, big, features, 0.9, 0.1, 1.0)
    s_ba = tversky_similarity(big, small, features, 0.9, 0.1, 1.0)
    assert s_ab.item() == pytest.approx(1.0 - 0.1 * 2.0) and s_ba.item() == pytest.approx(1.0 - 0.9 * 2.0)
    assert salience(torch.tensor([2.0, -1.0, 0.5])).item() == pytest.approx(2.5)
    with pytest.raises(ConfigError):
        TverskyProjection(2, 2, intersection="median")


def test_tversky_net_logits_are_the_mean_cell_similarity(x):
    torch.manual_seed(5)
    model = tversky_net(num_classes=3).eval()
    z = model.add_on(model.features(x))
    cells = z.permute(0, 2, 3, 1).reshape(4, -1, z.shape[1])
    head = model.head
    ref = torch.stack([tversky_similarity(c, head.prototypes, head.features, head.alpha, head.beta, head.theta,
                                          head.intersection, head.difference).mean(0) for c in cells])
    assert torch.allclose(model(x), ref, atol=1e-5)


# ---------------------------------------------------------------- modern Hopfield (Ramsauer et al. 2021)


def test_hopfield_retrieval_is_softmax_of_beta_x_transpose_xi():
    rng = np.random.default_rng(0)
    stored, state, beta = rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), 2.5
    logits = beta * state @ stored.T
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    out = hopfield_retrieval(torch.tensor(state), torch.tensor(stored), beta).numpy()
    assert np.allclose(out, ref, atol=1e-12)
    # the bare layer (no normalisation, no projections) retrieves exactly that; one update ξ_new = X p
    layer = HopfieldAssociation(4, 6, beta=beta, normalize=False, projections=False)
    with torch.no_grad():
        layer.stored_patterns.copy_(torch.tensor(stored))
    p = layer(torch.tensor(state, dtype=torch.float32)).detach().double().numpy()
    assert np.allclose(p, ref, atol=1e-5)
    assert np.allclose(p @ stored, ref @ stored, atol=1e-5)


def test_hopfield_layer_defaults_beta_to_one_over_sqrt_dk_and_projects_both_patterns():
    torch.manual_seed(6)
    layer = HopfieldAssociation(8, 5, hidden_size=16)
    assert layer.beta.item() == pytest.approx(16**-0.5)
    state = torch.randn(7, 8)
    q = layer.query(F.layer_norm(state, (8,), layer.norm_state.weight, layer.norm_state.bias))
    k = layer.key(F.layer_norm(layer.stored_patterns, (8,), layer.norm_stored.weight, layer.norm_stored.bias))
    assert torch.allclose(layer(state), torch.softmax(16**-0.5 * q @ k.t(), dim=1), atol=1e-6)
    model = hopfield_net(num_classes=3, patterns_per_class=2).eval()
    xb = torch.randn(2, 3, 64, 64)
    maps = model.retrieval_maps(model.add_on(model.features(xb)))
    assert torch.allclose(maps.sum(1), torch.ones(2, *maps.shape[2:]), atol=1e-5)
    assert torch.allclose(model(xb), model.last_layer(maps.flatten(2).amax(2)), atol=1e-6)


# ---------------------------------------------------------------- RBF / CBC (Saralajew et al. 2019, 2025)


def test_cbc_class_probability_matches_the_papers_formula():
    torch.manual_seed(7)
    reasoning = CBCReasoning(num_components=4, num_classes=3, priors=True)
    with torch.no_grad():
        reasoning.prior_logits.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    d = torch.rand(5, 4)
    with torch.no_grad():
        r = reasoning.probabilities()
        out = reasoning(d)
    total = r["positive"] + r["negative"] + r["indefinite"]
    assert torch.allclose(total, torch.ones_like(total)) and float(r["prior"].sum()) == pytest.approx(1.0)
    for n in range(5):
        for c in range(3):
            num = sum(float(r["prior"][k] * (r["positive"][k, c] * d[n, k] + r["negative"][k, c] * (1 - d[n, k])))
                      for k in range(4))
            den = sum(float(r["prior"][k] * (1 - r["indefinite"][k, c])) for k in range(4))
            assert out[n, c].item() == pytest.approx(num / den, rel=1e-5)
    # reference encoding: r+ = A, r- = (1 - A) B, r0 = (1 - A)(1 - B)
    a, b = torch.sigmoid(reasoning.encoded)
    assert torch.allclose(r["negative"], (1 - a) * b) and torch.allclose(r["indefinite"], (1 - a) * (1 - b))
    # all components detected and all reasoning positive: probability 1
    assert cbc_probabilities(torch.ones(1, 4), torch.ones(4, 3), torch.zeros(4, 3)).allclose(torch.ones(1, 3))


def test_rbf_detection_margin_loss_and_the_two_heads():
    z = torch.tensor([[[[0.0]], [[1.0]]]])  # (1, 2, 1, 1)
    comps = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    det = rbf_detection(z, comps, 2.0)[0, :, 0, 0]
    assert det.tolist() == pytest.approx([1.0, math.exp(-1 / 8), math.exp(-10 / 8)], rel=1e-6)
    probs, labels = torch.tensor([[0.9, 0.7, 0.1], [0.2, 0.3, 0.95]]), torch.tensor([0, 2])
    assert margin_loss(probs, labels).item() == pytest.approx((0.1 + 0.0) / 2)
    torch.manual_seed(8)
    xb = torch.randn(3, 3, 64, 64)
    cbc, rbf = cbc_net(num_classes=3).eval(), cbc_net(num_classes=3, head="rbf").eval()
    assert torch.allclose(cbc(xb).exp(), cbc.class_probabilities(xb) + 1e-6, atol=1e-6)
    assert torch.allclose(rbf(xb), rbf.rbf_head(rbf.detections(xb)), atol=1e-6)
    with pytest.raises(ConfigError):
        rbf.class_probabilities(xb)


# ---------------------------------------------------------------- Prob-PSENN (Vadillo et al. 2024)


def test_predictive_uncertainty_decomposes_the_entropy():
    agree = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])  # two samples, one image, two classes
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    u = predictive_uncertainty(agree)
    assert u["total"].item() == pytest.approx(math.log(2)) and u["epistemic"].item() == pytest.approx(0, abs=1e-9)
    u = predictive_uncertainty(disagree)
    assert u["aleatoric"].item() == pytest.approx(0, abs=1e-6) and u["epistemic"].item() == pytest.approx(math.log(2))


def test_gaussian_prototypes_sample_and_penalise_the_spread():
    torch.manual_seed(9)
    layer = GaussianPrototypes(3, 4, sigma=0.1)
    samples = layer.sample(4000, torch.Generator().manual_seed(0))
    assert torch.allclose(samples.mean(0), layer.prototype_mean, atol=0.01)
    assert torch.allclose(samples.std(0), torch.full_like(samples[0], 0.1), rtol=0.05)
    assert layer.variance_kl(0.1).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        layer.prototype_log_sigma.fill_(math.log(0.05))
    assert layer.variance_kl(0.1).item() == pytest.approx(math.log(2) + 0.25 / 2 - 0.5, rel=1e-5)


def test_prob_psenn_eval_prediction_is_the_seeded_mc_average(x):
    torch.manual_seed(10)
    model = prob_psenn(num_classes=3, eval_samples=5).eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        probs = model.sample_probabilities(x, model.eval_prototypes())
    assert torch.equal(a, b) and probs.shape == (5, 4, 3)
    assert torch.allclose(a.exp(), probs.mean(0), atol=1e-6)
