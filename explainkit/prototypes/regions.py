"""Prototype meaning per class region, for segmentation models (ScaleProtoSeg and other dense prototype maps).

A segmentation prototype of class ``k`` is meant to fire on the pixels of class ``k``; reading it at
its best location over the whole image (as the classification analysis does) would mix in whatever
it matches elsewhere. Here every prototype is read on its own class's region of the ground-truth
label map only:

* the region of class ``k`` on the latent grid is the set of cells at least ``min_fraction`` of whose
  input pixels are labelled ``k`` (:func:`region_masks`; label maps follow the images' geometric
  preprocessing first);
* the Nauta local importance of a characteristic is read at the best location *within the region*
  of the original image (``readout="fixed"``; ``"max"`` re-maximises within the region of the
  perturbed image), :func:`region_scores`;
* an image without the prototype's class takes no part in that prototype's global scores, tests or
  top patch (weight 0, :attr:`~explainkit.prototypes.importance.LocalScores.valid`).

Everything else is the prototypes analysis unchanged: the same perturbations
(:mod:`explainkit.prototypes.perturb`), similarity-weighted global means with Poisson-bootstrap
intervals, one-sided Wilcoxon tests with Benjamini-Hochberg correction on the "test" split and
verdicts in words (:mod:`explainkit.prototypes.statistics`). :func:`region_analysis` runs it from the
Python API on images and (N, H, W) label maps and adds the model's own explanation when its adapter
has one (ScaleProtoSeg: scale groups, sparse groups, per-pixel drivers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.loading.preprocessing import Preprocessing
from explainkit.prototypes.adapters import PrototypeAdapter, patch_box
from explainkit.prototypes.importance import (
    LocalScores,
    SplitAccumulator,
    perturbed_views,
    resolve_weight,
    scores_from_maps,
)
from explainkit.prototypes.perturb import DEFAULT_CHARACTERISTICS, make_perturbations
from explainkit.prototypes.statistics import global_scores, local_tests, verdict
from explainkit.stats.streaming import poisson_counts

__all__ = ["RegionAnalysis", "RegionState", "region_analysis", "region_masks", "region_scores"]

SPLITS = ("train", "test")


def region_masks(label_maps: Sequence[np.ndarray] | np.ndarray, classes: Sequence[int | None], grid: tuple[int, int],
                 min_fraction: float = 0.5, preprocessing: Preprocessing | None = None) -> torch.Tensor:
    """Each prototype's class region on the latent grid.

    Parameters
    ----------
    label_maps : sequence of ndarray
        B (H_i, W_i) integer class maps, one per image (any value outside the classes, e.g. 255
        "ignore": no region); without ``preprocessing`` all of one size.
    classes : sequence of int or None
        Class of each of the P prototypes (``None``: a shared prototype, read everywhere).
    grid : tuple of int
        (h, w) of the similarity maps.
    min_fraction : float
        A latent cell belongs to a region when at least this fraction of its input pixels does.
    preprocessing : Preprocessing, optional
        Maps each class mask to the model input's geometry (:meth:`Preprocessing.resize_mask`)
        before pooling; without it the label maps are pooled as given.

    Returns
    -------
    torch.Tensor
        (B, P, h, w) bool.
    """
    labels = [np.asarray(m) for m in label_maps]
    if any(m.ndim != 2 for m in labels):
        raise ConfigError("label maps must be (H, W) arrays of class indices")
    wanted = sorted({c for c in classes if c is not None})
    fractions = {}
    for c in wanted:
        masks = [m == c for m in labels]
        if preprocessing is not None:
            masks = [preprocessing.resize_mask(m) for m in masks]
        if len({m.shape for m in masks}) > 1:
            raise ConfigError("label maps of different sizes need the model's preprocessing")
        fractions[c] = F.adaptive_avg_pool2d(torch.as_tensor(np.stack(masks), dtype=torch.float32)[:, None],
                                             grid)[:, 0]
    everywhere = torch.ones(len(labels), *grid, dtype=torch.bool)
    return torch.stack([everywhere if c is None else fractions[c] >= min_fraction for c in classes], dim=1)


def region_scores(maps: torch.Tensor, regions: torch.Tensor, n_images: int, readout: str = "fixed") -> LocalScores:
    """Local importances read within each prototype's region (as :func:`~.importance.scores_from_maps`).

    Parameters
    ----------
    maps : torch.Tensor
        (B·(1 + C), P, h, w) similarity maps, originals first.
    regions : torch.Tensor
        (B, P, h, w) bool regions of the B original images (the perturbed copies share them).
    n_images : int
        B.
    readout : str
        ``fixed`` or ``max``.

    Returns
    -------
    LocalScores
        Similarities, locations and deltas; ``valid`` marks the (image, prototype) pairs whose
        region is not empty (elsewhere similarity, location and deltas are 0).
    """
    copies = maps.shape[0] // n_images
    region = regions.to(maps.device).repeat(copies, 1, 1, 1)
    scores = scores_from_maps(maps.float().masked_fill(~region, -torch.inf), n_images, readout)
    valid = regions.flatten(2).any(dim=2).cpu().numpy()
    scores.similarity = np.where(valid, scores.similarity, 0.0)
    scores.location = np.where(valid, scores.location, 0)
    scores.delta = np.where(valid[..., None], scores.delta, 0.0)
    scores.valid = valid
    return scores


@dataclass
class RegionState:
    """Streamed sums of a region analysis (mergeable: associative and commutative).

    Attributes
    ----------
    splits : dict of str to SplitAccumulator
        ``train`` and ``test`` sums (images without a prototype's class weigh 0 for it).
    present : dict of str to ndarray
        Per split, (P,) how many images contain each prototype's class region.
    model : Any
        The model explanation's state (``None`` without one).
    """

    splits: dict[str, SplitAccumulator]
    present: dict[str, np.ndarray]
    model: Any = None

    def merge(self, other: RegionState, explanation: Any = None) -> RegionState:
        """Sum two states (``explanation`` merges the model explanation's part)."""
        model = explanation.merge(self.model, other.model) if explanation is not None else None
        return RegionState({s: self.splits[s].merge(other.splits[s]) for s in SPLITS},
                           {s: self.present[s] + other.present[s] for s in SPLITS}, model)


@dataclass
class RegionAnalysis:
    """The per-class-region analysis of one adapter: settings, then ``measure`` per batch, ``merge``, ``report``.

    Parameters (the attributes)
    ---------------------------
    adapter : PrototypeAdapter
        Dense similarity maps and each prototype's class.
    characteristics : sequence of str
        Nauta characteristics.
    prototypes : sequence of int, optional
        Analysed prototypes (default all).
    min_fraction, readout, weight, train_fraction, n_resamples, sample_size, alpha, seed, examples
        See :func:`region_analysis`.
    """

    adapter: PrototypeAdapter
    characteristics: Sequence[str] = DEFAULT_CHARACTERISTICS
    prototypes: Sequence[int] | None = None
    min_fraction: float = 0.5
    readout: str = "fixed"
    weight: str = "auto"
    train_fraction: float = 0.5
    n_resamples: int = 200
    sample_size: int = 256
    alpha: float = 0.05
    seed: int = 0
    examples: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ConfigError("train_fraction must be in (0, 1)")
        if not 0 < self.min_fraction <= 1:
            raise ConfigError("min_fraction must be in (0, 1]")
        a = self.adapter
        self.perturbations = make_perturbations(list(self.characteristics))
        self.names = [p.name for p in self.perturbations]
        self.ids = list(range(a.num_prototypes)) if self.prototypes is None else [int(p) for p in self.prototypes]
        if not self.ids or min(self.ids) < 0 or max(self.ids) >= a.num_prototypes:
            raise ConfigError(f"prototype indices must lie in [0, {a.num_prototypes})")
        self.classes = [a.prototype_class(p) for p in self.ids]
        self.rule = resolve_weight(self.weight, a)
        explanation = a.explanation()
        # only explanations measured on plain inputs (ScaleProtoSeg's) take part here
        self.explanation = explanation if hasattr(explanation, "measure") else None

    def empty(self) -> RegionState:
        """No image yet."""
        p, c = len(self.ids), len(self.names)
        return RegionState({s: SplitAccumulator.empty(p, c, self.n_resamples, self.sample_size) for s in SPLITS},
                           {s: np.zeros(p, np.int64) for s in SPLITS},
                           self.explanation.init_state() if self.explanation is not None else None)

    def is_train(self, index: int) -> bool:
        """Whether image ``index`` is in the "train" split (seeded by ``(seed, index)`` alone)."""
        return bool(np.random.default_rng([self.seed, int(index)]).random() < self.train_fraction)

    def measure(self, model: ModelHandle | nn.Module, images: Sequence[Image.Image], label_maps: Sequence[np.ndarray],
                indices: Sequence[int], preprocessing: Preprocessing, device: torch.device | str = "cpu"
                ) -> RegionState:
        """The state of one batch: images, their label maps and their indices (which seed split and bootstrap)."""
        indices = np.asarray(indices, np.int64)
        with torch.no_grad():
            x = perturbed_views(images, self.perturbations, preprocessing).to(device)
            maps = self.adapter.similarity_maps(model, x, torch.as_tensor(self.ids))
            regions = region_masks(label_maps, self.classes, tuple(maps.shape[-2:]), self.min_fraction, preprocessing)
            scores = region_scores(maps, regions, len(indices), self.readout)
            state = self.empty()
            train = np.array([self.is_train(i) for i in indices], bool)
            for split, mask in (("train", train), ("test", ~train)):
                if mask.any():
                    sel = indices[mask]
                    counts = poisson_counts([np.random.default_rng([self.seed, 1, int(i)]) for i in sel],
                                            self.n_resamples)
                    prio = np.array([np.random.default_rng([self.seed, 2, int(i)]).random() for i in sel])
                    state.splits[split] = state.splits[split].add(scores.subset(mask), sel, self.rule, counts, prio)
                    state.present[split] = scores.valid[mask].sum(axis=0).astype(np.int64)
            if self.explanation is not None:
                state.model = self.explanation.measure(model, x[: len(indices)])
        return state

    def merge(self, a: RegionState, b: RegionState) -> RegionState:
        """Sum two states."""
        return a.merge(b, self.explanation)

    def report(self, state: RegionState, model: ModelHandle | nn.Module,
               load: Callable[[int], tuple[Image.Image, np.ndarray]], preprocessing: Preprocessing,
               class_names: Sequence[str] = (), device: torch.device | str = "cpu") -> dict[str, Any]:
        """The JSON result (see :func:`region_analysis`); ``load(index)`` gives an image and its label map."""
        a, names, acc = self.adapter, self.names, state.splits
        scores_by = {s: global_scores(acc[s]) for s in SPLITS}
        primary = "train" if acc["train"].n else "test"
        sample = acc["test"].sample if len(acc["test"].sample) else acc[primary].sample
        tests = local_tests(sample.delta) if len(sample) else None
        records = []
        for j, p in enumerate(self.ids):
            cls = self.classes[j]
            g0 = scores_by[primary]
            rec: dict[str, Any] = {
                "prototype": p, "class": cls,
                "class_name": class_names[cls] if cls is not None and 0 <= cls < len(class_names) else None,
                "verdict": verdict(g0.score[j], g0.ci_low[j], names),
                "images_with_region": {s: int(state.present[s][j]) for s in SPLITS},
            }
            if hasattr(a, "scale"):
                rec["scale"] = a.scale(p)
            for s in SPLITS:
                g = scores_by[s]
                rec[f"global_{s}"] = {c: metric(g.score[j, k], (g.ci_low[j, k], g.ci_high[j, k]), n=g.n, unit=a.unit,
                                                higher_is_better=None) for k, c in enumerate(names)}
            if tests is not None:
                rec["tests"] = {c: {"n": int(tests["n"][j, k]), "median": _float(tests["median"][j, k]),
                                    "p": _float(tests["p"][j, k]), "q": _float(tests["q"][j, k]),
                                    "significant": bool(tests["q"][j, k] < self.alpha)} for k, c in enumerate(names)}
            best = int(acc[primary].best_index[j])
            if best >= 0:
                rec["top_patch"] = {"image": best, "similarity": _float(acc[primary].best_similarity[j]),
                                    "box": self._box(model, *load(best), p, cls, preprocessing, device)}
            records.append(rec)
        out: dict[str, Any] = {
            "adapter": a.describe(), "characteristics": names, "readout": self.readout, "weight": self.rule,
            "min_fraction": self.min_fraction, "primary_split": primary,
            "settings": {"seed": self.seed, "train_fraction": self.train_fraction, "n_resamples": self.n_resamples,
                         "sample_size": self.sample_size, "alpha": self.alpha, "correction": "Benjamini-Hochberg",
                         "prototypes": self.ids},
            "splits": {s: {"n_images": acc[s].n, "local_sample": len(acc[s].sample)} for s in SPLITS},
            "units": {"global": f"{a.unit}, {self.rule}-weighted mean over the images containing the prototype's "
                                "class of (original − perturbed) read within the class region",
                      "box": "(y0, y1, x0, x1) model-input pixels, half-open"},
            "prototypes": records,
            "notes": "Per class region: each prototype is read only on the ground-truth pixels of its own class "
                     f"(latent cells at least {self.min_fraction:g} covered); images without that class are left "
                     "out of its scores. Raw importances are in similarity units and not comparable across "
                     "characteristics (see docs/prototypes.md).",
        }
        if self.explanation is not None:
            e = self.explanation
            shown = range(min(self.examples, acc["train"].n + acc["test"].n))
            maps = [{"image": i, **e.pixel_maps(model, preprocessing([load(i)[0]]).to(device))[0]} for i in shown]
            out["model_explanation"] = {"kind": e.kind, "title": e.title, "reference": e.reference,
                                        **e.report(state.model, records, class_names, maps)}
        return out

    def _box(self, model: ModelHandle | nn.Module, image: Image.Image, label_map: np.ndarray, p: int,
             cls: int | None, preprocessing: Preprocessing, device: torch.device | str) -> list[int]:
        """ProtoPNet's box of prototype ``p`` on an image, from its map restricted to the class region."""
        with torch.no_grad():
            x = preprocessing([image]).to(device)
            sim = self.adapter.similarity_maps(model, x, [p])[0, 0]
        region = region_masks([label_map], [cls], tuple(sim.shape), self.min_fraction, preprocessing)[0, 0]
        masked = sim.masked_fill(~region.to(sim.device), float(sim.min())).cpu().numpy()
        return list(patch_box(masked, tuple(x.shape[-2:])))


def region_analysis(adapter: PrototypeAdapter, model: ModelHandle | nn.Module, images: Sequence[Image.Image] | ProbeSet,
                    label_maps: Sequence[np.ndarray] | np.ndarray | None = None, *,
                    preprocessing: Preprocessing | None = None,
                    characteristics: Sequence[str] = DEFAULT_CHARACTERISTICS, class_names: Sequence[str] | None = None,
                    prototypes: Sequence[int] | None = None, min_fraction: float = 0.5, readout: str = "fixed",
                    weight: str = "auto", train_fraction: float = 0.5, n_resamples: int = 200,
                    sample_size: int = 256, batch_size: int = 16, alpha: float = 0.05, seed: int = 0,
                    examples: int = 2, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The prototypes analysis of a segmentation model, each prototype on its class's region.

    Parameters
    ----------
    adapter : PrototypeAdapter
        Gives the dense similarity maps and each prototype's class (e.g.
        :class:`~explainkit.prototypes.model_adapters.scaleprotoseg.ScaleProtoSegPrototypes`).
    model : ModelHandle or torch.nn.Module
        The model (eval mode).
    images : sequence of PIL.Image.Image, or ProbeSet
        N images at source resolution, or a segmentation probe set (its images and label maps
        ``labels/<image stem>.png``, :meth:`~explainkit.data.probe.ProbeSet.label_map`).
    label_maps : sequence of ndarray, optional
        N (H, W) ground-truth class maps, each at its image's resolution (given with images; 255 =
        ignore, as in probe sets).
    preprocessing : Preprocessing, optional
        The model's preprocessing (images, and the label maps' geometry); default the handle's.
    characteristics : sequence of str
        Nauta characteristics (default hue, shape, texture, contrast, saturation).
    class_names : sequence of str, optional
        Names of the classes (for the records; default the probe set's or the handle's).
    prototypes : sequence of int, optional
        Analyse only these prototypes (default all).
    min_fraction, readout
        See :func:`region_masks`, :func:`region_scores`.
    weight : str
        Weight rule of the global means (:func:`~explainkit.prototypes.importance.resolve_weight`).
    train_fraction : float
        Probability that image ``i`` is in the "train" split (seeded by ``(seed, i)``).
    n_resamples, sample_size : int
        Bootstrap resamples; local scores kept for the tests.
    batch_size : int
        Images per step (each brings its C perturbed copies).
    alpha : float
        Level of the per-prototype tests (after Benjamini-Hochberg).
    examples : int
        Images (the first ones) whose per-pixel drivers the model explanation lists.
    seed : int
        Split, bootstrap and sample seeds.
    device : torch.device or str
        Where the model runs.

    Returns
    -------
    dict
        JSON-ready: ``adapter``, ``characteristics``, ``units``, ``splits`` (images per split),
        ``prototypes`` (per prototype: class, images containing its class per split, verdict, global
        scores with 95 % bootstrap CIs, tests, region-restricted top patch box), and
        ``model_explanation`` when the adapter has one.
    """
    if isinstance(images, ProbeSet):
        if not images.has_label_maps:
            raise ConfigError("region analysis needs a probe set with label maps (labels/<image stem>.png and "
                              "classes.txt)")
        if label_maps is not None:
            raise ConfigError("label_maps come from the probe set; pass them only with a list of images")
        class_names = images.class_names if class_names is None else class_names
        label_maps = [images.label_map(i) for i in range(len(images))]
        images = [images.load_image(i) for i in range(len(images))]
    if preprocessing is None:
        if not isinstance(model, ModelHandle):
            raise ConfigError("pass the model's preprocessing (or a ModelHandle that has one)")
        preprocessing = model.require_preprocessing()
    if class_names is None:
        class_names = (model.class_names if isinstance(model, ModelHandle) else None) or ()
    if label_maps is None or len(label_maps) != len(images) or not len(images):
        raise ConfigError("region analysis needs one (H, W) label map per image and at least one image")
    labels = [np.asarray(m) for m in label_maps]
    for im, lab in zip(images, labels):
        if (im.height, im.width) != lab.shape:
            raise ConfigError(f"a {lab.shape[0]}x{lab.shape[1]} label map does not match a "
                              f"{im.height}x{im.width} image")
    run = RegionAnalysis(adapter, characteristics, prototypes, min_fraction, readout, weight, train_fraction,
                         n_resamples, sample_size, alpha, seed, examples)
    state = run.empty()
    for start in range(0, len(images), batch_size):
        idx = range(start, min(start + batch_size, len(images)))
        state = run.merge(state, run.measure(model, [images[i] for i in idx], [labels[i] for i in idx], idx,
                                             preprocessing, device))
    return run.report(state, model, lambda i: (images[i], labels[i]), preprocessing, class_names, device)


def _float(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
