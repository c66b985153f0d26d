"""Targets that depend on the image, through every method (issue 13, items 2 and 3).

A target is called as ``target(output, rows)`` with the source image of every row, so per-image
masks, boxes and classes stay with their image in the passes methods add (Score-CAM,
Ablation-CAM, Smooth Grad-CAM++, captum) at any ``batch_size``. Built-in targets are compared with
pytorch-grad-cam 1.5.7's (run image by image there, as its targets are per image).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

import explainkit
from explainkit.adapters import (
    BinaryTarget,
    BoxScoreTarget,
    ClassLogit,
    MultiLabelTarget,
    SegmentationTarget,
    resolve_layer,
)
from explainkit.cam import compute, list_methods
from explainkit.cam.engine import CamRun
from explainkit.cam.metrics import average_drop
from explainkit.errors import ConfigError
from explainkit.models import TinyCNN

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    BinaryClassifierOutputTarget,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)

TOL = 1e-5
H, W = 24, 32


class TinySeg(nn.Module):
    """Segmentation model as torchvision builds them: an OrderedDict backbone and a dict output."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        body = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
                                         conv2=nn.Conv2d(8, 12, 3, padding=1), relu2=nn.ReLU()))
        self.backbone = IntermediateLayerGetter(body, {"relu1": "low", "relu2": "out"})
        self.classifier = nn.Conv2d(12, classes, 1)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        out = self.classifier(self.backbone(x)["out"])
        return OrderedDict(out=F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False))


class Logits(nn.Module):
    """The wrapper pytorch-grad-cam's segmentation tutorial puts around a dict-output model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@pytest.fixture(scope="module")
def seg():
    return TinySeg().eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(3, 3, H, W)


@pytest.fixture(scope="module")
def masks():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, H, W, generator=g) > 0.6


def _peer_per_image(model, layer, cls, x, targets, **call):
    out = []
    for i in range(x.shape[0]):
        with cls(model, [resolve_layer(model, layer)[1]]) as c:
            c.batch_size = 7
            out.append(c(x[i:i + 1], [targets[i]], **call))
    return np.concatenate(out)


@pytest.mark.parametrize(("method", "peer", "params"), [
    ("gradcam", "GradCAM", {}),
    ("scorecam", "ScoreCAM", {"variant": "channel_softmax"}),
    ("ablationcam", "AblationCAM", {}),
])
def test_per_image_segmentation_masks_match_the_peer_at_any_batch_size(method, peer, params, seg, x, masks):
    target = SegmentationTarget(1, masks)  # (B, H, W): one mask per image
    ref = _peer_per_image(Logits(seg), "model.backbone.relu2", getattr(pgc, peer), x,
                          [SemanticSegmentationTarget(1, m.numpy().astype(np.float32)) for m in masks])
    for batch_size in (2, 3, 5):  # chunks that split, equal and exceed the batch
        got = compute(seg, x, methods=[method], layer="backbone.relu2", targets=target, params={method: params},
                      batch_size=batch_size).maps[method]
        assert np.abs(got.numpy() - ref).max() <= TOL, (method, batch_size)


def test_shared_mask_and_mapping_backbone_layer(seg, x, masks):
    shared = SegmentationTarget(2, masks[0].numpy())  # (H, W) numpy, shared
    ref = _peer_per_image(Logits(seg), "model.backbone.relu2", pgc.GradCAM, x,
                          [SemanticSegmentationTarget(2, masks[0].numpy().astype(np.float32))] * 3)
    assert np.abs(explainkit.cam(seg, x, layer="backbone.relu2", targets=shared).numpy() - ref).max() <= TOL
    # the OrderedDict backbone itself: one map per entry (the gradient with respect to each returned
    # tensor), averaged like several layers. "out" is relu2's output; "low" is returned but unused.
    res = compute(seg, x, methods=["gradcam"], layer="backbone", targets=shared)
    assert set(res.layouts) == {"backbone[low]", "backbone[out]"}
    relu2 = compute(seg, x, methods=["gradcam"], layer="backbone.relu2", targets=shared)
    torch.testing.assert_close(res.raw["gradcam"]["backbone[out]"], relu2.raw["gradcam"]["backbone.relu2"])
    assert not res.raw["gradcam"]["backbone[low]"].any()
    torch.testing.assert_close(res.maps["gradcam"], relu2.maps["gradcam"])


@pytest.mark.slow
def test_torchvision_segmentation_model():
    """LR-ASPP as torchvision builds it: dict output, IntermediateLayerGetter backbone, non-square input."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=4).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        regions = model(x)["out"].argmax(1) == 1
    got = compute(model, x, methods=["gradcam"], layer="backbone.16", targets=SegmentationTarget(1, regions))
    ref = _peer_per_image(Logits(model), "model.backbone.16", pgc.GradCAM, x,
                          [SemanticSegmentationTarget(1, r.numpy().astype(np.float32)) for r in regions])
    assert np.abs(got.maps["gradcam"].numpy() - ref).max() <= TOL
    both = compute(model, x, methods=["gradcam"], layer="backbone", targets=SegmentationTarget(1, regions))
    assert set(both.layouts) == {"backbone[low]", "backbone[high]"}
    torch.testing.assert_close(both.raw["gradcam"]["backbone[high]"], got.raw["gradcam"]["backbone.16"])


