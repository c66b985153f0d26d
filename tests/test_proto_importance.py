"""Local and global importance against closed forms and independent recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explainkit.errors import ConfigError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import TinyProtoPNet
from explainkit.prototypes import ChannelPrototypes, SplitAccumulator, VectorPrototypes, local_importance
from explainkit.prototypes.importance import (
    LazyViews,
    perturbed_views,
    relative_drop,
    score_views,
    scores_from_maps,
    similarity_weight,
    view_images,
)
from explainkit.prototypes.perturb import make_perturbations
from explainkit.prototypes.statistics import global_scores, redundancy_groups
from explainkit.stats.streaming import poisson_counts

UNIT = Preprocessing(input_size=(32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="stretch")
SYN = Preprocessing(input_size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OPPONENT = np.array([[1.0, -1.0, 0.0], [-0.5, -0.5, 1.0]])  # (R - G, B - (R + G) / 2): zero for greys


def _chroma_net() -> nn.Module:
    conv = nn.Conv2d(3, 2, 1, bias=False)
    conv.weight.data = torch.tensor(OPPONENT, dtype=torch.float32)[:, :, None, None]
    return nn.Sequential(conv, nn.AvgPool2d(8)).eval()


def _edge_net() -> nn.Module:
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    conv.weight.data = torch.stack([0.299 * lap, 0.587 * lap, 0.114 * lap])[None]
    return nn.Sequential(conv, _Abs()).eval()


class _Abs(nn.Module):
    def forward(self, x):
        return x.abs()


def _chroma(rgb) -> np.ndarray:
    return OPPONENT @ np.asarray(rgb, np.float64)


def test_a_pure_hue_model_ranks_only_hue_and_matches_the_closed_form():
    colour = (200, 60, 40)
    image = Image.new("RGB", (32, 32), colour)
    model = _chroma_net()
    vectors = torch.tensor(_chroma(colour) / 255, dtype=torch.float32)[None]
    adapter = VectorPrototypes("1", vectors, "cosine").bind(model, (32, 32))
    perts = make_perturbations()
    scores = local_importance(adapter, model, [image], perts, UNIT)
    delta = dict(zip([p.name for p in perts], scores.delta[0, 0]))
    hue_pixel = perts[0](image).getpixel((0, 0))
    a, b = _chroma(colour), _chroma(hue_pixel)
    expected = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert scores.similarity[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert delta["hue"] == pytest.approx(expected, abs=1e-5) and delta["hue"] > 0.1
    for name in ("shape", "texture", "contrast", "saturation"):  # chroma direction kept: only its length changes
        assert abs(delta[name]) < 2e-3, name


def test_an_achromatic_edge_detector_ignores_hue_and_saturation_and_loses_55_percent_to_contrast():
    arr = np.full((32, 32, 3), 60, np.uint8)
    arr[8:24, 10:26] = 180
    image = Image.fromarray(arr)
    model = _edge_net()
    adapter = ChannelPrototypes("0").bind(model, (32, 32))
    perts = make_perturbations()
    scores = local_importance(adapter, model, [image], perts, UNIT)
    delta = dict(zip([p.name for p in perts], scores.delta[0, 0]))
    assert delta["hue"] == 0.0 and delta["saturation"] == 0.0  # grey pixels are fixed points of both
    s0 = scores.similarity[0, 0]
    assert s0 > 0 and delta["contrast"] / s0 == pytest.approx(0.55, abs=0.02)  # m + 0.45 (x - m), rounded
    assert delta["shape"] > 0.1 * s0  # the warp moves the edge away from the best location
    assert abs(delta["texture"]) < 0.05 * s0  # NLM keeps clean edges


def _protopnet() -> TinyProtoPNet:
    torch.manual_seed(0)
    return TinyProtoPNet(num_classes=2, prototypes_per_class=3).eval()


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    from explainkit.datasets.synthetic import WorldSpec, generate_world

    return generate_world(WorldSpec(n_images=n, class_factor="colour", seed=seed)).images


def test_identity_perturbations_give_exactly_zero_deltas():
    model = _protopnet()
    adapter = VectorPrototypes.from_model(model, input_size=(64, 64))
    perts = make_perturbations(["contrast", "saturation", "brightness", "shape"],
                               {"contrast": {"factor": 1.0}, "saturation": {"factor": 1.0},
                                "brightness": {"factor": 1.0}, "shape": {"amplitude": 0.0}})
    scores = local_importance(adapter, model, _images(4), perts, SYN)
    assert scores.delta.shape == (4, 6, 4)
    assert np.all(scores.delta == 0)
    # a zero hue shift is not an identity: Pillow's 8-bit HSV round trip rounds (as in the reference)
    hue0 = local_importance(adapter, model, _images(4), make_perturbations(["hue"], {"hue": {"factor": 0.0}}), SYN)
    assert 0 < np.abs(hue0.delta).max() < 0.05


def test_local_deltas_match_separate_forward_passes():
    model = _protopnet()
    adapter = VectorPrototypes.from_model(model, input_size=(64, 64))
    perts = make_perturbations()
    images = _images(3)
    scores = local_importance(adapter, model, images, perts, SYN, max_batch=5)

    def maps(ims):
        with torch.no_grad():
            d = model.prototype_layer(model.latent(SYN(ims)))
        return torch.log((d + 1) / (d + 1e-4)).flatten(2).numpy()  # (n, P, 64)

    m0 = maps(images)
    loc = m0.argmax(2)
    np.testing.assert_allclose(scores.similarity, m0.max(2), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scores.location, loc)
    for c, p in enumerate(perts):
        mc = maps([p(im) for im in images])
        expected = m0.max(2) - np.take_along_axis(mc, loc[..., None], 2)[..., 0]
        np.testing.assert_allclose(scores.delta[:, :, c], expected, rtol=1e-4, atol=1e-4)
    best = local_importance(adapter, model, images, perts, SYN, readout="max")
    assert np.all(best.delta <= scores.delta + 1e-5)  # re-maximising can only raise the perturbed similarity
    with pytest.raises(ConfigError, match="readout"):
        local_importance(adapter, model, images, perts, SYN, readout="mean")
    rel = relative_drop(scores.delta, scores.similarity)
    np.testing.assert_allclose(rel, scores.delta / scores.similarity[..., None], rtol=1e-6)


@pytest.mark.parametrize("readout", ["fixed", "max"])
def test_scoring_in_chunks_of_lazy_views_equals_the_readout_of_all_maps(readout):
    """score_views reads each chunk's maps and drops them; from lazily preprocessed views, in chunks that straddle
    the originals and their copies, it gives the scores of every view's maps read at once (to float rounding: chunks
    change the batch composition; locations exactly), and it never
    preprocesses more views at a time than one chunk."""
    model = _protopnet()
    adapter = VectorPrototypes.from_model(model, input_size=(64, 64))
    perts = make_perturbations()
    images = _images(3)
    x = perturbed_views(images, perts, SYN)
    with torch.no_grad():
        whole = scores_from_maps(adapter.similarity_maps(model, x), 3, readout)
    sizes = []

    def preprocess(ims):
        sizes.append(len(ims))
        return SYN(ims)

    views = LazyViews(view_images(images, perts), preprocess)
    torch.testing.assert_close(views[4:9], x[4:9], rtol=0, atol=0)
    sizes.clear()
    for max_batch in (2, 4, 7):
        chunked = score_views(adapter, model, views, 3, readout=readout, max_batch=max_batch)
        np.testing.assert_allclose(chunked.similarity, whole.similarity, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(chunked.location, whole.location)
        np.testing.assert_allclose(chunked.delta, whole.delta, rtol=1e-5, atol=1e-5)
        assert sum(sizes) == len(x) and max(sizes) <= max_batch
        sizes.clear()


def _accumulate(scores, indices, order, batch, rule="similarity", r=60, k=5):
    acc = SplitAccumulator.empty(scores.similarity.shape[1], scores.delta.shape[2], r, k)
    for start in range(0, len(order), batch):
        pos = np.sort(order[start : start + batch])
        idx = indices[pos]
        counts = poisson_counts([np.random.default_rng([7, int(i)]) for i in idx], r)
        prio = np.array([np.random.default_rng([8, int(i)]).random() for i in idx])
        acc = acc.merge(SplitAccumulator.empty(*acc.sum_wd.shape, r, k).add(
            scores.subset(np.isin(np.arange(len(indices)), pos)), idx, rule, counts, prio))
    return acc


def test_global_scores_are_weighted_means_and_do_not_depend_on_batching():
    model = _protopnet()
    adapter = VectorPrototypes.from_model(model, input_size=(64, 64))
    scores = local_importance(adapter, model, _images(12, 1), make_perturbations(), SYN)
    indices = np.arange(100, 112)
    a = _accumulate(scores, indices, np.arange(12), 12)
    b = _accumulate(scores, indices, np.random.default_rng(0).permutation(12), 5)
    np.testing.assert_allclose(a.sum_wd, b.sum_wd, rtol=1e-10)
    np.testing.assert_allclose(a.boot_wd, b.boot_wd, rtol=1e-10)
    np.testing.assert_array_equal(a.sample.index, b.sample.index)
    np.testing.assert_array_equal(a.best_index, b.best_index)
    assert a.n == 12 and len(a.sample) == 5
    g = global_scores(a)
    s, d = scores.similarity.astype(np.float64), scores.delta.astype(np.float64)
    np.testing.assert_allclose(g.score, (d * s[..., None]).sum(0) / s.sum(0)[:, None], rtol=1e-6)
    np.testing.assert_allclose(g.relative, (d * s[..., None]).sum(0) / (s * s).sum(0)[:, None], rtol=1e-6)
    assert np.all((g.ci_low <= g.score + 1e-9) & (g.score <= g.ci_high + 1e-9))
    np.testing.assert_array_equal(a.best_index, indices[s.argmax(0)])
    u = global_scores(_accumulate(scores, indices, np.arange(12), 4, rule="uniform"))
    np.testing.assert_allclose(u.score, d.mean(0), rtol=1e-6)  # equal weights: the plain mean


def test_identical_prototypes_get_identical_explanations_and_form_a_group():
    model = _protopnet()
    base = model.prototype_layer.prototype_vectors.detach()
    vectors = torch.cat([base, base[2:3]])  # prototype 6 duplicates prototype 2
    adapter = VectorPrototypes("add_on", vectors).bind(model, (64, 64))
    scores = local_importance(adapter, model, _images(6), make_perturbations(), SYN)
    np.testing.assert_array_equal(scores.delta[:, 2], scores.delta[:, 6])
    g = global_scores(_accumulate(scores, np.arange(6), np.arange(6), 3))
    assert [2, 6] in redundancy_groups(g.score, 1e-9)
    assert [2, 6] in redundancy_groups(adapter.vectors().numpy(), 1e-9)


def test_similarity_weights():
    s = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(similarity_weight(s, "clip"), [0, 0, 2])
    np.testing.assert_allclose(similarity_weight(s, "softplus"), np.log1p(np.exp(s)))
    np.testing.assert_allclose(similarity_weight(s, "uniform"), [1, 1, 1])
    np.testing.assert_allclose(similarity_weight(s[1:], "similarity"), [0, 2])
    with pytest.raises(ConfigError, match=">= 0"):
        similarity_weight(s, "similarity")
