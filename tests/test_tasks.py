"""Segmentation and multi-label models through ``analyze``: metrics against closed forms, scikit-learn and
independent computations on worlds with known truth; task selection, skips, the gate and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score

import explainkit
from explainkit.analyzers import get_analyzer
from explainkit.analyzers.base import RunContext
from explainkit.backends.plan import RunPlan, map_shard
from explainkit.cli.main import main
from explainkit.data.probe import ProbeSet
from explainkit.datasets.multilabel import (
    LABELS,
    SEGMENTATION_CLASSES,
    MultiLabelWorldSpec,
    colour_detector,
    colour_segmenter,
    write_probe_folders,
)
from explainkit.errors import CapabilityError, ConfigError, DataError
from explainkit.hooks import hook_count
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import tiny_cnn, tiny_fcn
from explainkit.report import schema_path
from explainkit.stats.streaming import percentile_interval
from explainkit.tasks import (
    class_counts,
    confusion_matrix,
    iou,
    multilabel_scores,
    pixel_accuracy,
    segmentation_scores,
)

SIZE = 32
LIGHT = {"n_resamples": 200, "n_examples": 2}
PREP = {"input_size": SIZE, "mean": "0,0,0", "std": "1,1,1"}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return write_probe_folders(tmp_path_factory.mktemp("tasks"), MultiLabelWorldSpec(n=10, size=SIZE))


def _seg_handle(model=None, names=SEGMENTATION_CLASSES):
    return explainkit.wrap(model or colour_segmenter(), class_names=None if names is None else list(names), **PREP)


def _section(report, name):
    return next(s for s in report.to_dict()["sections"] if s["analyzer"] == name)


# ---------------------------------------------------------------- libraries: closed forms and peers


def test_confusion_and_iou_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    c = confusion_matrix(pred, truth, 3)
    np.testing.assert_array_equal(c, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])  # the ignored pixel is not counted
    np.testing.assert_allclose(iou(c), [1 / 2, 2 / 3, 1.0])
    assert pixel_accuracy(c) == pytest.approx(4 / 5)
    assert np.isnan(iou(np.zeros((2, 2)))).all()  # a class in neither truth nor prediction: undefined


def test_segmentation_bootstrap_equals_a_direct_resampling():
    rng = np.random.default_rng(3)
    conf = rng.integers(0, 20, size=(7, 3, 3))
    conf[:, 2, :] = 0  # class 2 never true: it counts only where predicted
    s = segmentation_scores(class_counts(conf), n_resamples=300, seed=11)
    np.testing.assert_allclose(s.iou, iou(conf.sum(0)))
    draws = np.random.default_rng(11).integers(0, 7, size=(300, 7))
    reps = np.array([iou(conf[d].sum(0)) for d in draws])
    lo, hi = percentile_interval(reps)
    np.testing.assert_allclose(s.iou_ci, np.stack([lo, hi]))
    lo, hi = percentile_interval(np.nanmean(reps, 1))
    np.testing.assert_allclose(s.miou_ci, (lo, hi))
    assert s.miou == pytest.approx(np.nanmean(iou(conf.sum(0))))


def test_multilabel_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 4)) < 0.4
    scores = np.round(truth * 0.8 + rng.normal(0, 0.6, truth.shape), 1)  # ties included
    truth[:, 3] = False  # a label without positives: AP undefined, left out of mAP
    s = multilabel_scores(scores, truth, scores > 0.5, n_resamples=200, seed=1)
    want = [average_precision_score(truth[:, j], scores[:, j]) for j in range(3)]
    np.testing.assert_allclose(s.ap[:3], want, rtol=1e-12)
    assert np.isnan(s.ap[3]) and s.map == pytest.approx(np.mean(want))
    np.testing.assert_allclose(s.f1[:3], f1_score(truth[:, :3], scores[:, :3] > 0.5, average=None), rtol=1e-12)
    assert np.isnan(s.f1[3]) or s.f1[3] == 0  # label 3: F1 only where predicted
    assert (s.ap_ci[0, :3] <= s.ap[:3]).all() and (s.ap[:3] <= s.ap_ci[1, :3]).all()


def test_label_maps_keep_indices_through_the_geometry():
    lab = np.arange(64, dtype=np.int64).reshape(8, 8) % 5
    prep = Preprocessing(input_size=(4, 4), mean=(0, 0, 0), std=(1, 1, 1), resize="stretch")
    np.testing.assert_array_equal(prep.resize_label_map(lab), lab[1::2, 1::2])  # nearest, never blended
    crop = Preprocessing(input_size=(8, 4), mean=(0, 0, 0), std=(1, 1, 1), resize="center_crop")
    np.testing.assert_array_equal(crop.resize_label_map(lab), lab[:, 2:6])


# ---------------------------------------------------------------- segmentation through analyze


def test_segmentation_world_identity_model(worlds):
    """The hand-set segmenter classifies every pixel of the world: IoU 1, and each class's CAM lies in its region."""
    report = explainkit.analyze(_seg_handle(), worlds["segmentation"], [("segmentation", LIGHT)], progress=False,
                                batch_size=4)
    d = _section(report, "segmentation")["data"]
    assert d["miou"]["value"] == 1.0 and d["miou"]["ci_low"] == 1.0 and d["miou"]["n"] == 10
    assert d["pixel_accuracy"]["value"] == 1.0
    assert {r["class"]: r["iou"]["value"] for r in d["per_class"]} == dict.fromkeys(SEGMENTATION_CLASSES, 1.0)
    rows = {r["label"]: r for r in d["cams"]["localisation"]}
    objects = [c for c in LABELS if c in rows]
    assert objects and all(rows[c]["energy"]["value"] == pytest.approx(1.0) for c in objects)
    assert d["cams"]["examples"] and report.to_dict()["provenance"]["data"]["task"] == "segmentation"
    assert report.to_dict()["provenance"]["config"]["task"] == "segmentation"
    html = report.to_html()
    assert "mIoU (4 classes, n=10 images)" in html and "CAMs against the truth" in html and "data:image/" in html