@pytest.mark.parametrize("method", ["smoothgradcampp", "integrated_gradients", "occlusion", "ablationcam"])
def test_per_image_targets_in_added_passes_equal_one_image_at_a_time(method, seg, x, masks):
    params = {"smoothgradcampp": {"n_samples": 3}, "occlusion": {"window": 8}}.get(method, {})
    layer = "backbone.relu2"
    target = SegmentationTarget([1, 2, 0], masks)  # per-image category too
    batch = explainkit.cam(seg, x, method=method, layer=layer, targets=target, batch_size=2, **params)
    singles = torch.cat([explainkit.cam(seg, x[i:i + 1], method=method, layer=layer,
                                        targets=SegmentationTarget([[1, 2, 0][i]], masks[i:i + 1]), **params)
                         for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=2e-5, rtol=0)


def test_target_functions_get_the_source_image_of_every_row(seg, x, masks):
    m = masks.float()

    def with_rows(out, rows):
        return (out["out"][:, 1] * m[rows]).flatten(1).sum(1)

    ref = explainkit.cam(seg, x, method="scorecam", layer="backbone.relu2", targets=SegmentationTarget(1, masks))
    got = explainkit.cam(seg, x, method="scorecam", layer="backbone.relu2", targets=with_rows, batch_size=4)
    torch.testing.assert_close(got, ref)
    # a one-argument function that depends on the image cannot be scored on copies
    with pytest.raises(ConfigError, match=r"fn\(output, rows\)"):
        explainkit.cam(seg, x, method="scorecam", layer="backbone.relu2", batch_size=4,
                       targets=lambda out: (out["out"][:, 1] * m).flatten(1).sum(1))
    # ...but an image-independent one can
    explainkit.cam(seg, x, method="scorecam", layer="backbone.relu2", batch_size=4,
                   targets=lambda out: out["out"][:, 1].flatten(1).sum(1))


def test_per_image_callables_in_the_peers_convention(seg, x, masks):
    model = Logits(seg)
    peer_targets = [SemanticSegmentationTarget(1, mk.numpy().astype(np.float32)) for mk in masks]
    ours = explainkit.cam(model, x, method="scorecam", layer="model.backbone.relu2", targets=peer_targets,
                          variant="channel_softmax", batch_size=4)
    ref = _peer_per_image(model, "model.backbone.relu2", pgc.ScoreCAM, x, peer_targets)
    assert np.abs(ours.numpy() - ref).max() <= TOL
    with pytest.raises(ConfigError, match="2 targets for 3 images"):
        explainkit.cam(model, x, layer="model.backbone.relu2", targets=peer_targets[:2])


def test_mask_shape_errors(seg, x, masks):
    with pytest.raises(ConfigError, match="does not fit the model output"):
        explainkit.cam(seg, x, layer="backbone.relu2", targets=SegmentationTarget(1, masks[:, :8]))
    with pytest.raises(ConfigError, match="2 masks for 3 images"):
        explainkit.cam(seg, x, layer="backbone.relu2", targets=SegmentationTarget(1, masks[:2]))


def test_aug_smooth_mirrors_spatial_targets(seg, x, masks):
    target = SegmentationTarget(1, masks)
    got = explainkit.cam(seg, x, layer="backbone.relu2", targets=target, aug_smooth=True)
    expected = torch.zeros_like(got)
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xi = (x.flip(-1) if flip else x) * factor
            ti = SegmentationTarget(1, masks.flip(-1) if flip else masks)
            mi = explainkit.cam(seg, xi, layer="backbone.relu2", targets=ti)
            expected += (mi.flip(-1) if flip else mi) / 6
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def detector():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0, box_detections_per_img=4,
        min_size=96, max_size=128, rpn_pre_nms_top_n_test=30, rpn_post_nms_top_n_test=10).eval()


def test_detection_box_target_matches_the_peer(detector):
    torch.manual_seed(3)
    x = torch.rand(2, 3, 72, 96)
    with torch.no_grad():
        dets = detector(x)
    boxes = [d["boxes"][:2].numpy() for d in dets]
    labels = [d["labels"][:2].tolist() for d in dets]
    layer = "backbone.body.16"
    res = compute(detector, x, methods=["gradcam"], layer=layer, targets=BoxScoreTarget(labels, boxes))
    # a valid per-image target is not mistaken for a batch of as many images as boxes
    assert res.scores.shape == (2,) and bool((res.scores > 1).all())
    ref = _peer_per_image(detector, layer, pgc.GradCAM, x,
                          [FasterRCNNBoxScoreTarget(labels[i], boxes[i]) for i in range(2)])
    assert np.abs(res.maps["gradcam"].numpy() - ref).max() <= TOL
    # the FPN backbone's OrderedDict output is accepted: one map per level
    fpn = compute(detector, x, methods=["gradcam"], layer="backbone", targets=BoxScoreTarget(labels, boxes))
    assert set(fpn.layouts) == {"backbone[0]", "backbone[1]", "backbone[pool]"}
    assert fpn.maps["gradcam"].shape == (2, 72, 96)
    with pytest.raises(ConfigError, match="list of dicts"):
        compute(TinyCNN(3).eval(), x, methods=["gradcam"], targets=BoxScoreTarget([1], [[0, 0, 5, 5]]))


