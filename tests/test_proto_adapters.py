"""Similarity functions and prototype adapters against brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import explainkit
from explainkit.errors import ConfigError
from explainkit.hooks import hook_count
from explainkit.models import TinyCNN, TinyProtoPNet, tiny_protopnet
from explainkit.prototypes import (
    ChannelPrototypes,
    VectorPrototypes,
    exemplar_prototypes,
    find_prototype_tensor,
    kmeans_prototypes,
    patch_box,
)
from explainkit.prototypes.similarity import similarity, squared_l2_distances


def _brute_sq_dist(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    b, _, h, w = z.shape
    k = p.shape[-1]
    out = torch.empty(b, p.shape[0], h - k + 1, w - k + 1, dtype=torch.float64)
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            patch = z[:, :, i : i + k, j : j + k].double()  # (b, d, k, k)
            out[:, :, i, j] = ((patch[:, None] - p[None].double()) ** 2).sum(dim=(2, 3, 4))
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_squared_l2_distances_match_brute_force(k):
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 5, 6, 7, generator=g)
    p = torch.rand(4, 5, k, k, generator=g)
    assert torch.allclose(squared_l2_distances(z, p).double(), _brute_sq_dist(z, p), atol=1e-5)


def test_similarity_kinds_match_their_closed_forms():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 4, 4, generator=g)
    p = torch.randn(5, 3, 1, 1, generator=g)
    d = _brute_sq_dist(z, p)
    zc = z.double().permute(0, 2, 3, 1)  # (b, h, w, d)
    pv = p.double().flatten(1)  # (P, d)
    dot = torch.einsum("bhwd,pd->bphw", zc, pv)
    torch.testing.assert_close(similarity(z, p, "log").double(), torch.log((d + 1) / (d + 1e-4)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(similarity(z, p, "linear").double(), -d, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(similarity(z, p, "exp").double(), torch.exp(-d.sqrt()), atol=1e-4, rtol=1e-4)
    proj = dot / pv.norm(dim=1).view(1, -1, 1, 1)
    torch.testing.assert_close(similarity(z, p, "projection").double(), proj, atol=1e-4, rtol=1e-4)
    cos = proj / zc.norm(dim=3)[:, None]
    torch.testing.assert_close(similarity(z, p, "cosine").double(), cos, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="unknown similarity"):
        similarity(z, p, "dot")
    with pytest.raises(ConfigError, match="do not match"):
        similarity(z, torch.randn(2, 4, 1, 1), "log")


def test_protopnet_adapter_reproduces_the_models_own_similarities():
    torch.manual_seed(0)
    model = tiny_protopnet(num_classes=3, prototypes_per_class=2).eval()
    adapter = VectorPrototypes.from_model(model, input_size=(64, 64))
    assert adapter.layer == "add_on" and adapter.similarity == "log" and adapter.num_prototypes == 6
    assert [adapter.prototype_class(p) for p in range(6)] == [0, 0, 1, 1, 2, 2]
    x = torch.randn(3, 3, 64, 64)
    maps = adapter.similarity_maps(model, x)
    assert maps.shape == (3, 6, 8, 8)
    with torch.no_grad():
        _, min_d = model.forward_with_distances(x)
    torch.testing.assert_close(maps.flatten(2).amax(2), torch.log((min_d + 1) / (min_d + 1e-4)), atol=1e-4, rtol=1e-4)
    sub = adapter.similarity_maps(model, x, [4, 1])
    torch.testing.assert_close(sub, maps[:, [4, 1]])
    assert hook_count(model) == 0
    assert adapter.vectors().shape == (6, 32)


class _CfchenStyle(nn.Module):
    """Prototypes held by the root module, as in cfchen-duke's PPNet."""

    prototype_activation_function = "linear"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.add_on_layers = nn.Sequential(nn.Conv2d(8, 6, 1), nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(4, 6, 1, 1))
        self.last_layer = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        z = self.add_on_layers(self.features(x))
        d = squared_l2_distances(z, self.prototype_vectors)
        return self.last_layer(-d.flatten(2).amin(2))


