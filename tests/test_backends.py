"""Execution backends reproduce the serial reference: partitions, torchrun and Ray."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import explainkit
from explainkit.analyzers import get_analyzer_class, list_analyzers
from explainkit.analyzers.base import RunContext
from explainkit.backends import RunPlan, get_backend, list_backends, map_shard, merge_states, shard_indices
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError
from explainkit.report import schema_path
from explainkit.report.jsonify import jsonable
from explainkit.run import build_analyzers, resolve_device

#: Perturbation metrics rank pixels by the map: the last-bit differences above can reorder two nearly
#: equal pixels across a deletion step, which moves a curve point by the probability change of one pixel
#: (measured 2e-5 on one image of the demo world); everything else is continuous in the maps. The
#: prototypes analyzer sends its perturbed copies through the model in chunks of the pass rows, whose
#: composition depends on the batch: float32 rounding of its bootstrap CIs measured up to 1.3e-6.
RANKED = {"gradcam": 1e-3, "captum": 1e-3, "prototypes": 1e-5}


def assert_same_json(a, b, path="", rel=1e-6, abs_tol=1e-9):
    """Equal JSON values; floats up to float32 rounding (a batch of 1 and a batch of 5 round convolutions
    differently in the last bits: measured ~3e-8 relative on the demo model). ``abs_tol`` is for values near 0
    that are differences of float32 quantities (a CI bound of a calibrated effect), whose relative error is large."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same_json(a[k], b[k], f"{path}.{k}", rel, abs_tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{path}[{i}]", rel, abs_tol)
    elif isinstance(a, float) and isinstance(b, float):
        both_nan = math.isnan(a) and math.isnan(b)
        assert both_nan or math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_shards_cover_every_sample_once():
    for n, world in [(10, 3), (7, 7), (3, 5)]:
        got = np.sort(np.concatenate([shard_indices(n, r, world) for r in range(world)]))
        assert got.tolist() == list(range(n))


@pytest.fixture(scope="module")
def setup(small_world, demo_model_path, light_specs):
    handle = explainkit.load_model(demo_model_path)
    probe = ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 3))
    names = [n for n in list_analyzers() if not get_analyzer_class(n)().missing_requirements(handle, probe)]
    return handle, probe, names, light_specs


def _plan(setup, names):
    handle, probe, _, light_specs = setup
    analyzers = build_analyzers(light_specs(names))
    ctx = RunContext(handle=handle, data=probe, device=resolve_device("cpu"), seed=0, batch_size=5)
    for a in analyzers:
        a.validate(ctx)
        a.prepare(ctx)
    return RunPlan(handle, probe, analyzers, None, progress=False), ctx


@pytest.fixture(scope="module")
def mapped(setup):
    """The serial run (batches of 5) and every sample mapped alone (batches of 1), once."""
    plan, ctx = _plan(setup, setup[2])
    serial, _ = map_shard(plan, ctx, range(len(plan.probe)))
    singles = [map_shard(plan, ctx, [i])[0] for i in range(len(plan.probe))]
    finals = {a.name: a.finalize(ctx, serial[a.name]).to_dict() for a in plan.analyzers}
    return plan, ctx, singles, finals


def test_every_analyzer_is_in_the_property_test(setup):
    """The conformance tests below cover the registry's classification analyzers: none is left out for want of a
    requirement (the segmentation and multi-label ones run the same tests on their worlds in tests/test_tasks.py)."""
    handle, probe = setup[0], setup[1]
    left_out = {n: get_analyzer_class(n)().missing_requirements(handle, probe) for n in list_analyzers()
                if n not in setup[2] and "classification" in get_analyzer_class(n).tasks}
    assert not left_out, f"analyzers the demo model and probe set cannot run (extend the fixture): {left_out}"