def _check_against_independent_count(handle, root, truth, **params):
    """Run ``segmentation`` and compare its numbers with a pixel count from the model's argmax and ``truth``."""
    report = explainkit.analyze(handle, root, [("segmentation", {**LIGHT, "n_examples": 0, **params})],
                                progress=False, batch_size=3)
    d = _section(report, "segmentation")["data"]
    conf = np.zeros((4, 4), np.int64)
    with torch.no_grad():
        for name, t in truth.items():
            pred = handle.module(handle.preprocess([Image.open(root / name).convert("RGB")]))["out"][0].argmax(0)
            np.add.at(conf, (t[t >= 0], pred.numpy()[t >= 0]), 1)
    assert d["confusion"]["matrix"] == conf.tolist()
    inter = np.diag(conf)
    want = inter / (conf.sum(0) + conf.sum(1) - inter)
    got = {r["class"]: r["iou"]["value"] for r in d["per_class"]}
    np.testing.assert_allclose([got[c] for c in SEGMENTATION_CLASSES], want, rtol=1e-12)
    assert d["pixel_accuracy"]["value"] == pytest.approx(inter.sum() / conf.sum())
    assert d["pixel_accuracy"]["pixels"] == conf.sum()
    return d


def _reordered_probe(src, root):
    """The world's segmentation folder with classes.txt in another order than the model's outputs, a few ignored
    pixels; returns image name → truth in model output indices (-1 ignored)."""
    order = ["blue", "background", "red", "green"]  # probe index k → SEGMENTATION_CLASSES index
    to_model = np.array([SEGMENTATION_CLASSES.index(c) for c in order])
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(order) + "\n")
    truth = {}
    for f in sorted(src.glob("*.png")):
        (root / f.name).write_bytes(f.read_bytes())
        model_lab = np.asarray(Image.open(src / "labels" / f.name)).astype(np.int64)
        probe_lab = np.argsort(to_model)[model_lab]
        probe_lab[0, :3] = 255
        Image.fromarray(probe_lab.astype(np.uint8)).save(root / "labels" / f.name)
        truth[f.name] = np.where(probe_lab == 255, -1, model_lab)
    return truth


def test_segmentation_metrics_equal_an_independent_computation(worlds, tmp_path):
    """A random FCN; classes.txt in another order than the model's outputs (matched by name)."""
    truth = _reordered_probe(worlds["segmentation"], tmp_path / "seg")
    torch.manual_seed(0)
    _check_against_independent_count(_seg_handle(tiny_fcn(num_classes=4, width=8).eval()), tmp_path / "seg", truth)


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "layer"), [("lraspp_mobilenet_v3_large", None),
                                                ("fcn_resnet50", "backbone.layer4"),
                                                ("deeplabv3_mobilenet_v3_large", None)])