class L2Conv2D(nn.Module):
    """Named like ProtoTree's prototype layer."""

    def __init__(self) -> None:
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.rand(3, 4, 1, 1))

    def forward(self, z):
        return squared_l2_distances(z, self.prototype_vectors).sqrt()


class _ProtoTreeStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Sigmoid())
        self.prototype_layer = L2Conv2D()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.exp(-self.prototype_layer(self.net(x))).flatten(2).amax(2))


def test_detection_finds_root_held_and_module_held_prototypes():
    torch.manual_seed(0)
    cf = _CfchenStyle().eval()
    adapter = VectorPrototypes.from_model(cf, input_size=(32, 32))
    assert adapter.layer == "add_on_layers" and adapter.similarity == "linear" and adapter.prototype_class(0) is None
    assert adapter.default_weight == "softplus"
    tree = _ProtoTreeStyle().eval()
    adapter = VectorPrototypes.from_model(tree, input_size=(32, 32))
    assert adapter.layer == "net" and adapter.similarity == "exp" and adapter.default_weight == "similarity"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.exp(-tree.prototype_layer(tree.net(x)))
    torch.testing.assert_close(adapter.similarity_maps(tree, x), expected, atol=1e-4, rtol=1e-4)
    assert find_prototype_tensor(TinyCNN()) is None
    with pytest.raises(ConfigError, match="no prototype tensor"):
        VectorPrototypes.from_model(TinyCNN(), input_size=(64, 64))


def test_several_prototype_tensors_must_be_named():
    model = nn.Module()
    model.a = nn.Module()
    model.a.prototypes = nn.Parameter(torch.rand(3, 4))
    model.prototype_vectors = nn.Parameter(torch.rand(3, 4))
    with pytest.raises(ConfigError, match="several prototype tensors"):
        find_prototype_tensor(model)


def test_channel_adapter_reads_channels_with_optional_softmax(tiny_cnn):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z = tiny_cnn.features(x)
    adapter = ChannelPrototypes("features.3").bind(tiny_cnn, (64, 64))
    assert adapter.num_prototypes == 64 and adapter.default_weight == "clip"
    torch.testing.assert_close(adapter.similarity_maps(tiny_cnn, x), z)
    some = ChannelPrototypes("features.3", channels=[5, 2], softmax=True).bind(tiny_cnn, (64, 64))
    torch.testing.assert_close(some.similarity_maps(tiny_cnn, x), z.softmax(1)[:, [5, 2]])
    torch.testing.assert_close(some.similarity_maps(tiny_cnn, x, [1]), z.softmax(1)[:, [2]])
    assert some.nonnegative and some.default_weight == "similarity"
    with pytest.raises(ConfigError, match="bad channel"):
        ChannelPrototypes("features.3", channels=[64]).bind(tiny_cnn, (64, 64))
    with pytest.raises(ConfigError, match="no layer named"):
        ChannelPrototypes("features.9").bind(tiny_cnn, (64, 64))
    assert hook_count(tiny_cnn) == 0


def test_channel_adapter_on_a_vit_token_grid():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=24,
                            depth=2, num_heads=2, num_classes=3).eval()
    adapter = ChannelPrototypes("blocks.-1.norm1", channels=[0, 7]).bind(vit, (32, 32))
    x = torch.randn(2, 3, 32, 32)
    maps = adapter.similarity_maps(vit, x)
    assert maps.shape == (2, 2, 4, 4)
    captured = {}
    handle = vit.blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        vit(x)
    handle.remove()
    tokens = captured["o"][:, vit.num_prefix_tokens:, :]  # drop the class token
    expected = tokens.reshape(2, 4, 4, 24).permute(0, 3, 1, 2)[:, [0, 7]]
    torch.testing.assert_close(maps, expected)


