"""The concept analyzers read the runner's shared pass; layers with structured outputs are recorded by entry."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from conftest import LIGHT_PARAMS
from test_backends import assert_same_json
from torch import nn

import explainkit
from explainkit.adapters import resolve_layer
from explainkit.analyzers.base import PassRequest, RecordState, RunContext
from explainkit.analyzers.registry import get_analyzer
from explainkit.backends.passes import merge_requests, run_passes
from explainkit.backends.plan import RunPlan, label_map, map_shard
from explainkit.dissect.stream import DissectRunState, map_batch
from explainkit.errors import ConfigError
from explainkit.hooks import eval_mode, hook_count
from explainkit.tcav.scores import TcavCounts

LAYER = "features.3"
CONCEPT_ANALYZERS = ("dissect", "information", "tcav", "reliability")


@pytest.fixture(scope="module")
def concept_run(small_world, demo_model_path):
    """The four concept analyzers (plus INVERT and discovery) prepared on 30 images, and the runner's states."""
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 4))
    ctx = RunContext(handle=handle, data=probe, device=torch.device("cpu"), batch_size=8, layer=LAYER)
    analyzers = [get_analyzer(n, **LIGHT_PARAMS.get(n, {})) for n in CONCEPT_ANALYZERS]
    analyzers += [get_analyzer("invert"), get_analyzer("discovery", sources=["concept", "cluster"])]
    for a in analyzers:
        a.check_params()
        a.validate(ctx)
        a.prepare(ctx)
    plan = RunPlan(handle, probe, analyzers, label_map(handle, probe)[0], progress=False,
                   passes=merge_requests([a.pass_request(ctx) for a in analyzers]))
    calls: list[int] = []
    in_map: list[int] = []
    hook = handle.module.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    originals = {type(a): type(a).map for a in analyzers}

    def counting(original):
        def map_(self, ctx, batch):
            before = len(calls)
            out = original(self, ctx, batch)
            in_map.append(len(calls) - before)
            return out
        return map_

    try:
        for cls, original in originals.items():
            cls.map = counting(original)
        states, _ = map_shard(plan, ctx, range(len(probe)))
    finally:
        hook.remove()
        for cls, original in originals.items():
            cls.map = original
    return handle, probe, ctx, plan, states, calls, in_map


def test_one_forward_per_batch_and_target_for_every_analyzer(concept_run):
    _, probe, _, plan, _, calls, in_map = concept_run
    # dissect, information, reliability, INVERT and discovery record the layer in the predicted-class pass
    # (INVERT also its gradient, for the artifact units' class connection); TCAV needs the gradient toward the label
    assert plan.passes == {"predicted": PassRequest((LAYER,), True),
                           "label": PassRequest((LAYER,), True, target="label")}
    batches = [8, 8, 8, 6]
    assert calls == [b for b in batches for _ in plan.passes]  # the shared pass: one forward per batch and target
    assert in_map == [0] * (len(batches) * len(plan.analyzers))  # no analyzer runs a pass of its own
    assert len(probe) == sum(batches)


def _old_states(handle, probe, ctx, plan):
    """The states as each analyzer computed them with its own passes before the shared pass: the layer's output
    read by a plain forward hook, the libraries fed with it, and TCAV scored by captum's ``TCAV.interpret``."""
    by_name = {a.name: a for a in plan.analyzers}
    module = resolve_layer(handle.module, LAYER)[1]
    states = {name: by_name[name].init_state(ctx) for name in CONCEPT_ANALYZERS}
    tcav = by_name["tcav"]
    sets = list(tcav.exp_sets_)
    seen: list[torch.Tensor] = []
    with eval_mode(handle.module):
        for indices, images in probe.iter_batches(ctx.batch_size):
            x = handle.preprocess(images)
            seen.clear()
            hook = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
            try:
                with torch.no_grad():
                    handle.module(x)
            finally:
                hook.remove()
            maps = {LAYER: seen[0].numpy()}
            sizes = [im.size for im in images]
            part = {
                "dissect": map_batch(maps, indices, sizes, by_name["dissect"].reader_, len(probe),
                                     by_name["dissect"].quantile, pooled=False),
                "reliability": map_batch(maps, indices, sizes, by_name["reliability"].reader_, len(probe),
                                         by_name["reliability"].quantile),
                "information": RecordState.from_batch(indices, **{f"act:{LAYER}": maps[LAYER].mean((2, 3))}),
            }
            labels = plan.label_map[probe.labels[indices]]
            counts = tcav.init_state(ctx)
            for k in np.unique(labels):
                if tcav.class_mask_[k]:
                    rows = torch.from_numpy(labels == k)
                    with torch.enable_grad():
                        scores = tcav.tcav_.interpret(x[rows], sets, target=int(k))
                    n = int(rows.sum())
                    counts.n[k] += n
                    share = torch.stack([scores[_key(s)]["model." + LAYER]["sign_count"][0] for s in sets]).numpy()
                    counts.positive[0, k] += np.rint(share * n).astype(np.int64)
            part["tcav"] = counts
            for name in CONCEPT_ANALYZERS:
                states[name] = states[name].merge(part[name])
    assert isinstance(states["dissect"], DissectRunState) and isinstance(states["tcav"], TcavCounts)
    return states


def _key(concepts):
    from captum.concept._utils.common import concepts_to_str

    return concepts_to_str(concepts)


