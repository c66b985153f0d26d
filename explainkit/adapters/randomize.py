"""Re-initialising parameters: for randomisation sanity checks and null models of an architecture."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["RANDOMIZERS", "permute_", "randomize_", "randomized_copy"]


def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialise the parameters ``module`` owns directly (in place, seeded).

    The module's own ``reset_parameters`` where it has one (convolutions, linear layers,
    normalisation layers — which also resets their running statistics), otherwise a Gaussian draw
    with each parameter's standard deviation (0.02 for constant parameters).
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and not isinstance(module, torch.jit.ScriptModule):
            reset()
            return
        for p in module.parameters(recurse=False):
            sd = float(p.detach().float().std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, sd if sd > 0 else 0.02)


def permute_(module: nn.Module, seed: int) -> None:
    """Shuffle the values of every parameter ``module`` owns directly (in place, seeded).

    Keeps each tensor's distribution of values (its initialisation scheme, or its trained scale)
    and destroys its structure; buffers (batch-norm running statistics) are left unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            flat = p.detach().reshape(-1)
            p.copy_(flat[torch.randperm(flat.numel(), generator=g).to(flat.device)].reshape(p.shape))


#: How :func:`randomized_copy` re-initialises a module.
RANDOMIZERS = {"reset": randomize_, "permute": permute_}


def randomized_copy(model: nn.Module, seed: int, mode: str = "reset") -> nn.Module:
    """A deep copy of ``model`` with every parameter-owning module re-initialised.

    Parameters
    ----------
    model : torch.nn.Module
        The model (left unchanged).
    seed : int
        Module ``i`` (in ``named_modules`` order) is re-initialised with seed ``seed * 1_000_003 + i``.
    mode : str
        ``"reset"`` (:func:`randomize_`) or ``"permute"`` (:func:`permute_`).

    Returns
    -------
    torch.nn.Module
        The copy, in eval mode.
    """
    randomize = RANDOMIZERS[mode]
    twin = copy.deepcopy(model)
    for i, (_, module) in enumerate(twin.named_modules()):
        if any(True for _ in module.parameters(recurse=False)):
            randomize(module, seed * 1_000_003 + i)
    return twin.eval()
