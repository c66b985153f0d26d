"""The bundled demo: a stamped synthetic world, a tiny model that learned the stamp, a report and a gate.

The demo model was trained by :func:`train_demo_model` on :data:`TRAIN_WORLD` (the stamp appears on
90 % of ``circle`` images and 5 % of the others). The probe world :data:`PROBE_WORLD` has the stamp
on 40 % of every class, so the shortcut shows up in slices, heatmaps, neuron labels and the gate's
insertion test. (At 50 % the stamp and ``circle & stamp`` cover the images too similarly and INVERT
labels the stamp unit with the compound; at 40 % it is labelled ``stamp``.)

:func:`run_demo` runs ``analyze`` with every analyzer that can run on the model and ``check`` with
the example policy ``assets/demo_policy.toml``. The demo model is *meant* to fail the gate: the
check's verdict and the exit code ``explainkit check`` would return (1) are printed, not
propagated, so ``explainkit demo`` / ``make demo`` exit 0 when everything ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.errors import ConfigError

if TYPE_CHECKING:
    from explainkit.loading.handle import ModelHandle

__all__ = ["PROBE_WORLD", "TRAIN_WORLD", "bundled_asset", "bundled_model_path", "run_demo", "train_demo_model"]

TRAIN_WORLD = WorldSpec(n_images=900, artifact="stamp", artifact_rate=0.9, artifact_other_rate=0.05, seed=0)
PROBE_WORLD = WorldSpec(n_images=300, artifact="stamp", artifact_rate=0.4, artifact_other_rate=0.4, seed=1)
DEMO_EPOCHS = 15
DEMO_ARCH = "explainkit:tiny_cnn(num_classes=3)"


def bundled_asset(name: str) -> Path:
    """Path of a file under ``explainkit/datasets/assets/`` (``demo_policy.toml``, ``stamp.png``, ...)."""
    return Path(str(files("explainkit.datasets") / "assets" / name))


def bundled_model_path() -> Path:
    """Path of the committed demo model (safetensors)."""
    return bundled_asset("demo_model.safetensors")


def train_demo_model(out: Path, workdir: Path, *, seed: int = 0) -> Path:
    """Regenerate the training world in ``workdir`` and train the demo model into ``out``."""
    from explainkit.data.probe import ProbeSet
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
    """Write the probe world, a report with every analyzer that can run, and the gate's verdict into ``out``.

    Parameters
    ----------
    out : Path
        Output folder: ``probe/``, ``report/`` (``analyze``), ``demo_policy.toml`` and ``stamp.png``
        (the example policy and its artifact), ``check/`` (``check``: report.json, report.html,
        junit.xml); ``model.safetensors`` when retraining.
    retrain : bool
        Train the model instead of using the bundled one.
    progress : bool or None
        Progress bars.
    echo : callable
        Receives progress messages and the gate's verdict.

    Returns
    -------
    dict of str to Path
        Where the reports and their inputs are.

    Notes
    -----
    The bundled model relies on the stamp, so the gate FAILs; that is the demo's point, not an error.
    The exit code ``explainkit check`` would return is echoed, and this function returns normally.
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
    skipped = sorted(set(list_analyzers()) - set(names))
    echo(f"running analyzers: {', '.join(names)}" + (f" (cannot run here: {', '.join(skipped)})" if skipped else ""))
    report_dir = out / "report"
    report = explainkit.analyze(handle, probe, names, out=report_dir, progress=progress, seed=0,
                                config={"demo": True, "model": str(model_path)})
    for f in report.findings:
        echo(f"{f['severity']}: {f['analyzer']}: {f['message']}")
    paths = {"report": report_dir / "report.html", "json": report_dir / "report.json", "probe": probe_dir,
             "model": model_path}
    return {**paths, **_run_gate(handle, out, progress=progress, echo=echo)}


def _run_gate(handle: ModelHandle, out: Path, *, progress: bool | None, echo: Callable[[str], None]) -> dict[str, Path]:
    """Copy the example policy and its artifact next to ``probe/``, run ``check`` and echo the verdict."""
    import explainkit

    policy = out / "demo_policy.toml"
    shutil.copyfile(bundled_asset("demo_policy.toml"), policy)
    shutil.copyfile(bundled_asset("stamp.png"), out / "stamp.png")
    check_dir = out / "check"
    echo(f"running the gate: explainkit check --policy {policy}")
    result = explainkit.check(handle, policy, out=check_dir, junit=check_dir / "junit.xml", progress=progress)
    for c in result.checks:
        scope = "gating" if c["gating"] else c["severity"]
        echo(f"check {c['id']} ({c['kind']}, {scope}): {c['status'].upper()}: {c['reason']}")
    echo(f"gate verdict: {result.status.upper()}; `explainkit check` would exit {result.exit_code} "
         "(the demo reports it and exits 0)")
    return {"check_report": result.paths["html"], "check_json": result.paths["json"], "junit": result.paths["junit"],
            "policy": policy}
