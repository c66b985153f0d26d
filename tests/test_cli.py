"""The click front end: commands, config precedence, formats, exit codes."""

from __future__ import annotations

import json

import pytest

from explainkit.cli.main import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_analyze_text_and_json(capsys, small_world, demo_model_path, tmp_path):
    code, out, err = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out",
                          str(tmp_path / "a"), "--no-progress")
    assert code == 0 and "status: FINDINGS" in out and "performance" in out and "report.html" in out
    assert err == ""
    code, out, _ = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out",
                        str(tmp_path / "b"), "--format", "json", "--analyzer", "performance")
    doc = json.loads(out)
    assert code == 0 and doc["assets"] == {} and "performance" in [s["analyzer"] for s in doc["sections"]]


def test_fail_on_warning_exits_1(capsys, small_world, demo_model_path, tmp_path):
    code, _, _ = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path),
                      "--fail-on", "warning", "--analyzer", "performance")
    assert code == 1  # the demo model's stamp slice gap is a warning


def test_config_precedence(capsys, small_world, demo_model_path, tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data = "{small_world}"\nseed = 5\nbatch_size = 7\ndevice = "cpu"\n'
                   'analyzers = ["performance"]\n[analyzer.performance]\nn_resamples = 300\n')
    monkeypatch.setenv("EXPLAINKIT_BATCH_SIZE", "9")
    code, out, _ = _run(capsys, "analyze", str(demo_model_path), "--config", str(cfg), "--seed", "11",
                        "--out", str(tmp_path / "o"), "--format", "json")
    assert code == 0
    conf = json.loads(out)["provenance"]["config"]
    assert conf["seed"] == {"value": 11, "source": "command line"}
    assert conf["batch_size"] == {"value": 9, "source": "environment"}
    assert conf["device"] == {"value": "cpu", "source": "config file"}
    assert conf["fail_on"] == {"value": "never", "source": "default"}
    prov = json.loads(out)["provenance"]
    assert prov["seed"] == 11 and prov["batch_size"] == 9
    assert json.loads(out)["sections"][0]["params"]["n_resamples"] == 300


def test_analyzer_params_from_cli(capsys, small_world, demo_model_path, tmp_path):
    code, out, _ = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path),
                        "--analyzer", "performance:n_resamples=250,class_slices=false", "--format", "json")
    params = json.loads(out)["sections"][0]["params"]
    assert code == 0 and params["n_resamples"] == 250 and params["class_slices"] is False


def test_layers_analyzers_inspect(capsys, demo_model_path):
    code, out, _ = _run(capsys, "layers", str(demo_model_path))
    assert code == 0 and "features.3.0" in out and "Conv2d" in out
    code, out, _ = _run(capsys, "analyzers", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and {"name": "performance"}.items() <= rows[[r["name"] for r in rows].index("performance")].items()
    code, out, _ = _run(capsys, "inspect", str(demo_model_path))
    info = json.loads(out)
    assert code == 0 and info["format"] == "safetensors" and info["trust_mode"] == "weights-only"
    assert info["n_parameters"] > 10_000


def test_world_and_train(capsys, tmp_path):
    code, out, _ = _run(capsys, "world", str(tmp_path / "w"), "--n-images", "30", "--class-factor", "colour",
                        "--artifact", "stamp")
    assert code == 0 and (tmp_path / "w" / "red").is_dir() and (tmp_path / "w" / "artifacts" / "stamp.png").exists()
    code, out, err = _run(capsys, "train", str(tmp_path / "w"), "--out", str(tmp_path / "m.safetensors"),
                          "--epochs", "1")
    assert code == 0 and "epoch 1" in err
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "m.safetensors"))
    assert json.loads(out)["class_names"] == ["blue", "green", "red"]


def test_interrupt_maps_to_runtime_exit(capsys, small_world, demo_model_path, monkeypatch, tmp_path):
    import explainkit.cli.analyze as mod

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "run_analyze", interrupt)
    code, _, err = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path))
    assert code == 3 and err.strip() == "explainkit: error: interrupted"


def test_unexpected_errors_are_one_line(capsys, small_world, demo_model_path, monkeypatch, tmp_path):
    import explainkit.cli.analyze as mod

    def crash(*a, **k):
        raise ValueError("kaput")

    monkeypatch.setattr(mod, "run_analyze", crash)
    code, _, err = _run(capsys, "analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path))
    assert code == 3 and err.count("\n") == 1 and "internal error: ValueError: kaput" in err


def test_help_and_version(capsys):
    assert _run(capsys, "--help")[0] == 0
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and "explainkit" in out


@pytest.mark.slow
def test_demo_command(capsys, tmp_path):
    code, _, _ = _run(capsys, "demo", "--out", str(tmp_path / "demo"), "--no-progress")
    assert code == 0 and (tmp_path / "demo" / "report" / "report.html").exists()
