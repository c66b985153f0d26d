"""Shared fixtures: tiny models and small synthetic worlds, built in the tests (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ARTIFACTS = Path(os.environ.get("EXPLAINKIT_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for test artifacts kept after the run (screenshots, sample reports)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A 120-image stamped shape world (stamp independent of class), written as a probe folder."""
    from explainkit.datasets.synthetic import WorldSpec, write_world

    root = tmp_path_factory.mktemp("world") / "probe"
    write_world(WorldSpec(n_images=120, artifact="stamp", artifact_rate=0.5, artifact_other_rate=0.5, seed=3), root)
    return root


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """The bundled demo model (trained on the stamped world; relies on the stamp)."""
    from explainkit.datasets.demo import bundled_model_path

    return bundled_model_path()


@pytest.fixture()
def demo_handle(demo_model_path):
    """A fresh handle on the bundled demo model."""
    import explainkit

    return explainkit.load_model(demo_model_path)


@pytest.fixture()
def tiny_cnn() -> torch.nn.Module:
    """An untrained, seeded TinyCNN with 3 classes, in eval mode."""
    from explainkit.models import TinyCNN

    torch.manual_seed(0)
    return TinyCNN(num_classes=3).eval()


#: Cheaper settings of the heavier analyzers, for tests about the machinery rather than the methods.
LIGHT_PARAMS = {
    "gradcam": {"methods": ["gradcam", "layercam"], "metric_images": 4, "road_images": 2, "steps": 4,
                "sanity_images": 2, "sanity_steps": 2, "n_examples": 2, "n_resamples": 200},
    "captum": {"methods": ["saliency"], "metric_images": 4, "road_images": 2, "steps": 4, "sanity_images": 2,
               "sanity_steps": 2, "n_examples": 2, "n_resamples": 200},
    "prototypes": {"per_class": 1, "n_resamples": 50, "local_images": 1, "max_shown": 2, "null_models": 2},
    "dissect": {"top_images": 1, "max_image_units": 1},
    "information": {"permutations": 19, "resamples": 10},
    "tcav": {"concepts": ["stamp"], "runs": 2, "max_images": 6, "min_images": 3},
    "reliability": {"resamples": 3, "folds": 2},
}


@pytest.fixture(scope="session")
def light_specs():
    """``names -> [(name, cheap params), ...]`` for the analyzers in :data:`LIGHT_PARAMS`."""
    return lambda names: [(n, LIGHT_PARAMS.get(n, {})) for n in names]


@pytest.fixture(scope="session")
def validated_section():
    """``validated_section(out, name)``: load ``out/report.json``, validate it against the report schema and the
    section's ``data`` against its own schema, and return that section (dict)."""
    import json

    import jsonschema

    from explainkit.report import schema_path, section_schema_path

    report_schema = json.loads(Path(schema_path()).read_text())

    def check(out: Path, name: str) -> dict:
        doc = json.loads((Path(out) / "report.json").read_text())
        jsonschema.validate(doc, report_schema)
        section = next(s for s in doc["sections"] if s["analyzer"] == name)
        jsonschema.validate(section["data"], json.loads(Path(section_schema_path(name)).read_text()))
        return section

    return check
