"""The factor matrix: whether the prototypes analyzer names the characteristic that was planted.

For every planted world (:mod:`explainkit.datasets.planted`), model family and seed, a model is
trained on the world, the ``prototypes`` analyzer runs on a held-out probe world with its defaults,
and the characteristic each measure ranks first is recorded:

* ``headline`` — what the report says: the first of the calibrated decision relevance, and whether
  it is significantly ahead (``ahead``), tied (``tie``) or nothing stands out (``none``);
* ``decision`` — the first of the uncalibrated decision relevance (class-balanced drop of the
  target's log-probability, matched controls applied, no re-initialised copies);
* ``prototypes`` — the first of the calibrated prototype importances;
* ``raw`` — the first of Nauta's raw importances (mean global importance over prototypes).

Usage::

    python -m explainkit.datasets.factor_matrix --out matrix.json [--seeds 0,1,2] [--models cnn,protopnet]

prints the confusion tables (planted characteristic × first-ranked characteristic, per measure)
as Markdown and writes every cell to ``--out``. Trained models are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from explainkit.datasets.planted import EXPECTED, PLANTED, PlantedSpec, write_planted

__all__ = ["MATRIX_WORLDS", "MODELS", "Cell", "MatrixSettings", "confusion", "main", "markdown", "run_cell"]

#: The worlds of the matrix (``warmth`` is the colour-family world of issue 19, not a matrix row).
MATRIX_WORLDS = ("shape", "hue", "texture", "contrast", "saturation")
MODELS = ("cnn", "protopnet")
MEASURES = ("headline", "decision", "prototypes", "raw")


@dataclass(frozen=True)
class MatrixSettings:
    """Sizes of the matrix (defaults: the documented run).

    Attributes
    ----------
    size : int
        Image side of the worlds and the models' input.
    n_train, n_probe : int
        Training and probe images per world.
    cnn_epochs : int
        Epochs of :func:`~explainkit.datasets.training.train_classifier`.
    protopnet_epochs : int
        Pre-training and joint epochs of :func:`~explainkit.datasets.protopnet.train_protopnet`
        (3 last-layer epochs).
    analyzer : dict
        Extra ``prototypes`` parameters (defaults otherwise).
    """

    size: int = 48
    n_train: int = 800
    n_probe: int = 120
    cnn_epochs: int = 20
    protopnet_epochs: int = 8
    analyzer: dict = field(default_factory=dict)

    def preprocessing(self) -> dict[str, Any]:
        """The models' preprocessing."""
        return {"input_size": (self.size, self.size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


@dataclass
class Cell:
    """One trained model's result."""

    planted: str
    model: str
    seed: int
    accuracy: float
    expected: str
    first: dict[str, str | None]
    status: str
    headline: str
    train_seconds: float
    analyze_seconds: float

    @property
    def correct(self) -> bool:
        """The headline names the planted characteristic and says it is significantly first."""
        return self.status == "ahead" and self.first["headline"] == self.expected


def _train(planted: str, model: str, seed: int, settings: MatrixSettings, workdir: Path) -> tuple[torch.nn.Module,
                                                                                                   float]:
    from explainkit.data.probe import ProbeSet
    from explainkit.datasets.protopnet import train_protopnet
    from explainkit.datasets.training import train_classifier
    from explainkit.loading.preprocessing import Preprocessing
    from explainkit.models import TinyCNN, TinyProtoPNet

    n_classes = len(PLANTED[planted])
    net = TinyCNN(num_classes=n_classes) if model == "cnn" else TinyProtoPNet(num_classes=n_classes)
    cache = workdir / f"{planted}-{model}-{seed}-{settings.size}-{settings.n_train}.pt"
    if cache.is_file():
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval(), 0.0
    root = workdir / f"{planted}-{seed}-{settings.size}-{settings.n_train}-train"
    if not root.exists():
        write_planted(PlantedSpec(planted, settings.n_train, settings.size, seed), root)
    train = ProbeSet.from_folder(root)
    prep = Preprocessing(**settings.preprocessing())
    start = time.perf_counter()
    if model == "cnn":  # the recipes build the default model after seeding
        net = train_classifier(train, epochs=settings.cnn_epochs, seed=seed, preprocessing=prep).model
    else:
        e = settings.protopnet_epochs
        net = train_protopnet(train, pretrain_epochs=e, epochs=e, last_layer_epochs=3, seed=seed,
                              preprocessing=prep).model
    seconds = time.perf_counter() - start
    torch.save(net.state_dict(), cache)
    return net.eval(), seconds


def run_cell(planted: str, model: str, seed: int, settings: MatrixSettings, workdir: str | Path) -> Cell:
    """Train (or load) one model and analyse it on a held-out probe world.

    Parameters
    ----------
    planted : str
        The planted characteristic (a key of :data:`~explainkit.datasets.planted.PLANTED`).
    model : str
        ``"cnn"`` (:class:`~explainkit.models.TinyCNN`, channel prototypes) or ``"protopnet"``
        (:class:`~explainkit.models.TinyProtoPNet`, its prototype vectors).
    seed : int
        Seeds the training world, the training and the analysis (the probe world uses ``seed + 100``).
    settings : MatrixSettings
        Sizes.
    workdir : str or Path
        Cache of worlds and trained models.

    Returns
    -------
    Cell
        What each measure ranks first.
    """
    import explainkit

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    net, train_seconds = _train(planted, model, seed, settings, workdir)
    probe = workdir / f"{planted}-{seed + 100}-{settings.size}-{settings.n_probe}-probe"
    if not probe.exists():
        write_planted(PlantedSpec(planted, settings.n_probe, settings.size, seed + 100), probe)
    handle = explainkit.wrap(net, class_names=PLANTED[planted], **settings.preprocessing())
    params = {"local_images": 0, "max_shown": 0, **settings.analyzer}
    start = time.perf_counter()
    report = explainkit.analyze(handle, probe, ["performance", ("prototypes", params)], seed=seed, batch_size=40)
    seconds = time.perf_counter() - start
    section = report.section("prototypes")
    data, summary = section["data"], section["summary"]
    relies = summary["relies_on"]
    first = {"headline": data["decision"]["overall"]["ranking"][0]["characteristic"],
             "decision": _first_decision_drop(data),
             "prototypes": data["calibrated_ranking"][0]["characteristic"],
             "raw": data["ranking"][0]["characteristic"]}
    accuracy = report.section("performance")["data"]["accuracy"]["value"]
    return Cell(planted, model, seed, float(accuracy), EXPECTED[planted], first, relies["status"],
                relies["statement"], train_seconds, seconds)


def _first_decision_drop(data: dict[str, Any]) -> str:
    """First characteristic by the uncalibrated, class-balanced drop of log p(target), controls applied."""
    names = data["characteristics"]
    controls = {c["characteristic"]: f"{c['control']} (control)" for c in data["calibration"]["controls"]}
    per_class = [c["log_prob_drop"] for c in data["decision"]["per_class"]]

    def drop(name: str) -> float:
        return sum(c[name]["value"] - (c[controls[name]]["value"] if name in controls else 0.0)
                   for c in per_class) / len(per_class)

    return max(names, key=drop)


def confusion(cells: Sequence[Cell], measure: str, models: Sequence[str] = MODELS) -> dict[str, dict[str, int]]:
    """Counts of (planted characteristic → characteristic ranked first by ``measure``) over ``cells``."""
    table: dict[str, dict[str, int]] = {}
    for c in cells:
        if c.model in models:
            row = table.setdefault(c.planted, {})
            key = c.first[measure] or "none"
            row[key] = row.get(key, 0) + 1
    return table


def markdown(cells: Sequence[Cell], characteristics: Sequence[str] = MATRIX_WORLDS) -> str:
    """The confusion tables as Markdown: per measure, rows = planted, columns = ranked first (n cells)."""
    lines = []
    for measure in MEASURES:
        for models in ((m,) for m in sorted({c.model for c in cells})):
            table = confusion(cells, measure, models)
            lines += ["", f"**{measure}** — {models[0]}", "",
                      "| planted \\ first | " + " | ".join(characteristics) + " |",
                      "|---|" + "---|" * len(characteristics)]
            for planted in characteristics:
                row = table.get(planted, {})
                lines.append(f"| {planted} | " + " | ".join(str(row.get(c, 0)) for c in characteristics) + " |")
    ahead = sum(c.correct for c in cells)
    lines += ["", f"Headline names the planted characteristic as significantly first in {ahead} of {len(cells)} "
              "cells."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the matrix, print the tables, write the cells as JSON."""
    ap = argparse.ArgumentParser(prog="python -m explainkit.datasets.factor_matrix", description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default=",".join(MATRIX_WORLDS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=MatrixSettings.size)
    ap.add_argument("--n-train", type=int, default=MatrixSettings.n_train)
    ap.add_argument("--analyzer", default="{}", help="extra prototypes parameters as JSON")
    ap.add_argument("--workdir", default="factor-matrix-work")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = MatrixSettings(size=args.size, n_train=args.n_train, analyzer=json.loads(args.analyzer))
    cells = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for planted in args.worlds.split(","):
            for model in args.models.split(","):
                cell = run_cell(planted, model, seed, settings, args.workdir)
                cells.append(cell)
                print(f"{planted:10s} {model:9s} seed {seed}: accuracy {cell.accuracy:.2f}, first {cell.first}, "
                      f"{cell.status} ({cell.train_seconds:.0f}+{cell.analyze_seconds:.0f} s)", flush=True)
    print(markdown(cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": asdict(settings), "cells": [asdict(c) for c in cells]},
                                             indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
