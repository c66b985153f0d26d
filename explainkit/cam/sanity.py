"""Model-parameter randomisation sanity check (Adebayo et al., NeurIPS 2018).

Layers that own parameters are re-initialised (their own ``reset_parameters`` where they have
one, otherwise Gaussian draws with each parameter's standard deviation), on a copy of the model:

* **cascading**: from the output downwards — first every layer above the target layer (the
  "head"), then progressively deeper groups until every layer is random;
* **independent**: each group alone, the rest trained.

After each step the maps of the same images and the same classes are recomputed and compared
with the original maps by Spearman rank correlation per image (on the native grid, so upsampling
does not inflate it; a map that became constant counts as 0). A method whose maps survive
randomisation does not explain the model's weights: its verdict is FAIL when the CI lower bound of
the mean correlation stays at or above ``threshold`` after the head or the full cascade, PASS
when every CI upper bound falls below it, INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from explainkit.adapters import SpatialLayout, resolve_layers
from explainkit.adapters.randomize import randomize_
from explainkit.analyzers.metric import metric
from explainkit.cam.api import compute
from explainkit.cam.engine import as_handle
from explainkit.cam.postprocess import to_grid
from explainkit.hooks import capture_layers, eval_mode
from explainkit.loading.handle import ModelHandle
from explainkit.stats import bootstrap_ci

__all__ = ["parameter_randomization", "randomization_units", "randomize_"]


def _seed(*keys: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:7], "little")


def randomization_units(handle: ModelHandle, inputs: torch.Tensor, layers: Sequence[str] = ()
                        ) -> tuple[list[str], int]:
    """Modules that own parameters, in forward (completion) order, and how many run after ``layers``.

    Parameters
    ----------
    handle : ModelHandle
        The model.
    inputs : torch.Tensor
        (B, C, H, W) inputs for one dry forward pass (the first image only).
    layers : sequence of str
        Target layers; empty for input-level methods, whose "head" is the output layer.

    Returns
    -------
    units : list of str
        Parameter-owning modules that ran, in order of completion (registration order without
        module hooks).
    n_above : int
        Number of units completing after the last target layer.
    """
    module = handle.module
    owners = {n: m for n, m in module.named_modules() if n and any(True for _ in m.parameters(recurse=False))}
    if not handle.module_hooks or not owners:
        return list(owners), 1 if owners else 0
    watched = {**owners, **resolve_layers(module, list(layers))}
    with eval_mode(module), torch.no_grad(), capture_layers(
        module, watched, detach=True, tensors_only=False, transform=lambda t: torch.empty(0, device="meta"),
    ) as cap:
        handle.forward(inputs[:1])
    order: list[str] = []
    for name in cap.order:
        if name in order:
            order.remove(name)
        order.append(name)
    units = [n for n in order if n in owners]
    if not layers:
        return units, 1 if units else 0
    last = max(order.index(n) for n in layers if n in order)
    return units, sum(1 for n in order[last + 1:] if n in owners)


def _groups(units: list[str], n_above: int, steps: int) -> list[list[str]]:
    """Cascade groups from the top: the head (units above the target) then deeper chunks."""
    top_down = units[::-1]
    groups = [top_down[:n_above]] if n_above else []
    rest = top_down[n_above:]
    k = max(1, steps - len(groups))
    bounds = np.unique(np.linspace(0, len(rest), k + 1).round().astype(int))
    groups += [rest[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return groups


def _spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    out = np.zeros(a.shape[0])
    for i in range(a.shape[0]):
        x, y = a[i].flatten().double().cpu().numpy(), b[i].flatten().double().cpu().numpy()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out[i] = stats.spearmanr(x, y).statistic
    return out


def parameter_randomization(
    model: nn.Module | ModelHandle,
    inputs: torch.Tensor,
    *,
    methods: Sequence[str],
    classes: torch.Tensor | Sequence[int],
    layer: str | Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int = 4,
    threshold: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
    n_resamples: int = 2000,
    independent: bool = True,
    keep_maps: bool = False,
    layout: str | SpatialLayout = "auto",
) -> dict[str, Any]:
    """Run the cascading and independent randomisation tests.

    Parameters
    ----------
    model : torch.nn.Module or ModelHandle
        The trained model (left untouched; copies are randomised).
    inputs : torch.Tensor
        (B, C, H, W) inputs.
    methods : sequence of str
        Methods to test.
    classes : tensor or sequence of int
        (B,) class explained per image (kept fixed while weights change).
    layer : str or sequence of str, optional
        Target layer(s) of the CAM methods.
    params : mapping, optional
        Method parameters.
    steps : int
        Number of cascade groups (the head counts as one).
    threshold : float
        Correlation above which a map is considered unchanged.
    batch_size, seed, n_resamples
        Chunking, randomness, bootstrap resamples.
    independent : bool
        Also run the independent test (``False``: ``independent`` lists are empty).
    keep_maps : bool
        Also return the maps themselves (for pictures of the test).
    layout : str or SpatialLayout
        How to read the layer outputs (see :func:`explainkit.cam.api.compute`).

    Returns
    -------
    dict
        ``groups`` (list of layer-name lists, top first), ``head`` (whether group 0 is the part
        above the target layer), and per method ``cascading`` / ``independent`` lists of
        correlation metrics (mean with a 95 % bootstrap CI), ``verdict`` and ``reason``. With
        ``keep_maps``, also ``maps``: ``original`` (method → (B, H, W) map in [0, 1] at input
        resolution) and ``cascading`` (one such dict per cascade step).
    """
    handle = as_handle(model)
    cls = [int(c) for c in (classes.tolist() if isinstance(classes, torch.Tensor) else classes)]
    kwargs = dict(methods=list(methods), layer=layer, targets=cls, params=params, batch_size=batch_size, seed=seed,
                  layout=layout)
    base = compute(handle, inputs, **kwargs)
    grids = {m: base.grid(m) for m in base.maps}
    units, n_above = randomization_units(handle, inputs, base.layers)
    groups = _groups(units, n_above, steps)

    def correlations(maps: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {m: _spearman(to_grid(base.maps[m], grids[m]), to_grid(maps[m], grids[m])) for m in base.maps}

    cascade_model = copy.deepcopy(handle.module)
    cascade_handle = dataclasses.replace(handle, module=cascade_model)
    cascading: list[dict[str, np.ndarray]] = []
    cascade_maps: list[dict[str, torch.Tensor]] = []
    cascade_modules = dict(cascade_model.named_modules())
    for group in groups:
        for name in group:
            randomize_(cascade_modules[name], _seed(seed, name))
        maps = compute(cascade_handle, inputs, **kwargs).maps
        cascading.append(correlations(maps))
        if keep_maps:
            cascade_maps.append(maps)
    del cascade_model, cascade_handle, cascade_modules  # one copy of the model at a time
    single: list[dict[str, np.ndarray]] = []
    if independent:
        single_model = copy.deepcopy(handle.module)
        single_handle = dataclasses.replace(handle, module=single_model)
        single_modules = dict(single_model.named_modules())
        for group in groups:
            saved = {name: copy.deepcopy(single_modules[name].state_dict()) for name in group}
            for name in group:
                randomize_(single_modules[name], _seed(seed, name))
            single.append(correlations(compute(single_handle, inputs, **kwargs).maps))
            for name, state in saved.items():  # only the group was re-initialised
                single_modules[name].load_state_dict(state)
    out: dict[str, Any] = {"groups": groups, "head": bool(n_above), "threshold": threshold,
                           "statistic": "Spearman rank correlation with the original map (per image)",
                           "methods": {}}
    if keep_maps:
        out["maps"] = {"original": base.maps, "cascading": cascade_maps}
    for i, m in enumerate(base.maps):
        casc = [_summary(step[m], n_resamples, seed + i) for step in cascading]
        ind = [_summary(step[m], n_resamples, seed + i) for step in single]
        verdict, reason = _verdict(casc, bool(n_above), threshold)
        out["methods"][m] = {"cascading": casc, "independent": ind, "verdict": verdict, "reason": reason}
    return out


def _summary(rho: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    ci = bootstrap_ci(rho, n_resamples=n_resamples, seed=seed) if rho.size > 1 else None
    return metric(float(rho.mean()), ci, n=int(rho.size), unit="Spearman rho", higher_is_better=False,
                  per_image=[float(v) for v in rho])


def _verdict(cascading: list[dict[str, Any]], head: bool, threshold: float) -> tuple[str, str]:
    checks = []
    if head:
        checks.append(("the layers above the target layer", cascading[0]))
    checks.append(("every layer", cascading[-1]))
    unchanged = [what for what, m in checks if m["ci_low"] is not None and m["ci_low"] >= threshold]
    if unchanged:
        return "FAIL", "maps barely change when randomising " + " / ".join(unchanged) + \
            f" (Spearman CI lower bound >= {threshold}): they do not depend on those weights"
    if all(m["ci_high"] is not None and m["ci_high"] < threshold for _, m in checks):
        return "PASS", f"maps decorrelate from the original (Spearman CI upper bound < {threshold})"
    return "INCONCLUSIVE", f"the Spearman CI straddles {threshold}"
