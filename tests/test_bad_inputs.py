"""A corpus of bad inputs: each gives a one-line error on stderr and its documented exit code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import explainkit
from explainkit.cli.main import main
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyCNN

ARCH = "explainkit.models:tiny_cnn(num_classes=3)"
XSS = "<script>alert(1)</script>"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_world, demo_model_path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    model = TinyCNN(3)
    sd = model.state_dict()
    torch.save(sd, d / "weights.pt")
    torch.save(sd, d / "truncated.pt")
    (d / "truncated.pt").write_bytes((d / "truncated.pt").read_bytes()[:500])
    save_file(sd, d / "st.safetensors")
    (d / "st_trunc.safetensors").write_bytes((d / "st.safetensors").read_bytes()[:-100])
    (d / "empty.pt").write_bytes(b"")
    (d / "random.bin").write_bytes(os.urandom(4096))
    torch.save(_Evil(d / "pwned"), d / "evil.pt")
    torch.jit.save(torch.jit.script(model.eval()), d / "script.pt")
    nan_model = TinyCNN(3)
    with torch.no_grad():
        nan_model.classifier.weight.fill_(float("nan"))
    explainkit.save_model(nan_model, d / "nan.safetensors", arch=ARCH, class_names=["circle", "square", "triangle"],
                          preprocessing=SYNTHETIC_PREPROCESSING)
    explainkit.save_model(model, d / "other_classes.safetensors", arch=ARCH, class_names=["a", "b", "c"],
                          preprocessing=SYNTHETIC_PREPROCESSING)
    xss = d / "xss_probe"
    xss.mkdir()
    rows = ["path,label"]
    for k, cls in enumerate(["circle", "square", "triangle"]):
        src = sorted((small_world / cls).iterdir())[0]
        shutil.copy(src, xss / f"{k}.png")
        rows.append(f"{k}.png,{XSS if cls == 'triangle' else cls}")
    (xss / "labels.csv").write_text("\n".join(rows) + "\n")
    (xss / "classes.txt").write_text(f"circle\nsquare\n{XSS}\n")

    def probe_copy(name: str) -> Path:
        target = d / name
        shutil.copytree(small_world, target)
        return target

    bad_img = probe_copy("bad_image")
    first = sorted((bad_img / "circle").iterdir())[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for name, edit in {
        "nonbinary": lambda t: t.replace(",1\n", ",2\n", 1),
        "dup_path": lambda t: t + t.splitlines()[1] + "\n",
        "missing_image": lambda t: t + "circle/nope.png" + ",0" * (len(t.splitlines()[0].split(",")) - 1) + "\n",
        "short_row": lambda t: t + "circle/x.png,1\n",
    }.items():
        p = probe_copy(name)
        (p / "concepts.csv").write_text(edit((p / "concepts.csv").read_text()))
    desc = probe_copy("misaligned")
    (desc / "descriptions.json").write_text((desc / "descriptions.json").read_text().replace('"circle"', '"oval"', 1))
    (d / "empty_dir").mkdir()
    flat = d / "flat_labels"
    flat.mkdir()
    shutil.copy(next((small_world / "circle").iterdir()), flat / "a.png")
    (flat / "labels.csv").write_text("file,class\na.png,circle\n")
    (d / "bad.toml").write_text("batch_size = 4\ndevice = \n")
    (d / "unknown.toml").write_text("batch_size = 4\n\nbatchsize = 8\n")
    (d / "trust.toml").write_text("trust = true\n")
    return {"dir": d, "world": small_world, "demo": demo_model_path}


def _cases(c):
    d, w, demo = c["dir"], str(c["world"]), str(c["demo"])
    a = ["analyze"]
    return {
        "missing model file": (a + [str(d / "nope.pt"), "--data", w], 2, "does not exist"),
        "empty model file": (a + [str(d / "empty.pt"), "--data", w], 4, "is empty"),
        "truncated zip": (a + [str(d / "truncated.pt"), "--data", w, "--arch", ARCH], 4, "corrupt"),
        "truncated safetensors": (a + [str(d / "st_trunc.safetensors"), "--data", w, "--arch", ARCH], 4,
                                  "truncated"),
        "random bytes": (a + [str(d / "random.bin"), "--data", w], 4, "unrecognised model format"),
        "malicious pickle": (a + [str(d / "evil.pt"), "--data", w], 4, "system"),
        "torchscript without trust": (a + [str(d / "script.pt"), "--data", w], 4, "--trust"),
        "weights without arch": (a + [str(d / "weights.pt"), "--data", w], 2, "pass --arch"),
        "wrong arch": (a + [str(d / "weights.pt"), "--data", w, "--arch", "torchvision:resnet18"], 2,
                       "weights do not match"),
        "unknown arch": (a + [str(d / "weights.pt"), "--data", w, "--arch", "torchvision:nonet"], 2,
                         "unknown torchvision architecture"),
        "malformed arch": (a + [str(d / "weights.pt"), "--data", w, "--arch", "resnet18"], 2, "bad --arch"),
        "missing layer": (a + [demo, "--data", w, "--layer", "featurs.3"], 2, "closest: features.3"),
        "missing data folder": (a + [demo, "--data", str(d / "nodata")], 2, "does not exist"),
        "no images": (a + [demo, "--data", str(d / "empty_dir")], 2, "no images found"),
        "corrupt image": (a + [demo, "--data", str(d / "bad_image")], 2, "unreadable image"),
        "non-binary concept": (a + [demo, "--data", str(d / "nonbinary")], 2, "non-binary value '2'"),
        "duplicate path": (a + [demo, "--data", str(d / "dup_path")], 2, "duplicate path"),
        "concept row without image": (a + [demo, "--data", str(d / "missing_image")], 2,
                                      "circle/nope.png.*no such"),
        "short concept row": (a + [demo, "--data", str(d / "short_row")], 2, "expected 14 columns"),
        "misaligned descriptions": (a + [demo, "--data", str(d / "misaligned")], 2, "columns must align"),
        "bad labels header": (a + [demo, "--data", str(d / "flat_labels")], 2, "header must be 'path,label'"),
        "bad toml": (a + [demo, "--data", w, "--config", str(d / "bad.toml")], 2, "invalid TOML.*line 2"),
        "unknown toml key": (a + [demo, "--data", w, "--config", str(d / "unknown.toml")], 2,
                             "line 3: unknown key 'batchsize'"),
        "trust in config": (a + [demo, "--data", w, "--config", str(d / "trust.toml")], 2, "cannot be set"),
        "nan outputs": (a + [str(d / "nan.safetensors"), "--data", w], 3, "non-finite outputs"),
        "bad mean": (a + [demo, "--data", w, "--mean", "1,2"], 2, "bad mean"),
        "unknown analyzer": (a + [demo, "--data", w, "--analyzer", "nope"], 2, "unknown analyzer 'nope'"),
        "bad analyzer parameter": (a + [demo, "--data", w, "--analyzer", "performance:n_resamples=5"], 2,
                                   "performance: n_resamples must be >= 100, not 5"),
        "unknown analyzer parameter": (a + [demo, "--data", w, "--analyzer", "performance:foo=1"], 2,
                                       "bad parameter"),
        "cuda without gpu": (a + [demo, "--data", w, "--device", "cuda:7"], 2, "CUDA is not available"),
        "class names mismatch": (a + [str(d / "other_classes.safetensors"), "--data", w], 2,
                                 "probe classes not among"),
        "batch size zero": (a + [demo, "--data", w, "--batch-size", "0"], 2, "batch-size"),
        "unknown option": (a + [demo, "--data", w, "--bogus"], 2, "No such option"),
        "missing --data": (a + [demo], 2, "--data is required"),
        "unknown command": (["frobnicate"], 2, "No such command"),
    }


CASE_NAMES = list(_cases({"dir": Path("."), "world": Path("."), "demo": Path(".")}))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(case, corpus, capsys, tmp_path):
    argv, code, pattern = _cases(corpus)[case]
    if argv[0] == "analyze":
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Try '")]
    assert len(lines) == 1, err
    assert lines[0].startswith("explainkit: error: ")
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (corpus["dir"] / "pwned").exists()
    if code != 0:
        assert not (tmp_path / "out" / "report.json").exists()  # nothing half-written


def test_script_class_names_are_escaped(corpus, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text(f"circle\nsquare\n{XSS}\n")
    out = tmp_path / "out"
    assert main(["analyze", str(corpus["demo"]), "--data", str(corpus["dir"] / "xss_probe"),
                 "--out", str(out), "--class-names", str(names)]) == 0
    html = (out / "report.html").read_text()
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_debug_shows_traceback(corpus, capsys, tmp_path):
    assert main(["--debug", "analyze", str(corpus["dir"] / "random.bin"), "--data", str(corpus["world"]),
                 "--out", str(tmp_path)]) == 4
    assert "Traceback" in capsys.readouterr().err
