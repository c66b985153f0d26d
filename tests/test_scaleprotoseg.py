"""ScaleProtoSeg (Porta et al., WACV 2025): equations, adapter, per-class-region analysis, own explanation.

The default tests use a constructed model whose similarity maps are known in closed form: no
backbone, each scale branch reads one input channel at its centre tap (``z_s = sigmoid(x_s)``), one
prototype per class and scale, so ``s_p = log((d + 1) / (d + 1e-4))`` with
``d = (sigmoid(x_scale(p)) - v_p)²``. The slow test trains the reference recipe on the planted
segmentation world (two object classes that differ only in hue).
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explainkit
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import SEGMENTATION_PROTOTYPE_MODELS, scaleprotoseg
from explainkit.prototypes.importance import SplitAccumulator
from explainkit.prototypes.model_adapters.scaleprotoseg import ScaleProtoSegPrototypes
from explainkit.prototypes.models.scaleprotoseg import (
    ScaleProtoSeg,
    ScaleProtoSegLoss,
    group_entropy,
    kld_loss,
    project_simplex,
    prototype_relevance,
    scale_distances,
)
from explainkit.prototypes.perturb import make_perturbations
from explainkit.prototypes.regions import region_analysis, region_masks, region_scores
from explainkit.prototypes.registry import detect_adapter_kind
from explainkit.prototypes.statistics import global_scores
from explainkit.report import schema_path
from explainkit.report.html import _env

PREP = Preprocessing(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
RED, GREY = (255, 0, 0), (128, 128, 128)
CLASSES = ("background", "grey_square", "red_square")


def _sig(v: float) -> float:
    return 1 / (1 + np.exp(-v))


def _log_sim(d):
    return np.log((d + 1) / (d + 1e-4))


def constructed() -> ScaleProtoSeg:
    """Three scales reading R, G, B; prototype p has scale p // 3 and class p % 3 (values set per test)."""
    torch.manual_seed(0)
    m = ScaleProtoSeg(nn.Identity(), 3, num_classes=3, prototypes_per_class_scale=1, prototype_dim=1,
                      dilations=(1, 2, 3), num_groups=2)
    with torch.no_grad():
        for s, conv in enumerate(m.scale_head.branches):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, s, 1, 1] = 1.0
    return m.eval()


def world(n: int = 6) -> tuple[list[Image.Image], np.ndarray]:
    """Black images with a red square (class 2) in the even ones and a grey square (class 1) in all."""
    images, labels = [], []
    for i in range(n):
        img = np.zeros((32, 32, 3), np.uint8)
        lab = np.zeros((32, 32), np.uint8)
        img[4:12, 18:26], lab[4:12, 18:26] = GREY, 1
        if i % 2 == 0:
            img[16:28, 4 + i : 16 + i], lab[16:28, 4 + i : 16 + i] = RED, 2
        images.append(Image.fromarray(img))
        labels.append(lab)
    return images, np.stack(labels)


def test_simplex_projection_matches_closed_forms_and_the_kkt_conditions():
    v = torch.tensor([[0.5, 0.2, 0.1], [2.0, 0.0, 0.0], [1.0, 1.0, -5.0], [0.25, 0.25, 0.5]])
    third = 0.2 / 3  # the missing mass, shared equally
    expected = torch.tensor([[0.5 + third, 0.2 + third, 0.1 + third], [1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]])
    assert torch.allclose(project_simplex(v), expected, atol=1e-6)
    torch.manual_seed(0)
    r = torch.randn(50, 9)
    w = project_simplex(r)
    assert torch.allclose(w.sum(1), torch.ones(50), atol=1e-5) and (w >= 0).all() and (w == 0).any()
    for i in range(50):  # KKT: w = v - θ on the support (one θ per row), v <= θ off it
        t = (r[i] - w[i])[w[i] > 0]
        assert torch.allclose(t, t[0].expand_as(t), atol=1e-5) and (r[i][w[i] == 0] <= t[0] + 1e-6).all()