def test_torchvision_segmentation_models(worlds, tmp_path, factory, layer):
    """Models as torchvision builds them (dict output, OrderedDict backbones), untrained: the metrics equal the
    independent count and the region CAMs run at the default or a backbone layer."""
    import torchvision

    truth = _reordered_probe(worlds["segmentation"], tmp_path / "seg")
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, factory)(weights=None, weights_backbone=None, num_classes=4)
    handle = explainkit.wrap(model.eval(), class_names=list(SEGMENTATION_CLASSES), **PREP)
    d = _check_against_independent_count(handle, tmp_path / "seg", truth, n_examples=1, layer=layer)
    assert d["cams"]["examples"] and (layer is None or d["cams"]["layer"] == layer)
    assert all(r["method"] == "gradcam" for r in d["cams"]["localisation"])


def test_batches_and_partitions_give_the_same_sections(worlds):
    """The conformance of tests/test_backends.py for the task analyzers: any partition merges to the serial result,
    and the section is valid against the report schema."""
    import jsonschema

    schema = json.loads(open(schema_path()).read())
    section_schema = {**schema["$defs"]["section"], "$defs": schema["$defs"]}
    for name, handle, folder in (
        ("segmentation", _seg_handle(), worlds["segmentation"]),
        ("multilabel", explainkit.wrap(colour_detector(), class_names=list(LABELS), **PREP), worlds["multilabel"]),
    ):
        probe = ProbeSet.from_folder(folder)
        a = get_analyzer(name, **LIGHT)
        ctx = RunContext(handle=handle, data=probe, device=torch.device("cpu"), batch_size=4, task=probe.task)
        a.validate(ctx)
        a.prepare(ctx)
        plan = RunPlan(handle, probe, [a], None, progress=False, task=probe.task)
        serial = map_shard(plan, ctx, range(len(probe)))[0][name]
        merged = None
        for part in ([0, 3, 6, 9], [1, 2], [4, 5, 7, 8]):
            s = map_shard(plan, ctx, part)[0][name]
            merged = s if merged is None else a.merge(merged, s)
        one, two = a.finalize(ctx, serial).to_dict(), a.finalize(ctx, merged).to_dict()
        assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
        jsonschema.validate(one, section_schema)
        assert hook_count(handle.module) == 0


# ---------------------------------------------------------------- multi-label through analyze


def test_multilabel_world(worlds):
    handle = explainkit.wrap(colour_detector(), class_names=list(LABELS), **PREP)
    report = explainkit.analyze(handle, worlds["multilabel"], [("multilabel", {**LIGHT, "n_examples": 3}), "dissect"],
                                progress=False, batch_size=4)
    assert _section(report, "dissect")["summary"]["units"] == 3  # activations and masks only: runs on any task
    d = _section(report, "multilabel")["data"]
    assert d["map"]["value"] == 1.0 and d["macro_f1"]["value"] == 1.0 and d["map"]["n"] == 10
    rows = d["cams"]["localisation"]
    assert rows and all(r["energy"]["value"] == pytest.approx(1.0) for r in rows)  # maps of label c on object c
    assert "mAP (3 labels, n=10 images)" in report.to_html()


def test_multilabel_ap_and_f1_equal_scikit_learn(worlds):
    torch.manual_seed(1)
    model = tiny_cnn(num_classes=3, widths=(4, 4, 4, 4)).eval()
    handle = explainkit.wrap(model, class_names=list(LABELS), **PREP)
    report = explainkit.analyze(handle, worlds["multilabel"], [("multilabel", {**LIGHT, "n_examples": 0,
                                                                               "threshold": 0.45})],
                                progress=False, batch_size=3)
    d = _section(report, "multilabel")["data"]
    probe = ProbeSet.from_folder(worlds["multilabel"])
    with torch.no_grad():
        logits = model(handle.preprocess([probe.load_image(i) for i in range(len(probe))])).numpy()
    for j, row in enumerate(d["per_label"]):
        assert row["ap"]["value"] == pytest.approx(average_precision_score(probe.multilabels[:, j], logits[:, j]))
        f1 = f1_score(probe.multilabels[:, j], 1 / (1 + np.exp(-logits[:, j])) > 0.45, zero_division=np.nan)
        assert row["f1"]["value"] == pytest.approx(f1, nan_ok=True) or (np.isnan(f1) and row["f1"]["value"] is None)


# ---------------------------------------------------------------- task selection, skips, errors


