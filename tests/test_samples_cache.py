"""Per-sample shard files and the activation cache."""

import multiprocessing as mp

import numpy as np

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
    bad = cache._path("f" * 64)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    assert cache.get("f" * 64) is None
