"""Concept activation vectors through captum's TCAV, from a concept table's positive and negative images.

captum (``captum.concept``) does the work: it records layer activations of each concept's images
(:class:`~captum.concept.Concept` data iterators), trains one linear classifier per experimental
set (:meth:`TCAV.compute_cavs`) and scores inputs by the sign of the class gradient along each CAV
(:meth:`TCAV.interpret`; the analyzer computes the same sign counts from the gradients of the runner's
shared pass, :func:`sign_counts`). This module only decides *which* images form each set and makes
the training reproducible:

* concept c, run j: the concept's positive images (at most ``max_images``, drawn once) against
  ``max_images`` images without c (drawn afresh per run) — the paper's "concept vs random" CAVs with
  the random counterparts drawn from the concept table's negatives;
* null, run j: a random set drawn from the whole probe set against a fresh random set (the paper's
  random-vs-random CAVs, shared by all concepts).

captum runs a forward pass for every image of every set each time the set is trained (the same
image appears in many sets); :class:`CachedTCAV` instead writes each set's activations into
captum's own activation store (``captum._utils.av.AV``, laid out as captum's
``generate_activation`` writes them: the layer output flattened per image) from a table holding
one forward pass per distinct image (:func:`activation_table`), and captum then trains from the store.

:class:`SeededLinearClassifier` is captum's default linear model (scikit-learn's ``SGDClassifier``
with ``alpha=0.01, max_iter=1000, tol=1e-3`` and a 33 % held-out accuracy) with its two random
choices (the split, the SGD order) seeded from the experimental set, so a run is reproducible.
:class:`CachedTCAV` keeps the trained CAVs in memory instead of re-reading them from captum's store on
every call, and exports / imports them so that workers use the driver's CAVs. Concept names never
reach captum's file paths (sets are named ``pos3``, ``neg3_1``, ...), so an untrusted concept table
cannot choose where files go.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum._utils.av import AV
from captum.concept import CAV, TCAV, Classifier, Concept
from captum.concept._utils.common import concepts_to_str
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from torch import nn
from torch.utils.data import DataLoader

from explainkit.errors import DataError
from explainkit.hooks import capture_layers

__all__ = ["CachedTCAV", "ConceptSets", "SeededLinearClassifier", "activation_table", "cav_directions",
           "concept_sets", "flat_activations", "sign_counts"]


class SeededLinearClassifier(Classifier):
    """captum's default CAV classifier, reproducible: seeded split and SGD.

    Parameters
    ----------
    seed : int
        Base seed; each experimental set derives its own from the concept ids it separates.
    test_split : float
        Share of the set's images held out for the CAV accuracy (captum's default 0.33).
    """

    def __init__(self, seed: int = 0, test_split: float = 0.33) -> None:
        self.seed = seed
        self.test_split = test_split
        self.model: SGDClassifier | None = None

    def train_and_eval(self, dataloader: DataLoader, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Fit on a seeded split of the set's activations; return the held-out accuracy (``accs``) and ``converged``."""
        xs, ys = zip(*dataloader)
        x = torch.cat(xs).detach().cpu().double().numpy()
        y = torch.cat(ys).cpu().numpy()
        key = hashlib.sha256(f"{self.seed}:{sorted(set(y.tolist()))}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
        order = rng.permutation(len(y))
        n_test = int(self.test_split * len(y))
        test, train = order[:n_test], order[n_test:]
        self.model = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=int(rng.integers(0, 2**31)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported per analysis instead (``converged``)
            self.model.fit(x[train], y[train])
        acc = float((self.model.predict(x[test]) == y[test]).mean()) if n_test else float("nan")
        return {"accs": torch.tensor(acc), "converged": bool(self.model.n_iter_ < self.model.max_iter)}

    def weights(self) -> torch.Tensor:
        """(2, F) rows for the two classes (captum's convention for binary sets: −w, +w)."""
        w = torch.as_tensor(self.model.coef_[0], dtype=torch.float32)  # type: ignore[union-attr]
        return torch.stack([-w, w])

    def classes(self) -> list[int]:
        """The concept ids, in the rows' order."""
        return [int(c) for c in self.model.classes_]  # type: ignore[union-attr]


class CachedTCAV(TCAV):
    """captum's TCAV that serves already-trained CAVs from memory (no store reads per ``interpret``).

    With :meth:`use_activations`, a concept's activations are taken from a precomputed table (one
    forward pass per distinct image) and written into captum's store exactly as captum's own
    ``generate_activation`` writes them; captum regenerates a concept's activations for every
    experimental set it appears in, which would repeat the same forward passes R times or more.
    """

    _rows: dict[int, int] | None = None
    _tables: dict[str, torch.Tensor] | None = None

    def export_cavs(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The trained CAVs' stats (weights, classes, accuracy), picklable: set key → layer → stats."""
        return {key: {layer: dict(cav.stats) for layer, cav in layers.items()} for key, layers in self.cavs.items()}

    def import_cavs(self, experimental_sets: Sequence[Sequence[Concept]], stats: dict[str, dict[str, dict]]) -> None:
        """Install CAVs trained elsewhere (:meth:`export_cavs`) for these experimental sets, without training."""
        for concepts in experimental_sets:
            key = concepts_to_str(list(concepts))
            for layer, st in stats[key].items():
                self.cavs[key][layer] = CAV(list(concepts), layer, st, self.save_path, self.model_id)

    def use_activations(self, rows: dict[int, int], tables: dict[str, torch.Tensor]) -> None:
        """Serve concept activations from ``tables`` (see :func:`activation_table`)."""
        self._rows, self._tables = rows, tables

    def generate_activation(self, layers: str | list[str], concept: Concept) -> None:
        """Captum's step, from the precomputed table when the concept's images are in it."""
        if self._tables is None or not isinstance(concept.data_iter, _Batches):
            return super().generate_activation(layers, concept)
        pick = torch.as_tensor([self._rows[int(i)] for i in concept.data_iter.indices])
        for layer in [layers] if isinstance(layers, str) else layers:
            AV.save(self.save_path, self.model_id, concept.identifier, layer, self._tables[layer][pick], "0")
        return None

    def compute_cavs(self, experimental_sets: list[list[Concept]], force_train: bool = False,
                     processes: int | None = None) -> dict:
        """Train (through captum) only the CAVs not in memory yet."""
        done = all(concepts_to_str(s) in self.cavs and all(layer in self.cavs[concepts_to_str(s)]
                                                          for layer in self.layers) for s in experimental_sets)
        if done and not force_train:
            return self.cavs
        return super().compute_cavs(experimental_sets, force_train=force_train, processes=processes)


@dataclass
class ConceptSets:
    """The experimental sets of one analysis.

    Attributes
    ----------
    concepts : list of str
        Concept names (table columns) with a CAV.
    positives : list of ndarray
        Per concept, the probe indices of its positive images.
    negatives : list of list of ndarray
        Per concept and run, the probe indices of its negative images.
    random_reference : ndarray
        Probe indices of the null's fixed random set.
    random_runs : list of ndarray
        Per run, the null's second random set.
    """

    concepts: list[str]
    positives: list[np.ndarray]
    negatives: list[list[np.ndarray]]
    random_reference: np.ndarray
    random_runs: list[np.ndarray]

    @property
    def runs(self) -> int:
        """R, the number of runs."""
        return len(self.random_runs)

    def all_indices(self) -> np.ndarray:
        """Every probe index used by some set, ascending."""
        parts = [*self.positives, *(n for runs in self.negatives for n in runs), self.random_reference,
                 *self.random_runs]
        return np.unique(np.concatenate(parts))

    def experimental_sets(self, load: Any, batch_size: int) -> tuple[list[list[Concept]], list[list[Concept]]]:
        """Captum :class:`Concept` pairs: per concept the R (positive, negative) sets; the R null pairs.

        Parameters
        ----------
        load : callable
            ``load(indices) -> (n, 3, H, W)`` preprocessed inputs.
        batch_size : int
            Images per batch of a concept's data iterator.

        Returns
        -------
        concept_sets : list of list of Concept
            C·R pairs, concept-major.
        null_sets : list of list of Concept
            R pairs.
        """
        ids = iter(range(10**9))

        def concept(name: str, indices: np.ndarray) -> Concept:
            return Concept(next(ids), name, _Batches(load, indices, batch_size))

        pos = [concept(f"pos{c}", p) for c, p in enumerate(self.positives)]
        pairs = [[pos[c], concept(f"neg{c}_{j}", n)] for c, runs in enumerate(self.negatives)
                 for j, n in enumerate(runs)]
        ref = concept("rnd", self.random_reference)
        null = [[ref, concept(f"rnd{j}", r)] for j, r in enumerate(self.random_runs)]
        return pairs, null


def cav_directions(tcav: TCAV, experimental_sets: Sequence[Sequence[Concept]], layer: str) -> torch.Tensor:
    """The direction each experimental set's score is read along: its first concept's CAV row.

    captum's ``interpret`` reports, per set, ``sign_count`` in the order of the set's concepts; the
    analyzer keeps the first entry (the concept, or the null's reference set), i.e. the row of the
    CAV's weights (rows follow the classifier's sorted concept ids) that belongs to that concept.

    Parameters
    ----------
    tcav : TCAV
        With the sets' CAVs trained or imported.
    experimental_sets : sequence of sequence of Concept
        S sets.
    layer : str
        captum layer name.

    Returns
    -------
    torch.Tensor
        (S, F) float32.
    """
    rows = []
    for concepts in experimental_sets:
        stats = tcav.cavs[concepts_to_str(list(concepts))][layer].stats
        rows.append(stats["weights"].float()[list(stats["classes"]).index(concepts[0].id)])
    return torch.stack(rows)


def sign_counts(gradients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """How many inputs have a layer gradient pointing along each direction (captum's ``sign_count`` × n).

    Parameters
    ----------
    gradients : torch.Tensor
        (n, ...) gradient of each input's target logit with respect to the layer output (flattened
        per input, as captum's ``LayerGradientXActivation(multiply_by_inputs=False)`` gives it).
    directions : torch.Tensor
        (S, F) CAV rows (:func:`cav_directions`), F the flattened layer size.

    Returns
    -------
    torch.Tensor
        (S,) int64 count of inputs with a positive dot product.
    """
    flat = gradients.reshape(gradients.shape[0], -1).float()
    return (flat @ directions.to(flat.device).T > 0).sum(0)


def flat_activations(model: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """Layer outputs flattened per image, (B, F) per layer, in one forward pass stopped after the last layer.

    Parameters
    ----------
    model : torch.nn.Module
        The model captum differentiates.
    layers : dict of str to torch.nn.Module
        captum layer name → module.
    inputs : torch.Tensor
        (B, 3, H, W) model inputs.

    Returns
    -------
    dict of str to torch.Tensor
        Layer → (B, F) CPU float32 activations (captum's ``torch.reshape(activation, (B, -1))``).
    """
    with torch.no_grad(), capture_layers(model, layers, detach=True, stop_early=True,
                                         transform=lambda t: t.reshape(t.shape[0], -1).float().cpu()) as cap:
        cap.forward(model, inputs)
    return {name: cap[name] for name in layers}


def activation_table(model: nn.Module, layers: dict[str, nn.Module], indices: np.ndarray, load: Any,
                     batch_size: int) -> tuple[dict[int, int], dict[str, torch.Tensor]]:
    """Flattened activations of the images at ``indices``, one forward pass each.

    Returns
    -------
    rows : dict of int to int
        Probe index → row of the tables.
    tables : dict of str to torch.Tensor
        Layer → (n, F) float32.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for start in range(0, indices.size, batch_size):
        for name, a in flat_activations(model, layers, load(indices[start : start + batch_size])).items():
            parts[name].append(a)
    return {int(i): r for r, i in enumerate(indices)}, {name: torch.cat(p) for name, p in parts.items()}


class _Batches:
    """A re-iterable data iterator over preprocessed probe images (what captum's ``Concept`` reads)."""

    def __init__(self, load: Any, indices: np.ndarray, batch_size: int) -> None:
        self.load, self.indices, self.batch_size = load, indices, batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.load(self.indices[start : start + self.batch_size])


def concept_sets(table: np.ndarray, names: Sequence[str], *, max_images: int = 50, runs: int = 10,
                 min_images: int = 10, rng: np.random.Generator) -> tuple[ConceptSets, list[str]]:
    """Draw the experimental sets from a concept table.

    Parameters
    ----------
    table : ndarray
        (N, C) bool concept table.
    names : sequence of str
        C concept names.
    max_images : int
        Images per set (m).
    runs : int
        R, CAVs per concept (and random-vs-random CAVs).
    min_images : int
        Concepts with fewer positive or negative images get no CAV.
    rng : numpy.random.Generator
        Randomness.

    Returns
    -------
    sets : ConceptSets
        The sets.
    skipped : list of str
        Concepts left out (too few positives or negatives).

    Raises
    ------
    DataError
        When no concept qualifies.
    """
    n = table.shape[0]
    kept, pos, neg, skipped = [], [], [], []
    for c, name in enumerate(names):
        p, q = np.flatnonzero(table[:, c]), np.flatnonzero(~table[:, c])
        if min(p.size, q.size) < min_images:
            skipped.append(name)
            continue
        kept.append(name)
        pos.append(np.sort(rng.choice(p, min(max_images, p.size), replace=False)))
        neg.append([np.sort(rng.choice(q, min(max_images, q.size), replace=False)) for _ in range(runs)])
    if not kept:
        raise DataError(f"no concept has {min_images} positive and {min_images} negative images for a CAV")
    m = min(max_images, n)
    ref = np.sort(rng.choice(n, m, replace=False))
    rand = [np.sort(rng.choice(n, m, replace=False)) for _ in range(runs)]
    return ConceptSets(kept, pos, neg, ref, rand), skipped