class MultiHead(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyCNN(outputs)

    def forward(self, x):  # a mix of positive and negative labels that differs between images
        return self.net(x) * 100 - 3 + 2 * x[:, 0, 0, :4]


def test_multilabel_one_label_and_every_positive_label(x):
    model = MultiHead(4).eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(x))
    layer = "net.features.3"
    one = compute(model, x, methods=["gradcam"], layer=layer, targets=MultiLabelTarget(2))
    ref = _peer_per_image(model, layer, pgc.GradCAM, x, [ClassifierOutputTarget(2)] * 3)
    assert np.abs(one.maps["gradcam"].numpy() - ref).max() <= TOL
    every = compute(model, x, methods=["gradcam", "scorecam"], layer=layer, targets=MultiLabelTarget(threshold=0.5))
    images, labels = torch.nonzero(probs > 0.5, as_tuple=True)
    assert 3 < len(images) < 12  # several labels per image, not all
    assert torch.equal(every.images, images) and torch.equal(every.classes, labels)
    for p, (i, lab) in enumerate(zip(images.tolist(), labels.tolist())):
        for m in ("gradcam", "scorecam"):
            single = explainkit.cam(model, x[i:i + 1], method=m, layer=layer, targets=MultiLabelTarget(lab))
            torch.testing.assert_close(every.maps[m][p:p + 1], single, atol=TOL, rtol=0)
    # metrics read a sigmoid probability, not a softmax over labels
    run = CamRun.create(model, x, layer=None, targets=MultiLabelTarget([0, 1, 3]), needs_layers=False)
    run.record(gradients=False)
    clean = average_drop(run, torch.ones(3, H, W))["clean"]
    np.testing.assert_allclose(clean, probs[[0, 1, 2], [0, 1, 3]].double().numpy(), rtol=1e-6)
    nothing = compute(model, x, methods=["gradcam"], layer=layer, targets=MultiLabelTarget(threshold=0.999))
    assert nothing.maps["gradcam"].shape == (0, H, W)


def test_binary_output_target(x):
    model = TinyCNN(1).eval()
    layer = "features.3"
    with torch.no_grad():
        logit = model(x)[:, 0]
    for side in (0, 1):
        ours = explainkit.cam(model, x, layer=layer, targets=BinaryTarget(side))
        ref = _peer_per_image(model, layer, pgc.GradCAM, x, [BinaryClassifierOutputTarget(side)] * 3)
        assert np.abs(ours.numpy() - ref).max() <= TOL
    # the default target of a single-logit model explains the predicted side
    res = compute(model, x, methods=["gradcam"], layer=layer)
    assert torch.equal(res.classes, (logit > 0).long())
    torch.testing.assert_close(res.scores, logit.abs())
    mixed = explainkit.cam(model, x, layer=layer, targets=BinaryTarget((logit > 0).long()))
    torch.testing.assert_close(res.maps["gradcam"], mixed)


#: Methods whose noise is drawn for the whole batch (captum), so a batch is not its images one by one.
BATCH_NOISE = ("smoothgrad", "gradient_shap")


@pytest.mark.parametrize("method", [m for m in list_methods() if m not in ("finercam",)])
def test_every_method_takes_a_region_target(method, seg, x, masks):
    """Conformance over the registry: every method honours a per-image region target in chunks of 2."""
    params = {"smoothgradcampp": {"n_samples": 2}, "integrated_gradients": {"n_steps": 2},
              "smoothgrad": {"n_samples": 2}, "gradient_shap": {"n_samples": 2}}.get(method, {})
    layer, cats = "backbone.relu2", [1, 2, 0]
    if method in BATCH_NOISE:  # image 1's empty mask makes its score constant: its map alone must be 0
        empty = masks.clone()
        empty[1] = False
        maps = explainkit.cam(seg, x, method=method, layer=layer, targets=SegmentationTarget(cats, empty),
                              batch_size=2, **params)
        assert not maps[1].any() and maps[[0, 2]].flatten(1).amax(1).gt(0.99).all()
        return
    batch = explainkit.cam(seg, x, method=method, layer=layer, targets=SegmentationTarget(cats, masks), batch_size=2,
                           **params)
    singles = torch.cat([explainkit.cam(seg, x[i:i + 1], method=method, layer=layer, batch_size=2,
                                        targets=SegmentationTarget(cats[i:i + 1], masks[i:i + 1]), **params)
                         for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=2e-5, rtol=0)


def test_finercam_needs_a_class_target(seg, x, masks):
    with pytest.raises(ConfigError, match="class target"):
        explainkit.cam(seg, x, method="finercam", layer="backbone.relu2", targets=SegmentationTarget(1, masks))
    assert ClassLogit([0, 1, 2]).bind(torch.zeros(3, 4)).class_indices().tolist() == [0, 1, 2]