def test_task_decides_which_analyzers_run(worlds, small_world):
    report = explainkit.analyze(_seg_handle(), worlds["segmentation"], params={"segmentation": LIGHT},
                                progress=False, batch_size=5)
    assert [s["analyzer"] for s in report.to_dict()["sections"]] == ["segmentation"]
    skipped = [f["message"] for f in report.to_dict()["findings"] if "skipped" in f["message"]]
    assert any(m.startswith("gradcam skipped: gradcam reads the outputs of classification models; this is a "
                            "segmentation model") for m in skipped)
    with pytest.raises(CapabilityError, match=r"analyzer 'gradcam' cannot run here.*"
                                              r"analyzers that can: prototype_regions, segmentation"):
        explainkit.analyze(_seg_handle(), worlds["segmentation"], ["gradcam"], progress=False)
    with pytest.raises(ConfigError, match="task must be one of 'classification', 'segmentation', 'multilabel'"):
        explainkit.analyze(_seg_handle(), worlds["segmentation"], task="detection", progress=False)
    with pytest.raises(DataError, match="task 'multilabel' does not fit the probe set, which is labelled for "
                                        "segmentation"):
        explainkit.analyze(_seg_handle(), worlds["segmentation"], task="multilabel", progress=False)
    # a dense model on a classification probe set is recognised from its output, not guessed at
    with pytest.raises(ConfigError, match=r"\(2, K, H, W\) class scores per pixel, a segmentation model"):
        explainkit.analyze(_seg_handle(names=None), small_world, ["gradcam"], progress=False)
    # a segmentation task with a (B, K) model
    handle = explainkit.wrap(tiny_cnn(num_classes=4), class_names=list(SEGMENTATION_CLASSES), **PREP)
    with pytest.raises(ConfigError, match=r"a segmentation model must give \(2, K, H, W\) class scores"):
        explainkit.analyze(handle, worlds["segmentation"], task="segmentation", progress=False)


# ---------------------------------------------------------------- command line: exit codes and bad inputs


@pytest.fixture(scope="module")
def fcn_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fcn") / "fcn.safetensors"
    return explainkit.save_model(tiny_fcn(num_classes=4), path, arch="explainkit:tiny_fcn(num_classes=4)",
                                 class_names=list(SEGMENTATION_CLASSES),
                                 preprocessing={"input_size": SIZE, "mean": (0, 0, 0), "std": (1, 1, 1)})


def _cli(args):
    """The real entry point (with its exit-code mapping): ``(code, stdout + stderr)``."""
    runner = CliRunner()
    with runner.isolation(env={"GITHUB_ACTIONS": None}) as (out, err, _):
        code = main([str(a) for a in args])
    return code, out.getvalue().decode() + err.getvalue().decode()


def test_cli_segmentation_run_task_flag_and_gate(worlds, fcn_file, tmp_path):
    code, out = _cli(["analyze", fcn_file, "--data", worlds["segmentation"], "--out", tmp_path / "o",
                      "--analyzer", "segmentation:n_resamples=200,n_examples=1", "--format", "json"])
    assert code == 0, out
    doc = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    assert doc["provenance"]["config"]["task"] == "segmentation" and doc["provenance"]["data"]["task"] == "segmentation"
    seg = next(s for s in doc["sections"] if s["analyzer"] == "segmentation")
    assert 0 <= seg["data"]["miou"]["value"] <= 1 and seg["data"]["miou"]["n"] == 10
    code, out = _cli(["analyze", fcn_file, "--data", worlds["segmentation"], "--out", tmp_path / "o2",
                      "--task", "nonsense"])
    assert code == 2 and "task must be one of 'classification', 'segmentation', 'multilabel'" in out
    for task in ("segmentation", "multilabel"):
        code, out = _cli(["world", tmp_path / task, "--task", task, "--n-images", 3, "--size", 16])
        assert code == 0 and ProbeSet.from_folder(tmp_path / task).task == task
    ring = tmp_path / "ring.png"
    Image.new("RGBA", (8, 8), (0, 230, 230, 255)).save(ring)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = 1\n[defaults]\nseed = 0\n[[checks]]\nid = "x"\nkind = "insertion"\n'
                      f'artifact = "{ring}"\ntarget_class = "red"\ndata = "{worlds["segmentation"]}"\ntau = 1.0\n')
    code, out = _cli(["check", fcn_file, "--policy", policy, "--out", tmp_path / "g"])
    assert code == 2 and "kind 'insertion' measures the outputs of classification models" in out
    assert "labelled for segmentation" in out and "Traceback" not in out
