"""The bundled demo: a stamped synthetic world, a tiny model that learned the stamp, a full report.

The demo model was trained by :func:`train_demo_model` on :data:`TRAIN_WORLD` (the stamp appears on
90 % of ``circle`` images and 5 % of the others). The probe world :data:`PROBE_WORLD` has the stamp
on half of every class, so the shortcut shows up in slices, heatmaps, neuron labels and tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.errors import ConfigError

__all__ = ["PROBE_WORLD", "TRAIN_WORLD", "bundled_model_path", "run_demo", "train_demo_model"]

TRAIN_WORLD = WorldSpec(n_images=900, artifact="stamp", artifact_rate=0.9, artifact_other_rate=0.05, seed=0)
PROBE_WORLD = WorldSpec(n_images=300, artifact="stamp", artifact_rate=0.5, artifact_other_rate=0.5, seed=1)
DEMO_EPOCHS = 15
DEMO_ARCH = "explainkit.models:tiny_cnn(num_classes=3)"


def bundled_model_path() -> Path:
    """Path of the committed demo model (safetensors)."""
    return Path(str(files("explainkit.datasets") / "assets" / "demo_model.safetensors"))


def train_demo_model(out: Path, workdir: Path, *, seed: int = 0) -> Path:
    """Regenerate the training world in ``workdir`` and train the demo model into ``out``."""
    from explainkit.datasets.probe import ProbeSet
    from explainkit.datasets.training import train_classifier
    from explainkit.loading.save import save_model
    from explainkit.models import SYNTHETIC_PREPROCESSING

    train_dir = workdir / "world-train"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    write_world(TRAIN_WORLD, train_dir)
    probe = ProbeSet.from_folder(train_dir)
    result = train_classifier(probe, epochs=DEMO_EPOCHS, seed=seed)
    return save_model(result.model, out, arch=DEMO_ARCH, class_names=probe.class_names,
                      preprocessing=SYNTHETIC_PREPROCESSING)


def run_demo(out: Path, *, retrain: bool = False, progress: bool | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Write the probe world and a report with every analyzer that can run into ``out``.

    Parameters
    ----------
    out : Path
        Output folder (``probe/``, ``report/``; ``model.safetensors`` when retraining).
    retrain : bool
        Train the model instead of using the bundled one.
    progress : bool or None
        Progress bars.
    echo : callable
        Receives progress messages.

    Returns
    -------
    dict of str to Path
        Where the report and its inputs are.
    """
    import explainkit
    from explainkit.analyzers import get_analyzer_class, list_analyzers

    out = Path(out)
    if out.exists() and not (out / "probe" / "world.json").exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a previous demo folder; choose another --out")
    probe_dir = out / "probe"
    if probe_dir.exists():
        shutil.rmtree(probe_dir)
    echo(f"writing the probe world ({PROBE_WORLD.n_images} images) to {probe_dir}")
    write_world(PROBE_WORLD, probe_dir)
    model_path = bundled_model_path()
    if retrain or not model_path.is_file():
        echo("training the demo model (about a minute on 2 CPU cores)")
        model_path = train_demo_model(out / "model.safetensors", out)
    handle = explainkit.load_model(model_path)
    probe = explainkit.ProbeSet.from_folder(probe_dir)
    names = [n for n in list_analyzers() if not get_analyzer_class(n)().missing_requirements(handle, probe)]
    echo(f"running analyzers: {', '.join(names)}")
    report_dir = out / "report"
    report = explainkit.analyze(handle, probe, names, out=report_dir, progress=progress, seed=0,
                                config={"demo": True, "model": str(model_path)})
    for f in report.findings:
        echo(f"{f['severity']}: {f['analyzer']}: {f['message']}")
    return {"report": report_dir / "report.html", "json": report_dir / "report.json", "probe": probe_dir,
            "model": model_path}