def test_scale_distances_compare_each_prototype_with_its_own_scale_only():
    torch.manual_seed(1)
    z = torch.randn(2, 3 * 4, 5, 6)
    protos = torch.randn(7, 4)
    scale_of = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    d = scale_distances(z, protos, scale_of, 3)
    for p in range(7):
        s = int(scale_of[p])
        direct = ((z[:, 4 * s : 4 * s + 4] - protos[p][None, :, None, None]) ** 2).sum(1)
        assert torch.allclose(d[:, p], direct, atol=1e-4)
    with pytest.raises(ConfigError, match="split into"):
        scale_distances(torch.zeros(1, 10, 2, 2), protos, scale_of, 3)


def test_the_model_logits_groups_and_losses_follow_the_equations():
    m = constructed()
    x = torch.randn(2, 3, 8, 8)
    sims = m.similarity_maps(x)
    assert sims.shape == (2, 9, 8, 8)
    dist = m.distances(m.latent(x))
    assert torch.equal(sims, torch.log((dist + 1) / (dist + 1e-4)))
    for p in range(9):  # closed form of the constructed model
        d = (torch.sigmoid(x[:, p // 3]) - m.prototype_vectors[p, 0, 0, 0]) ** 2
        assert torch.allclose(dist[:, p], d, atol=1e-6)
    members = m.class_members()
    assert [mm.tolist() for mm in members] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    groups = m.groups(sims)
    for k in range(3):
        w = m.group_projection[k].weight
        for g in range(2):
            expected = torch.exp((w[g][None, :, None, None] * sims[:, members[k]]).sum(1))
            assert torch.allclose(groups[:, 2 * k + g], expected, rtol=1e-5)
    v = m.last_layer_group.weight
    assert torch.equal(v, torch.tensor([[1, 1, -0.5, -0.5, -0.5, -0.5], [-0.5, -0.5, 1, 1, -0.5, -0.5],
                                        [-0.5, -0.5, -0.5, -0.5, 1, 1]]))
    assert torch.allclose(m.latent_logits(sims), torch.einsum("cg,bghw->bchw", v, groups), rtol=1e-5)
    assert m(x).shape == (2, 3, 8, 8)
    # relevance: an exact additive split of the predicted logit
    predicted, rel = prototype_relevance(sims, [p.weight for p in m.group_projection], members, v)
    logits = m.latent_logits(sims)
    assert torch.equal(predicted, logits.argmax(1))
    assert torch.allclose(rel.sum(1), logits.gather(1, predicted[:, None])[:, 0], rtol=1e-4, atol=1e-4)
    # the group entropy: normalised entropy of each simplex row
    rows = torch.cat([p.weight for p in m.group_projection])
    ent = (-(rows * torch.log(rows + 1e-5)).sum(1) / np.log(3)).mean()
    assert group_entropy([p.weight for p in m.group_projection]).item() == pytest.approx(ent.item(), rel=1e-6)
    # KLD: two prototypes with proportional distance maps over a region have KL 0, so exp(-0) = 1
    d = torch.rand(1, 9, 4, 4) + 0.1
    d[:, 3] = d[:, 0] + 2.0  # log-softmax is shift invariant: same distribution as prototype 0
    labels = torch.full((1, 4, 4), 255)
    labels[0, :2] = 0
    identity = torch.zeros(9, 3)
    identity[[0, 3], 0] = 1
    identity[[1, 2, 4, 5, 6, 7, 8], 1] = 1
    value = kld_loss(d, labels, identity, torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2]), 3)
    assert value.item() == pytest.approx(1.0, abs=1e-6)
    loss = ScaleProtoSegLoss()
    y = torch.randint(0, 3, (2, 8, 8))
    assert torch.isfinite(loss.group_stage(m, sims, y)) and torch.isfinite(
        loss.prototype_stage(m, m.last_layer_group.__class__(9, 3, bias=False), x, y))


def test_the_adapter_reads_closed_form_maps_with_classes_and_scale_groups():
    m = constructed()
    with torch.no_grad():
        m.prototype_vectors.fill_(float(_sig(1.0)))  # every prototype matches a channel at 255
    assert detect_adapter_kind(m) == "scaleprotoseg" and detect_adapter_kind(scaleprotoseg()) == "scaleprotoseg"
    assert SEGMENTATION_PROTOTYPE_MODELS == ("scaleprotoseg",)
    a = ScaleProtoSegPrototypes(m, (32, 32))
    assert a.layer == "scale_head" and a.num_prototypes == 9 and a.nonnegative
    assert [a.prototype_class(p) for p in range(9)] == [0, 1, 2] * 3 and [a.scale(p) for p in range(9)] == [0] * 3 + [
        1] * 3 + [2] * 3
    desc = a.describe()
    assert [g["prototypes"] for g in desc["scales"]] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [g["dilation"] for g in desc["scales"]] == [1, 2, 3]
    images, _ = world(2)
    x = PREP(images)
    maps = a.similarity_maps(m, x).numpy()
    unit = np.asarray(images[0], np.float64) / 127.5 - 1  # the preprocessing: [0, 255] → [-1, 1]
    for p in range(9):
        d = (_sig(unit[..., p // 3]) - _sig(1.0)) ** 2
        assert np.allclose(maps[0, p], _log_sim(d), atol=2e-3)
    # prototype 0 reads R: it peaks on the first pixel of the red square (rows 16:28, columns 4:16)
    assert np.unravel_index(maps[0, 0].argmax(), (32, 32)) == (16, 4)
    box = a.patch_box(m, x[:1], 0)
    assert 14 <= box[0] and box[1] <= 30 and box[2] >= 2 and box[3] <= 18  # around the red square (16:28, 4:16)


def test_region_masks_and_scores_read_each_prototype_on_its_class_region():
    labels = np.zeros((2, 8, 8), np.int64)
    labels[0, :4, :4] = 1
    labels[0, 4:, 4:] = 2
    labels[1, :, :6] = 1
    masks = region_masks(labels, [1, 2, None], (4, 4))
    assert masks[0, 0].sum() == 4 and masks[0, 1].sum() == 4 and masks[0, 2].all()
    assert masks[1, 1].sum() == 0 and masks[1, 0, :, :3].all() and not masks[1, 0, :, 3].any()
    torch.manual_seed(0)
    maps = torch.rand(2 * 3, 3, 4, 4)  # 2 images, 2 perturbed copies
    scores = region_scores(maps, masks, 2)
    assert scores.valid.tolist() == [[True, True, True], [True, False, True]]
    for b, p in ((0, 0), (0, 1), (1, 0)):
        inside = maps[b, p].masked_fill(~masks[b, p], -1).flatten()
        loc = int(inside.argmax())
        assert scores.location[b, p] == loc and scores.similarity[b, p] == pytest.approx(float(inside[loc]))
        for c in range(2):
            assert scores.delta[b, p, c] == pytest.approx(float(inside[loc] - maps[2 + 2 * c + b, p].flatten()[loc]))
    assert scores.similarity[1, 1] == 0 and (scores.delta[1, 1] == 0).all()
    # absent regions weigh nothing: the global score is the weighted mean over the images that have them
    acc = SplitAccumulator.empty(3, 2, 0, 4).add(scores, np.array([0, 1]), "similarity", np.zeros((0, 2)),
                                                 np.zeros(2))
    g = global_scores(acc)
    assert g.score[1] == pytest.approx(scores.delta[0, 1])
    w = scores.similarity[:, 0]
    assert g.score[0] == pytest.approx((w[:, None] * scores.delta[:, 0]).sum(0) / w.sum())
    assert acc.best_index[1] == 0


def test_region_analysis_reports_closed_form_hue_importance_scale_groups_and_drivers():
    m = constructed()
    with torch.no_grad():  # class 2 (red) prototypes: R = 255 at scale 0, G = 0 at scale 1, B = 0 at scale 2
        m.prototype_vectors[[2, 5, 8], 0, 0, 0] = torch.tensor([_sig(1.0), _sig(-1.0), _sig(-1.0)]).float()
    a = ScaleProtoSegPrototypes(m, (32, 32))
    images, labels = world(6)
    out = region_analysis(a, m, images, labels, preprocessing=PREP, class_names=CLASSES, n_resamples=20,
                          train_fraction=0.5, seed=3)
    recs = {r["prototype"]: r for r in out["prototypes"]}
    with_red = sum(r["images_with_region"]["train"] + r["images_with_region"]["test"] for r in (recs[2],))
    assert with_red == 3 and sum(recs[1]["images_with_region"].values()) == 6  # only even images have red
    # hue +35.2° turns (255, 0, 0) into (255, g, 0): R and B unchanged, G rises; read at the red region
    hue = make_perturbations(["hue"])[0]
    g_new = np.asarray(hue(images[0]), np.float64)[20, 8, 1] / 127.5 - 1
    expected_g = _log_sim(0.0) - _log_sim((_sig(g_new) - _sig(-1.0)) ** 2)
    split = out["primary_split"]
    assert recs[5]["global_" + split]["hue"]["value"] == pytest.approx(expected_g, rel=1e-3)
    assert abs(recs[2]["global_" + split]["hue"]["value"]) < 1e-6  # R does not move
    assert abs(recs[8]["global_" + split]["hue"]["value"]) < 1e-6  # B does not move
    assert recs[5]["scale"] == 1 and recs[5]["class_name"] == "red_square"
    box = recs[2]["top_patch"]["box"]
    assert box[0] >= 14 and box[1] <= 30  # within the red square's rows (16:28)
    me = out["model_explanation"]
    assert me["kind"] == "scaleprotoseg" and [len(g["prototypes"]) for g in me["scale_groups"]] == [3, 3, 3]
    assert [p["class_name"] for p in me["scale_groups"][1]["prototypes"]] == list(CLASSES)
    assert me["scale_groups"][1]["prototypes"][2]["verdict"] == recs[5]["verdict"]
    assert len(me["groups"]) == 6 and all(abs(sum(x["weight"] for x in g["members"]) - 1) < 1e-5
                                          for g in me["groups"])
    # per predicted class: scale shares sum to 1 and driving fractions too
    x = PREP(images)
    with torch.no_grad():
        predicted, rel = a.relevance(a.similarity_maps(m, x))
    for pc in me["per_class"]:
        c = pc["class"]
        assert pc["pixels"] == int((predicted == c).sum())
        shares = [s["share"]["value"] for s in pc["scales"]]
        direct = [float(rel[:, 3 * s : 3 * s + 3].sum(1)[predicted == c].sum()) for s in range(3)]
        assert shares == pytest.approx([d / sum(direct) for d in direct], rel=1e-4, abs=1e-6)
        assert sum(s["driving_pixels"]["value"] for s in pc["scales"]) == pytest.approx(1.0)
    # per pixel: the predicted class, the prototype and the scale group with the largest share
    assert [ex["image"] for ex in me["examples"]] == [0, 1]
    ex = me["examples"][0]
    assert np.array_equal(np.array(ex["predicted"]), predicted[0].numpy())
    assert np.array_equal(np.array(ex["top_prototype"]), rel[0].argmax(0).numpy())
    by_scale = rel[0].reshape(3, 3, 32, 32).sum(1)  # prototypes are scale-major
    assert np.array_equal(np.array(ex["driving_scale"]), by_scale.argmax(0).numpy())
    # the explanation is a prototype_model_explanation of the report schema and renders in the section's block
    schema = json.loads(open(schema_path()).read())
    jsonschema.validate(json.loads(json.dumps(me)), {**schema["$defs"]["prototype_model_explanation"],
                                                     "$defs": schema["$defs"]})
    html = _env().get_template("sections/prototype_models.html.j2").render(d={"model_explanation": me}, assets={})
    assert "scale group" in html and "red_square" in html and "group 5 of red_square" in html
    with pytest.raises(ConfigError, match="label map"):
        region_analysis(a, m, images, labels[:, :16], preprocessing=PREP)


def test_region_analysis_reads_a_probe_set_with_label_maps(tmp_path):
    m = constructed()
    images, labels = world(4)
    for i, (im, lab) in enumerate(zip(images, labels)):
        (tmp_path / "labels").mkdir(exist_ok=True)
        im.save(tmp_path / f"img_{i}.png")
        Image.fromarray(lab).save(tmp_path / "labels" / f"img_{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    probe = ProbeSet.from_folder(tmp_path)
    handle = explainkit.wrap(m, input_size=32, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    a = ScaleProtoSegPrototypes(handle, (32, 32))
    kw = {"characteristics": ["hue"], "n_resamples": 10}
    from_probe = region_analysis(a, handle, probe, **kw)
    from_arrays = region_analysis(a, m, images, labels, preprocessing=PREP, class_names=CLASSES, **kw)
    assert from_probe["prototypes"] == from_arrays["prototypes"]
    one_by_one = region_analysis(a, handle, probe, batch_size=1, **kw)  # streamed sums: batching changes nothing
    for x, y in zip(one_by_one["prototypes"], from_probe["prototypes"]):
        assert x["verdict"] == y["verdict"] and x["images_with_region"] == y["images_with_region"]
        assert x["global_train"]["hue"]["value"] == pytest.approx(y["global_train"]["hue"]["value"], rel=1e-6)
        g, h = x["global_test"]["hue"], y["global_test"]["hue"]
        assert (g["ci_low"], g["ci_high"]) == pytest.approx((h["ci_low"], h["ci_high"]), rel=1e-6, nan_ok=True)
    assert from_probe["prototypes"][2]["class_name"] == "red_square"
    with pytest.raises(ConfigError, match="label maps"):
        region_analysis(a, handle, ProbeSet.from_folder(_unlabelled(tmp_path / "plain", images)), **kw)


def _unlabelled(root, images):
    root.mkdir()
    for i, im in enumerate(images):
        im.save(root / f"img_{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_trained_on_the_planted_world_prototypes_peak_on_their_class_and_red_prototypes_rely_on_hue(seed):
    from explainkit.datasets.planted_segmentation import SEGMENTATION_CLASSES, SegmentationSpec, planted_segmentation
    from explainkit.datasets.prototype_models import train_scaleprotoseg
    from explainkit.models import SYNTHETIC_PREPROCESSING

    torch.set_num_threads(1)
    images, labels = planted_segmentation(SegmentationSpec(n_images=192, seed=seed))
    model = train_scaleprotoseg(images, labels, epochs=10, group_epochs=6, seed=seed).model
    test_images, test_labels = planted_segmentation(SegmentationSpec(n_images=48, seed=seed + 100))
    prep = Preprocessing(**SYNTHETIC_PREPROCESSING)
    x = prep(test_images)
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    iou = [((predicted == k) & (test_labels == k)).sum() / ((predicted == k) | (test_labels == k)).sum()
           for k in range(3)]
    assert min(iou) > 0.6, iou
    adapter = ScaleProtoSegPrototypes(model, (64, 64))
    classes = [adapter.prototype_class(p) for p in range(adapter.num_prototypes)]
    # similarity maps peak on the planted concept: the unrestricted argmax of an object prototype lies in its class
    with torch.no_grad():
        maps = adapter.similarity_maps(model, x)
    masks = region_masks(test_labels, classes, tuple(maps.shape[-2:]))
    hit = masks.flatten(2).gather(2, maps.flatten(2).argmax(2)[..., None])[..., 0].float().mean(0)  # (P,)
    chance = masks.float().mean(dim=(0, 2, 3))  # the region's share of the latent cells
    objects = [p for p in range(adapter.num_prototypes) if classes[p] != 0]
    assert float(hit[objects].mean()) > max(0.6, 5 * float(chance[objects].mean())), (hit, chance)
    assert any((proj.weight == 0).any() for proj in model.group_projection)  # the simplex projection sparsifies
    out = region_analysis(adapter, model, test_images, test_labels, preprocessing=prep,
                          class_names=SEGMENTATION_CLASSES, n_resamples=100)
    split = out["primary_split"]

    def hue(records):
        return float(np.mean([r[f"global_{split}"]["hue"]["value"] for r in records]))

    by_class = {k: [r for r in out["prototypes"] if r["class"] == k] for k in range(3)}
    red = by_class[2]
    firsts = [max(r[f"global_{split}"], key=lambda c: r[f"global_{split}"][c]["value"]) for r in red]
    assert firsts.count("hue") >= 0.75 * len(red), firsts
    assert hue(red) > 1.5 * max(hue(by_class[0]), hue(by_class[1]))
    assert sum(r["tests"]["hue"]["significant"] for r in red) >= 0.75 * len(red)


class _ReferenceNamed(nn.Module):
    """The layer names of the reference's PPNetMultiScale: add_on_layers, scale_num_prototypes, a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2 * 4, 1)  # two scales of four channels
        self.add_on_layers = nn.Sequential(nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(4, 4, 1, 1))
        identity = torch.zeros(4, 2)
        identity[[0, 2], 0] = 1
        identity[[1, 3], 1] = 1
        self.prototype_class_identity = identity  # a plain tensor attribute in the reference
        self.scale_num_prototypes = {0: (0, 2), 1: (2, 4)}
        self.group_projection = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(2))
        self.last_layer_group = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        z = self.add_on_layers(self.features(x))
        d = scale_distances(z, self.prototype_vectors, torch.tensor([0, 0, 1, 1]), 2)
        return z.permute(0, 2, 3, 1)[..., :2], d


def test_the_adapter_reads_a_model_with_the_reference_names():
    torch.manual_seed(0)
    m = _ReferenceNamed().eval()
    assert detect_adapter_kind(m) == "scaleprotoseg"
    a = ScaleProtoSegPrototypes(m, (8, 8))
    assert a.layer == "add_on_layers" and [a.scale(p) for p in range(4)] == [0, 0, 1, 1]
    assert [a.prototype_class(p) for p in range(4)] == [0, 1, 0, 1]
    x = torch.randn(2, 3, 8, 8)
    d = m(x)[1]
    assert torch.allclose(a.similarity_maps(m, x), torch.log((d + 1) / (d + 1e-4)), atol=1e-5)


def test_the_prototype_regions_analyzer_runs_from_the_command_line_as_the_python_api(tmp_path, capsys,
                                                                                     validated_section):
    from explainkit.cli.main import main

    images, labels = world(6)
    (tmp_path / "probe" / "labels").mkdir(parents=True)
    for i, (im, lab) in enumerate(zip(images, labels)):
        im.save(tmp_path / "probe" / f"img_{i}.png")
        Image.fromarray(lab).save(tmp_path / "probe" / "labels" / f"img_{i}.png")
    (tmp_path / "probe" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)
    path = explainkit.save_model(scaleprotoseg(num_classes=3), tmp_path / "m.safetensors",
                                 arch="explainkit:scaleprotoseg(num_classes=3)", class_names=list(CLASSES),
                                 preprocessing={"input_size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    params = "prototype_regions:characteristics=hue,n_resamples=50,prototypes=0|4,examples=1"
    code = main(["analyze", str(path), "--data", str(tmp_path / "probe"), "--analyzer", params,
                 "--out", str(tmp_path / "out"), "--seed", "3"])
    assert code == 0, capsys.readouterr()
    section = validated_section(tmp_path / "out", "prototype_regions")
    handle = explainkit.load_model(path)
    probe = ProbeSet.from_folder(tmp_path / "probe")
    direct = region_analysis(ScaleProtoSegPrototypes(handle, (32, 32)), handle, probe, characteristics=["hue"],
                             n_resamples=50, seed=3, prototypes=[0, 4], examples=1)
    assert json.loads(json.dumps(direct["prototypes"])) == section["data"]["prototypes"]
    assert json.loads(json.dumps(direct["model_explanation"])) == section["data"]["model_explanation"]
    assert section["data"]["model_explanation"]["scale_groups"][0]["prototypes"][4]["class_name"] == "red_square"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "scale group" in html and "red_square" in html
