"""Per-sample shard files and the activation cache."""

import multiprocessing as mp

import numpy as np
import torch

from explainkit.cache import ActivationCache, cache_key
from explainkit.samples import read_samples, write_samples


def test_samples_round_trip_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((5, 4, 4)).astype(np.float32)
    ids = [f"c/{i}.png" for i in range(5)]
    write_samples(tmp_path, "gradcam", ids[:2], heatmap=maps[:2], score=np.arange(2))
    write_samples(tmp_path, "gradcam", ids[2:], heatmap=maps[2:], score=np.arange(2, 5))
    write_samples(tmp_path, "gradcam", ids[2:], heatmap=maps[2:], score=np.arange(2, 5))  # rerun: same shard
    got = read_samples(tmp_path, "gradcam")
    assert sorted(got) == ids and len(list((tmp_path / "samples" / "gradcam").iterdir())) == 2
    for i, sid in enumerate(ids):
        assert np.array_equal(got[sid]["heatmap"], maps[i]) and got[sid]["score"] == i
    assert write_samples(None, "x", ids, a=maps) is None


def _writer(args):
    root, seed = args
    arr = np.arange(200_000, dtype=np.float64)  # identical content for every writer
    ActivationCache(root).put(cache_key(model="m", layer="l", seed=1), {"a": arr})
    return seed


def test_cache_keys_and_concurrent_writers(tmp_path):
    k1 = cache_key(model="abc", layer="layer4", data="d", params={"agg": "mean"})
    assert k1 == cache_key(params={"agg": "mean"}, data="d", layer="layer4", model="abc")
    assert k1 != cache_key(model="abc", layer="layer4", data="d", params={"agg": "max"})
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_writer, [(tmp_path, s) for s in range(4)])
    cache = ActivationCache(tmp_path)
    got = cache.get(cache_key(model="m", layer="l", seed=1))
    assert np.array_equal(got["a"], np.arange(200_000, dtype=np.float64))
    assert not list(tmp_path.rglob("*.tmp"))
    assert cache.get("0" * 64) is None
    bad = cache.path("f" * 64)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    assert cache.get("f" * 64) is None


# -- the map-state cache in a run ------------------------------------------------------------------

import pytest  # noqa: E402

import explainkit  # noqa: E402
from explainkit.adapters import activations as activations_module  # noqa: E402
from explainkit.analyzers.base import RecordState  # noqa: E402
from explainkit.backends import plan as plan_module  # noqa: E402
from explainkit.cache import module_fingerprint  # noqa: E402
from explainkit.data.probe import ProbeSet  # noqa: E402
from explainkit.invert import analyzer as invert_analyzer  # noqa: E402


def test_record_state_array_round_trip():
    state = RecordState.from_batch(np.array([4, 1]), act=np.arange(6.0).reshape(2, 3), pred=np.array([7, 8]))
    back = RecordState.from_arrays(state.to_arrays())
    assert back.indices().tolist() == [1, 4]
    assert np.array_equal(back.stacked("act"), state.stacked("act")) and back.stacked("pred").tolist() == [8, 7]
    with pytest.raises(TypeError, match="not numeric"):
        RecordState.from_batch(np.array([0]), rec=[{"a": 1}]).to_arrays()


def test_module_fingerprint_tracks_weights(tiny_cnn):
    a = module_fingerprint(tiny_cnn)
    assert a == module_fingerprint(tiny_cnn)
    with torch.no_grad():
        next(tiny_cnn.parameters()).add_(1e-3)
    assert module_fingerprint(tiny_cnn) != a


@pytest.fixture(scope="module")
def cache_probe(small_world):
    return ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 2))


def _invert_json(handle, probe, cache, **params):
    rep = explainkit.analyze(handle, probe, [("invert", {"connection": "gradient", **params})], batch_size=16,
                             progress=False, cache=cache)
    return next(s for s in rep.to_dict()["sections"] if s["analyzer"] == "invert")


def test_a_threshold_change_reuses_cached_activations_without_the_model(demo_handle, cache_probe, tmp_path,
                                                                       monkeypatch):
    first = _invert_json(demo_handle, cache_probe, tmp_path, alpha=0.05)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == -(-len(cache_probe) // 16)  # one entry per batch
    reference = _invert_json(demo_handle, cache_probe, None, alpha=0.2, auroc_floor=0.6)

    def boom(*args, **kwargs):
        raise AssertionError("the map loop ran the model although every batch was cached")

    seen = []
    real = activations_module.batch_activations

    def counted(handle, inputs, *args, **kwargs):
        seen.append(len(inputs))
        return real(handle, inputs, *args, **kwargs)

    monkeypatch.setattr(plan_module, "make_batch", boom)
    monkeypatch.setattr(invert_analyzer, "batch_activations", counted)  # the map path
    monkeypatch.setattr(activations_module, "batch_activations", counted)  # finalize's learn_layouts
    cached = _invert_json(demo_handle, cache_probe, tmp_path, alpha=0.2, auroc_floor=0.6)
    monkeypatch.undo()
    assert seen == [1]  # only finalize learning the layer's layout from one image
    assert cached["data"] == reference["data"] and cached["summary"] == reference["summary"]
    assert first["params"]["alpha"] == 0.05 and sorted(tmp_path.rglob("*.npz")) == files
    # what the activations depend on is in the key: a different pooling misses and adds entries
    _invert_json(demo_handle, cache_probe, tmp_path, pooling="max")
    assert len(list(tmp_path.rglob("*.npz"))) == 2 * len(files)


def test_gradcam_writes_every_images_maps_keyed_by_id(demo_handle, cache_probe, tmp_path):
    probe = cache_probe.subset(np.arange(10))
    params = {"methods": ["gradcam", "layercam"], "metric_images": 0, "n_random": 0, "sanity": False,
              "n_examples": 0}
    rep = explainkit.analyze(demo_handle, probe, [("gradcam", params)], batch_size=4, progress=False,
                             out=tmp_path)
    sec = next(s for s in rep.to_dict()["sections"] if s["analyzer"] == "gradcam")
    assert sec["data"]["maps_folder"] == "samples/gradcam"
    got = read_samples(tmp_path, "gradcam")
    assert sorted(got) == sorted(probe.ids)
    inputs = demo_handle.preprocess([probe.load_image(3)])
    want = explainkit.cam(demo_handle, inputs, layer=sec["data"]["layer"], method="layercam")[0].numpy()
    assert np.abs(got[probe.ids[3]]["layercam"].astype(float) - want * 255).max() <= 0.5 + 1e-6