def test_sections_equal_the_old_per_analyzer_passes(concept_run):
    handle, probe, ctx, plan, states, _, _ = concept_run
    old = _old_states(handle, probe, ctx, plan)
    by_name = {a.name: a for a in plan.analyzers}
    for name in CONCEPT_ANALYZERS:
        a = by_name[name]
        new_section = a.finalize(ctx, states[name]).to_dict()
        old_section = a.finalize(ctx, old[name]).to_dict()
        assert_same_json(new_section, old_section, name, 1e-6)
    tcav = states["tcav"]
    assert tcav.n.sum() == len(probe) and tcav.positive.any()  # every labelled image was scored


# -- layers with structured outputs -------------------------------------------------------------------------

Pair = namedtuple("Pair", "hidden cell")


class Encoder(nn.Module):
    """Returns a dict: a feature map and a vector computed apart from it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return {"feat": torch.relu(self.conv(x)), "aux": x.mean((2, 3))}


class Twin(nn.Module):
    """Returns a namedtuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 8, 3, padding=1)

    def forward(self, f):
        h = self.conv(f)
        return Pair(h, -h)


class Structured(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.twin, self.fc = Encoder(), Twin(), nn.Linear(8, 3)

    def forward(self, x):
        d = self.enc(x)
        p = self.twin(d["feat"])
        return self.fc(torch.relu(p.hidden).mean((2, 3))) + d["aux"].sum(1, keepdim=True) + 0.1 * p.cell.mean()

    def tail(self, feat, aux, hidden=None):
        """The model after ``enc`` (and optionally with ``twin.hidden`` given), for direct gradients."""
        h = self.twin.conv(feat) if hidden is None else hidden
        cell = -self.twin.conv(feat)
        return self.fc(torch.relu(h).mean((2, 3))) + aux.sum(1, keepdim=True) + 0.1 * cell.mean()


def test_entries_of_dict_and_namedtuple_outputs_are_recorded_with_their_gradients():
    model = Structured().eval()
    handle = explainkit.wrap(model, input_size=10, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    x = torch.randn(3, 3, 10, 10)
    assert resolve_layer(model, "enc:feat") == ("enc:feat", model.enc)
    assert resolve_layer(model, "twin:0")[0] == "twin:0"
    request = {"predicted": PassRequest(("enc:feat", "twin:hidden", "twin:1"), ("enc:feat", "twin:hidden"))}
    output, passes = run_passes(handle, x, request)
    with torch.no_grad():
        d = model.enc(x)
        p = model.twin(d["feat"])
        direct = model(x)
    torch.testing.assert_close(output, direct)  # the rest of each output passed on unchanged
    got = passes["predicted"]
    torch.testing.assert_close(got.activations["enc:feat"], d["feat"])
    torch.testing.assert_close(got.activations["twin:hidden"], p.hidden)
    torch.testing.assert_close(got.activations["twin:1"], p.cell)
    assert list(got.gradients) == ["enc:feat", "twin:hidden"]
    # d(sum of predicted logits) / d(entry): the entry as a variable of the rest of the model
    feat = d["feat"].clone().requires_grad_(True)
    classes = direct.argmax(1, keepdim=True)
    (g_feat,) = torch.autograd.grad(model.tail(feat, d["aux"]).gather(1, classes).sum(), feat)
    hidden = p.hidden.clone().requires_grad_(True)
    (g_hidden,) = torch.autograd.grad(model.tail(d["feat"], d["aux"], hidden).gather(1, classes).sum(), hidden)
    torch.testing.assert_close(got.gradients["enc:feat"], g_feat)
    torch.testing.assert_close(got.gradients["twin:hidden"], g_hidden)
    assert hook_count(model) == 0


def test_structured_outputs_without_an_entry_get_one_line_errors_naming_the_choices():
    model = Structured().eval()
    handle = explainkit.wrap(model, input_size=10, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    x = torch.randn(2, 3, 10, 10)
    cases = [("enc", "layer 'enc' returns a dict with keys feat, aux, not a tensor; pick one entry as 'enc:feat'"),
             ("twin", "layer 'twin' returns a Pair with fields hidden, cell, not a tensor; pick one entry as "
                      "'twin:hidden'"),
             ("enc:nope", "layer 'enc' returns a dict with keys feat, aux; 'nope' is not one of them (pick one as "
                          "'enc:ENTRY')"),
             ("twin:5", "layer 'twin' returns a Pair with fields hidden, cell; '5' is not one of them")]
    for layer, message in cases:
        with pytest.raises(ConfigError) as err:
            run_passes(handle, x, {"predicted": PassRequest((resolve_layer(model, layer)[0],))})
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="name the output entry"):
        resolve_layer(model, "enc:")
    assert hook_count(model) == 0


def test_analyze_reads_an_entry_of_a_dict_layer(small_world):
    """End to end: INVERT and the information analyzer on ``enc:feat`` of a model whose layer returns a dict."""
    model = Structured().eval()
    model.fc = nn.Linear(8, 3)
    handle = explainkit.wrap(model, input_size=16, mean="0.5,0.5,0.5", std="0.5,0.5,0.5",
                             class_names=["circle", "square", "triangle"])
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 6))
    report = explainkit.analyze(handle, probe, [("information", LIGHT_PARAMS["information"])], layer="enc:feat",
                                batch_size=8, progress=False)
    layer = report.section("information")["data"]["layers"][0]
    assert layer["layer"] == "enc:feat" and layer["representation"]["output_shape"] == [6, 16, 16]