def test_every_section_validates_against_the_schema(mapped):
    """Conformance over the registry: each runnable analyzer's section is a valid report section."""
    schema = json.loads(open(schema_path()).read())
    section = {**schema["$defs"]["section"], "$defs": schema["$defs"]}
    for doc in mapped[3].values():
        jsonschema.validate(jsonable(doc), section)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_merge_of_random_partitions_equals_serial(mapped, data):
    """Shards of any composition, merged in any order and grouping, finalize to the serial result
    (the serial run used batches of 5, the shards single images: batch composition does not matter)."""
    plan, ctx, singles, finals = mapped
    n = len(plan.probe)
    order = data.draw(st.permutations(list(range(n))))
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)))
    parts = [merge_states(plan, [singles[i] for i in order[a:b]]) for a, b in zip([0, *cuts], [*cuts, n])]
    perm = data.draw(st.permutations(list(range(len(parts)))))
    merged = merge_states(plan, [parts[i] for i in perm])
    for a in plan.analyzers:
        assert_same_json(a.finalize(ctx, merged[a.name]).to_dict(), finals[a.name], a.name, RANKED.get(a.name, 1e-6))


def test_unknown_backend_and_torchrun_outside_torchrun(setup):
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("spark")
    with pytest.raises(ConfigError, match="bad option"):
        get_backend("ray", nodes=3)
    handle, probe, _, _ = setup
    with pytest.raises(ConfigError, match="must be started by torchrun"):
        explainkit.analyze(handle, probe, ["performance"], backend="torchrun")


def _sections(path):
    return json.loads(path.read_text())["sections"]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_match_serial(setup, tmp_path, small_world, demo_model_path):
    _, _, names, _ = setup
    args = ["analyze", str(demo_model_path), "--data", str(small_world), "--batch-size", "8", "--no-progress",
            *[x for n in names for x in ("--analyzer", n)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "explainkit", *args, "--out", str(tmp_path / "serial")], check=True,
                   env=env, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "explainkit", *args, "--backend", "torchrun", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    # Each rank batches its own shard, so convolutions round differently in the last float32 bits; a CI bound
    # near 0 of a calibrated prototype effect (a difference of O(1) float32 sums) then differs by ~2e-9.
    assert_same_json(_sections(tmp_path / "ddp" / "report.json"), _sections(tmp_path / "serial" / "report.json"),
                     abs_tol=1e-7)
    backend = json.loads((tmp_path / "ddp" / "report.json").read_text())["provenance"]["config"]["backend"]
    assert backend == {"name": "torchrun", "workers": 2}


def _one_rank(monkeypatch) -> None:
    """The environment torchrun gives a single rank (a real process group of world size 1, gloo)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)


#: What a backend needs to run inside this test process: its environment, its options, the module it imports.
_IN_PROCESS = {"torchrun": {"env": _one_rank}, "ray": {"options": {"workers": 2}, "needs": "ray"}}
#: Backends too heavy for the default suite: a local Ray starts in tens of seconds; a torchrun rank re-maps every
#: analyzer (about 25 s of one core, measured under load).
_HEAVY = {"ray", "torchrun"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow, pytest.mark.distributed])
                                  if n in _HEAVY else n for n in list_backends() if n != "serial"])
def test_every_backend_equals_serial(name, mapped, monkeypatch):
    """Conformance over the backend registry: each backend, run in this process, merges to the states of the
    serial reference (``mapped``; multi-process runs of torchrun are tested below)."""
    how = _IN_PROCESS.get(name, {})
    if "needs" in how:
        pytest.importorskip(how["needs"])
    if "env" in how:
        how["env"](monkeypatch)
    plan, ctx, _, finals = mapped
    try:
        outcome = get_backend(name, **how.get("options", {})).run(plan, ctx)
    finally:  # the torchrun backend keeps its process group for the process's life; this test ends it
        if dist.is_initialized():
            dist.destroy_process_group()
    assert outcome.is_writer and outcome.describe["name"] == name
    for a in plan.analyzers:
        assert_same_json(a.finalize(ctx, outcome.states[a.name]).to_dict(), finals[a.name], f"{name}: {a.name}")