def test_exemplar_prototype_matches_its_own_cell_perfectly(tiny_cnn):
    x = torch.randn(3, 3, 64, 64)
    adapter = exemplar_prototypes(tiny_cnn, x, [(1, 2, 5), (0, 7, 0)], "features.3", classes=[2, None])
    maps = adapter.similarity_maps(tiny_cnn, x)
    assert maps[1, 0, 2, 5] == pytest.approx(np.log(1 / 1e-4), abs=1e-3)  # d = 0 at the exemplar's own cell
    assert maps[0, 1, 7, 0] == pytest.approx(np.log(1 / 1e-4), abs=1e-3)
    assert adapter.prototype_class(0) == 2 and adapter.prototype_class(1) is None
    cos = exemplar_prototypes(tiny_cnn, x, [(1, 2, 5)], "features.3", similarity="cosine")
    assert cos.similarity_maps(tiny_cnn, x)[1, 0, 2, 5] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="outside"):
        exemplar_prototypes(tiny_cnn, x, [(0, 8, 0)], "features.3")


def test_kmeans_prototypes_are_class_centres_and_seeded(tiny_cnn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 64, 64, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    a = kmeans_prototypes(tiny_cnn, x, labels, "features.3", per_class=2, seed=3)
    b = kmeans_prototypes(tiny_cnn, x, labels, "features.3", per_class=2, seed=3)
    assert a.num_prototypes == 6 and [a.prototype_class(p) for p in range(6)] == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(a.prototype_vectors, b.prototype_vectors)
    with torch.no_grad():
        z = tiny_cnn.features(x[labels == 1])  # (4, 64, 8, 8)
    cells = z.permute(0, 2, 3, 1).reshape(-1, 64)
    centres = a.prototype_vectors[2:4, :, 0, 0]
    # every cell of class 1 is closer to one of its two centres than the centres' spread suggests: the
    # centres minimise within-cluster distance, so their mean equals the mean of the cells
    assignment = torch.cdist(cells, centres).argmin(1)
    for k in range(2):
        torch.testing.assert_close(centres[k], cells[assignment == k].mean(0), atol=1e-3, rtol=1e-3)


def test_patch_box_is_the_95th_percentile_rectangle():
    sim = np.zeros((7, 7), np.float32)
    sim[2, 5] = 1.0
    y0, y1, x0, x1 = patch_box(sim, (224, 224))
    cy, cx = (2 + 0.5) * 32, (5 + 0.5) * 32  # centre of the hot cell in input pixels
    assert y0 < cy < y1 and x0 < cx < x1
    assert (y1 - y0) * (x1 - x0) <= 0.06 * 224 * 224 + 2 * 224  # about 5 % of the pixels (plus edges)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 64, 64)
    adapter = ChannelPrototypes("features.3").bind(model, (64, 64))
    with torch.no_grad():
        channel = model.features(x)[0, 3].numpy()
    assert adapter.patch_box(model, x, 3) == patch_box(channel, (64, 64))
    band = np.zeros((4, 4), np.float32)
    band[3] = 1.0  # a hot bottom row: the box spans the full width at the bottom
    y0, y1, x0, x1 = patch_box(band, (64, 48))
    assert (x0, x1) == (0, 48) and 32 < y0 < y1 and y1 >= 60


def test_tiny_protopnet_roundtrips_through_the_arch_factory(tmp_path):
    torch.manual_seed(0)
    model = TinyProtoPNet(num_classes=2, prototypes_per_class=3)
    path = explainkit.save_model(model, tmp_path / "m.safetensors",
                                 arch="explainkit.models:tiny_protopnet(num_classes=2, prototypes_per_class=3)",
                                 class_names=["a", "b"], preprocessing=model.explainkit_preprocessing)
    handle = explainkit.load_model(path)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(handle.module.eval()(x), model.eval()(x))
    adapter = VectorPrototypes.from_model(handle, input_size=(64, 64))
    assert adapter.num_prototypes == 6 and adapter.prototype_class(5) == 1
