"""Hostile and broken inputs, as an attacker or a careless user would give them (issue 12).

Every case of the corpus runs the real command line in-process and asserts the trust boundary:

* the documented exit code, and exactly the expected number of lines on stderr (one, an error or a
  warning, unless the case says otherwise), never a traceback;
* no marker file: every payload tries to ``touch`` a file in the marker folder; a payload case must
  also name the source of its refusal (file and key, variable, or metadata), so that a run that only
  failed later, after the payload ran or was honoured, does not count as a refusal;
* no file written outside ``--out`` (nor in the corpus), and no staging folder left behind;
* nothing on stdout or stderr that a terminal or a CI runner would interpret: no control characters,
  no line starting with ``::`` or ``##[`` other than explainkit's own annotations;
* every ``--option`` and every ``pass key=`` an error message suggests exists.

Families: pickles, architecture specs (config file, environment, model metadata), truncated and
oversized files, configs, policies, images (every PIL mode, 16 bit), masks, model outputs, output
paths, caches, report JSON, symlinks, log injection, analyzer parameters, and hints that must be
followable. The fixtures are tiny (a 12-image world, TinyCNN weights) and shared by the session.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import explainkit
from explainkit.cli.main import cli, main
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyCNN

MOD = __name__
PERF = "performance:n_resamples=100"
GRADCAM_LIGHT = ("methods=gradcam,metric_images=2,road_images=1,steps=2,sanity=false,n_examples=1,"
                 "n_random=0,n_resamples=100,save_maps=false")
#: Progress lines (stderr is not a terminal here): not part of an error message.
_PROGRESS = re.compile(r"^explainkit: (analyze|check|round \d+ \(.*\)|finalize \S+): .*(images/s|done in)")

FORWARD_CALLS = [0]


# -- models the command line names with --arch (trusted: the command line may choose code) -----------
class CountingCNN(TinyCNN):
    """TinyCNN that counts its forward passes (proves a check happened before the first one)."""

    def forward(self, x):
        FORWARD_CALLS[0] += 1
        return super().forward(x)


class UserNet(TinyCNN):
    """A user's own model class, pickled whole with ``torch.save(module)``."""


def _kaputt():
    raise RuntimeError("kaputt")


class _Odd(TinyCNN):
    kind = "flat"

    def forward(self, x):
        z = super().forward(x)
        return {
            "flat": lambda: z.reshape(-1),
            "four_d": lambda: z[:, :, None, None],
            "int": lambda: z.round().long(),
            "none": lambda: None,
            "string": lambda: "logits",
            "dict": lambda: {"features": z.detach(), "logits": z},
            "ambiguous": lambda: {"a": z * 0.5, "b": z},
            "tuple": lambda: (z, z.detach()),
            "two": lambda: z[:, :2],
            "raise": _kaputt,
            "zeros": lambda: _kaputt() if float(x.std()) == 0 else z,
        }[self.kind]()


def odd(kind: str, num_classes: int = 3) -> nn.Module:
    """TinyCNN (same weights layout) whose output has an odd structure, shape or dtype."""
    model = _Odd(num_classes)
    model.kind = kind
    return model


def counting_cnn(num_classes: int = 3) -> nn.Module:
    return CountingCNN(num_classes)


class _MLP(nn.Module):
    """No spatial layer at all."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 16), nn.ReLU(), nn.Linear(16, 3))
        self.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING)

    def forward(self, x):
        return self.net(x)


def mlp() -> nn.Module:
    return _MLP()


class _Tokens(nn.Module):
    """A ViT-like model whose 65 tokens fit both 1+8x8 and 16+7x7 (the token grid is ambiguous)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)
        self.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.cls.expand(len(x), -1, -1), t], 1))
        return self.head(t[:, 0])


def tokens() -> nn.Module:
    return _Tokens()


class _VolumeNet(nn.Module):
    """A Conv3d classifier of (B, C, D, H, W) volumes (two classes)."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        FORWARD_CALLS[0] += 1
        return self.head(self.features(x))


def volume_net(in_channels: int = 1) -> nn.Module:
    return _VolumeNet(in_channels)


# -- payloads ---------------------------------------------------------------------------------------
class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _string_op(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _torch_zip(path: Path, pickle_bytes: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")


def _raw_pickles(m: Path) -> dict[str, bytes]:
    cmd = _touch(m).encode()
    return {
        "inst": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "obj": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "memo_stack_global": (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93"
                              + b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85R."),
        "nested_reduce": (b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n" + _string_op("os") + b"\x85R"
                          + _string_op("system") + b"\x86R" + _string_op(cmd.decode()) + b"\x85R."),
        "ext_opcode": b"\x80\x02\x82\x01.",
        "persid": b"\x80\x02" + _string_op("evil") + b"Q.",
    }


# -- the corpus on disk -----------------------------------------------------------------------------
def _sixteen_bit(values: np.ndarray) -> Image.Image:
    return Image.frombytes("I;16", values.shape[::-1], values.astype("<u2").tobytes())


def _png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _copy_world(world: Path, target: Path) -> Path:
    shutil.copytree(world, target, symlinks=True)
    return target


def _first_image(root: Path) -> Path:
    return sorted((root / "circle").iterdir())[0]


MODES = ("RGB", "RGBA", "L", "LA", "1", "P", "CMYK", "I;16", "I", "F")


def _in_mode(rgb: np.ndarray, mode: str, alpha: np.ndarray | None = None) -> Image.Image:
    """The (H, W, 3) uint8 picture ``rgb`` stored in PIL mode ``mode`` (raw bytes, no PIL conversion)."""
    h, w = rgb.shape[:2]
    gray = rgb.mean(2).astype(np.uint8)
    alpha = np.full((h, w), 255, np.uint8) if alpha is None else alpha
    raw = {
        "RGB": rgb, "RGBA": np.dstack([rgb, alpha]), "L": gray, "LA": np.dstack([gray, alpha]),
        "CMYK": np.dstack([255 - rgb, np.full((h, w), 40, np.uint8)]),
        "I;16": gray.astype("<u2") * 257, "I": gray.astype("<i4") * 257, "F": gray.astype("<f4") / 255.0,
    }
    if mode == "1":
        return Image.frombytes("L", (w, h), gray.tobytes()).point(lambda v: 255 if v > 127 else 0).convert("1")
    if mode == "P":
        return Image.frombytes("RGB", (w, h), rgb.tobytes()).quantize(16)
    return Image.frombytes(mode, (w, h), np.ascontiguousarray(raw[mode]).tobytes())


def _mode_images(size: int = 64) -> dict[str, Image.Image]:
    """One image per PIL mode a probe set can contain, from a fixed RGB picture (alpha: a ramp)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, size).astype(np.uint8), (size, 1))
    return {mode: _in_mode(rgb, mode, alpha) for mode in MODES}


def _expected_rgb(image: Image.Image) -> np.ndarray:
    """The RGB an image means, computed from its raw values without PIL's mode conversions.

    Value ranges: 8-bit modes 0..255; ``I;16`` and ``I`` 0..65535; ``F`` 0..1. Alpha is composited
    on white; CMYK is ``255 * (1 - c) * (1 - k)``; palettes are looked up.
    """
    mode = image.mode
    a = np.asarray(image)
    if mode in ("I;16", "I"):
        g = np.clip(a.astype(np.float64) / 65535.0, 0, 1) * 255.0
        return np.repeat(np.rint(g)[..., None], 3, axis=2).astype(np.uint8)
    if mode == "F":
        g = np.clip(a.astype(np.float64), 0, 1) * 255.0
        return np.repeat(np.rint(g)[..., None], 3, axis=2).astype(np.uint8)
    if mode == "1":
        return np.repeat((a.astype(np.uint8) * 255)[..., None], 3, axis=2)
    if mode == "P":
        palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
        return palette[a]
    if mode == "CMYK":
        c = a.astype(np.float64) / 255.0
        rgb = 255.0 * (1 - c[..., :3]) * (1 - c[..., 3:4])
        return np.rint(rgb).astype(np.uint8)
    if mode in ("L", "LA"):
        g = a if mode == "L" else a[..., 0]
        rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float64)
        alpha = np.full(g.shape, 255.0) if mode == "L" else a[..., 1].astype(np.float64)
    else:
        rgb = a[..., :3].astype(np.float64)
        alpha = a[..., 3].astype(np.float64) if mode == "RGBA" else np.full(a.shape[:2], 255.0)
    w = alpha[..., None] / 255.0
    return np.rint(rgb * w + 255.0 * (1 - w)).astype(np.uint8)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """Build the corpus once: models, payloads, configs, probe variants, reports, a warm cache."""
    from explainkit.datasets.demo import bundled_model_path
    from explainkit.datasets.synthetic import WorldSpec, write_world

    c = tmp_path_factory.mktemp("hostile")
    marks = c / "markers"
    marks.mkdir()
    outside = c / "outside"
    outside.mkdir()
    world = c / "world"
    write_world(WorldSpec(n_images=12, artifact="stamp", artifact_rate=0.5, artifact_other_rate=0.5, seed=3), world)
    paths = {"c": c, "m": marks, "w": world, "demo": bundled_model_path()}

    torch.manual_seed(0)
    model = TinyCNN(3)
    sd = model.state_dict()
    names = ["circle", "square", "triangle"]
    torch.save({"state_dict": sd, "class_names": names}, c / "weights.pt")
    save_file(sd, c / "tiny.safetensors")
    (c / "afile").write_text("not a folder\n")
    (c / "names.txt").write_text("circle\nsquare\ntriangle\n")

    # pickles
    def evil(name: str, obj, **kw) -> None:
        torch.save(obj, c / name, **kw)

    evil("evil_os.pt", {"w": torch.zeros(2), "x": _Reduce(os.system, _touch(marks / "os"))})
    evil("evil_legacy.pt", {"x": _Reduce(os.system, _touch(marks / "legacy"))}, _use_new_zipfile_serialization=False)
    evil("evil_proto0.pt", {"x": _Reduce(os.system, _touch(marks / "proto0"))}, pickle_protocol=0)
    evil("evil_eval.pt", _Reduce(builtins.eval, f"__import__('os').system('{_touch(marks / 'eval')}')"))
    evil("evil_exec.pt", _Reduce(builtins.exec, f"import os; os.system('{_touch(marks / 'exec')}')"))
    evil("evil_subprocess.pt", _Reduce(subprocess.check_call, ["touch", str(marks / "subprocess")]))
    evil("evil_torch_hub.pt", _Reduce(torch.hub.download_url_to_file, (c / "afile").as_uri(), str(marks / "hub")))
    evil("evil_checkpoint.pt", {"state_dict": sd, "optimizer": _Reduce(os.system, _touch(marks / "ckpt"))})
    evil("user_module.pt", {"model": UserNet(3), "class_names": names})
    evil("evil_mixed.pt", {"model": UserNet(3), "hook": _Reduce(os.system, _touch(marks / "mixed"))})
    shutil.copy(c / "evil_os.pt", c / "evil_named.safetensors")
    for name, data in _raw_pickles(marks / "raw").items():
        _torch_zip(c / f"raw_{name}.pt", data)
    torch.jit.save(torch.jit.script(model.eval()), c / "script.pt")
    with zipfile.ZipFile(c / "fake.pt2", "w") as zf:
        zf.writestr("archive/archive_format", "pt2")
        zf.writestr("archive/data.pkl", _raw_pickles(marks / "pt2")["inst"])
    with zipfile.ZipFile(c / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            fh.write(b"\x80\x02}q\x00.")
            for _ in range(32):
                fh.write(bytes(1 << 20))
        zf.writestr("archive/version", "3\n")
    (c / "truncated.pt").write_bytes((c / "weights.pt").read_bytes()[:700])
    (c / "legacy_truncated.pt").write_bytes((c / "evil_legacy.pt").read_bytes()[:30])
    (c / "empty.pt").write_bytes(b"")
    (c / "random.bin").write_bytes(np.random.default_rng(1).bytes(4096))
    st = (c / "tiny.safetensors").read_bytes()
    (c / "st_truncated.safetensors").write_bytes(st[:-300])
    (c / "st_huge_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}" + b"\x00" * 64)
    (c / "st_bad_json.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\x00" * 64)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}}).encode()
    (c / "st_bad_shape.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)

    # safetensors metadata
    meta = {
        "meta_os": {"explainkit.arch": f"os:system(command='{_touch(marks / 'meta')}')"},
        "meta_plain_key": {"arch": f"os:system(command='{_touch(marks / 'meta_plain')}')"},
        "meta_timm_ckpt": {"explainkit.arch": f"timm:resnet18(num_classes=3, checkpoint_path='{c / 'evil_os.pt'}')"},
        "meta_tv_weights": {"explainkit.arch": "torchvision:resnet18(weights='DEFAULT')"},
        "meta_expr": {"explainkit.arch":
                      f"explainkit:tiny_cnn(num_classes=__import__('os').system('{_touch(marks / 'expr')}'))"},
        "meta_unregistered": {"explainkit.arch": "explainkit:load_model(path='weights.pt')"},
        "meta_models_attr": {"explainkit.arch": "explainkit.models:log_similarity"},
        "meta_big": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=1000000000)"},
        "meta_ok": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=3)",
                    "class_names": json.dumps(["circle", "square", "triangle"])},
        "meta_class_path": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=3)",
                            "class_names": str(c / "names.txt")},
        "meta_four_names": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=3)",
                            "class_names": json.dumps(["circle", "square", "triangle", "star"])},
        "meta_input_size": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=3)", "input_size": "[100000, 100000]"},
        "meta_mean_nan": {"explainkit.arch": "explainkit:tiny_cnn(num_classes=3)", "mean": "[NaN, 0, 0]"},
    }
    for name, md in meta.items():
        save_file(sd, c / f"{name}.safetensors", metadata=md)

    # configs
    cfg = c / "cfg"
    cfg.mkdir()
    configs = {
        "arch_os": f'arch = "os:system(command=\'{_touch(marks / "cfg_os")}\')"\n',
        "arch_subprocess": f'arch = "subprocess:check_call(args=[\'touch\', \'{marks / "cfg_sp"}\'])"\n',
        "arch_eval": f'arch = "builtins:eval(source=\'{_touch(marks / "cfg_eval")}\')"\n',
        "arch_timm_ckpt": f'arch = "timm:resnet18(num_classes=3, checkpoint_path=\'{c / "evil_os.pt"}\')"\n',
        "arch_tv_weights": 'arch = "torchvision:resnet18(weights=\'DEFAULT\')"\n',
        "arch_unregistered": 'arch = "explainkit:load_model(path=\'weights.pt\')"\n',
        "arch_models_attr": 'arch = "explainkit.models:log_similarity"\n',
        "arch_expr": 'arch = "explainkit:tiny_cnn(num_classes=__import__(\'os\').getpid())"\n',
        "arch_str": 'arch = "explainkit:tiny_cnn(num_classes=\'3\')"\n',
        "arch_big": 'arch = "explainkit:tiny_cnn(num_classes=1000000000)"\n',
        "arch_ok": 'arch = "explainkit:tiny_cnn(num_classes=3)"\n',
        "allow_classes": 'allow_classes = ["posix"]\n',
        "trust": "trust = true\n",
        "bad": "batch_size = 4\ndevice = \n",
        "unknown": "batch_size = 4\n\nbatchsize = 8\n",
        "lots": 'analyzers = ["performance"]\n[analyzer.performance]\nn_resamples = "lots"\n',
        "analyzers_str": 'analyzers = "performance"\n',
        "batch_str": 'batch_size = "lots"\n',
        "table_scalar": "[analyzer]\nperformance = 3\n",
        "methods_single": 'analyzers = ["gradcam"]\n[analyzer.gradcam]\nmethods = ["gradcam"]\nmetric_images = 2\n'
                          "road_images = 1\nsteps = 2\nsanity = false\nn_examples = 1\nn_random = 0\n"
                          "n_resamples = 100\nsave_maps = false\n",
        "out_file": f'out = "{c / "afile"}"\n',
        "methods_str": 'analyzers = ["gradcam"]\n[analyzer.gradcam]\nmethods = "gradcam"\n',
    }
    for name, text in configs.items():
        (cfg / f"{name}.toml").write_text(text)
    (cfg / "nonutf8.toml").write_bytes(b"batch_size = 4\n# \xff\xfe\n")

    # probe variants: images, masks, tables, symlinks
    p = c / "probes"
    p.mkdir()
    (outside / "secret.png").write_bytes(_first_image(world).read_bytes())
    (outside / "labels.csv").write_text("path,label\n")
    (outside / "concepts.csv").write_text((world / "concepts.csv").read_text())
    (outside / "descriptions.json").write_text((world / "descriptions.json").read_text())
    shutil.copytree(world / "circle", outside / "circle")
    shutil.copytree(world / "masks", outside / "masks")

    def variant(name: str, edit: Callable[[Path], None]) -> None:
        root = _copy_world(world, p / name)
        edit(root)

    def replace_first(data: bytes) -> Callable[[Path], None]:
        return lambda r: _first_image(r).write_bytes(data)

    def relink(target: Callable[[Path], Path], link: Callable[[Path], Path]) -> Callable[[Path], None]:
        def edit(r: Path) -> None:
            dst = link(r)
            if dst.is_dir():
                shutil.rmtree(dst)
            else:
                dst.unlink()
            dst.symlink_to(target(r))
        return edit

    first_mask = lambda r: r / "masks" / "object" / "circle" / _first_image(r).name  # noqa: E731
    big = Image.new("L", (1, 1))
    bomb = io.BytesIO()
    big.save(bomb, format="PNG")
    bomb_bytes = bytearray(bomb.getvalue())
    bomb_bytes[16:24] = struct.pack(">II", 40000, 40000)
    bomb_bytes[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb_bytes[12:29])))
    variant("img_truncated", lambda r: _first_image(r).write_bytes(_first_image(r).read_bytes()[:60]))
    variant("img_empty", replace_first(b""))
    variant("img_text", replace_first(b"<svg onload=alert(1)></svg>\n"))
    variant("img_bomb", replace_first(bytes(bomb_bytes)))
    variant("img_symlink_out", relink(lambda r: outside / "secret.png", _first_image))
    variant("img_symlink_in", relink(lambda r: sorted((r / "square").iterdir())[0], _first_image))
    variant("img_symlink_loop", lambda r: (_first_image(r).unlink(), (r / "circle" / "img_00000.png").symlink_to(
        "img_00000.png")))
    variant("class_dir_symlink_out", relink(lambda r: outside / "circle", lambda r: r / "circle"))
    variant("concepts_symlink_out", relink(lambda r: outside / "concepts.csv", lambda r: r / "concepts.csv"))
    variant("descriptions_symlink_out",
            relink(lambda r: outside / "descriptions.json", lambda r: r / "descriptions.json"))
    variant("masks_symlink_out", relink(lambda r: outside / "masks", lambda r: r / "masks"))
    variant("mask_symlink_out", relink(lambda r: outside / "secret.png", first_mask))
    variant("mask_small", lambda r: first_mask(r).write_bytes(_png_bytes(Image.new("L", (17, 9), 255))))
    variant("mask_garbage", lambda r: first_mask(r).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30))
    variant("mask_16bit", lambda r: first_mask(r).write_bytes(_png_bytes(_sixteen_bit(
        (np.asarray(Image.open(first_mask(r)).convert("L")) > 127).astype(np.uint16) * 65535))))
    variant("concepts_npy_pickle", lambda r: (
        (r / "concepts.csv").unlink(),
        np.save(r / "concepts.npy", np.array([_Reduce(os.system, _touch(marks / "npy"))], dtype=object),
                allow_pickle=True)))
    variant("concepts_npy_truncated", lambda r: (
        (r / "concepts.csv").unlink(), (r / "concepts.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr'")))
    variant("descriptions_deep", lambda r: (r / "descriptions.json").write_text("[" * 100_000 + "]" * 100_000))
    variant("concepts_nul", lambda r: (r / "concepts.csv").write_bytes((r / "concepts.csv").read_bytes()
                                                                        .replace(b",", b"\x00,", 1)))
    variant("concept_injection", lambda r: (
        (r / "descriptions.json").unlink(),
        (r / "concepts.csv").write_text(_single_concept(r / "concepts.csv", "stamp\n::error::pwned\x1b[2J"))))

    def modes(r: Path) -> None:
        for cls in ("circle", "square", "triangle"):
            for k, f in enumerate(sorted((r / cls).iterdir())):
                mode = MODES[k % len(MODES)]
                im = Image.open(f)
                _as_mode(im, mode).save(f.with_suffix(".tiff" if mode in ("F", "I", "CMYK") else ".png"))
                if mode in ("F", "I", "CMYK"):
                    f.unlink()
        (r / "concepts.csv").unlink()
        (r / "descriptions.json").unlink()
        shutil.rmtree(r / "masks")

    variant("img_modes", modes)

    def flat(name: str, rows: str, classes: str | None = None, extra: Callable[[Path], None] | None = None) -> None:
        root = p / name
        root.mkdir()
        for i, f in enumerate(sorted((world / "circle").iterdir())[:2]):
            shutil.copy(f, root / f"{i}.png")
        (root / "labels.csv").write_text(rows)
        if classes is not None:
            (root / "classes.txt").write_bytes(classes.encode("latin-1") if "\xff" in classes else classes.encode())
        if extra:
            extra(root)

    flat("labels_abs", f"path,label\n{outside / 'secret.png'},circle\n0.png,circle\n")
    flat("labels_parent", "path,label\n../outside/secret.png,circle\n0.png,circle\n")
    flat("labels_symlink_out", "path,label\n0.png,circle\n",
         extra=lambda r: ((r / "labels.csv").unlink(), (r / "labels.csv").symlink_to(outside / "labels.csv")))
    flat("classes_nonutf8", "path,label\n0.png,circle\n1.png,circle\n", classes="circle\n\xff\n")
    flat("labels_ansi", "path,label\n0.png,\x1b]8;;https://evil.example\x07circle\x1b]8;;\x07\n1.png,circle\n",
         classes="circle\n")
    _volume_corpus(p, marks)
    def seg(name: str, edit: Callable[[Path], None]) -> None:
        """A segmentation probe folder (two images, label maps, classes.txt), then ``edit``."""
        root = p / name
        (root / "labels").mkdir(parents=True)
        for i, f in enumerate(sorted((world / "circle").iterdir())[:2]):
            shutil.copy(f, root / f"{i}.png")
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "labels" / f"{i}.png")
        (root / "classes.txt").write_text("circle\nsquare\n")
        edit(root)

    seg("seg_map_small", lambda r: Image.fromarray(np.zeros((9, 17), np.uint8)).save(r / "labels" / "1.png"))
    seg("seg_map_range", lambda r: Image.fromarray(np.full((64, 64), 7, np.uint8)).save(r / "labels" / "1.png"))
    seg("seg_map_symlink_out", lambda r: ((r / "labels" / "1.png").unlink(),
                                          (r / "labels" / "1.png").symlink_to(outside / "secret.png")))
    seg("seg_no_classes", lambda r: (r / "classes.txt").unlink())
    seg("seg_map_rgb", lambda r: Image.new("RGB", (64, 64)).save(r / "labels" / "1.png"))
    flat("multihot_nonbinary", "path,circle,square\n0.png,1,0\n1.png,0,2\n")
    flat("multihot_word", "path,circle,square\n0.png,yes,0\n1.png,0,1\n")
    ansi_class = p / "ansi_class"
    ansi_class.mkdir()
    (ansi_class / "\x1b[31mred").mkdir()
    (ansi_class / "\x1b[31mred" / "x.png").write_bytes(b"not a png")

    # policies (check)
    pol = c / "policies"
    pol.mkdir()
    base = (f'version = 1\n[defaults]\nn_resamples = 100\nmin_images = 2\n[[checks]]\nid = "slices.stamp"\n'
            f'kind = "slice_gap"\nconcept = "stamp"\ndata = "{world}"\n')
    policies = {
        "ok": base,
        "waiver_injection": base + '[[waivers]]\ncheck = "slices.stamp"\n'
                                   'reason = "known\\n::error::pwned\\r\\n::add-mask::x\\u001b[2J ![x](https://evil.example/t.png)"\n'
                                   "expires = 2099-01-01\n",
        "slice_injection": base.replace('concept = "stamp"', 'slice = "x\\n::error::pwned"'),
        "unknown_kind": base.replace('"slice_gap"', '"nope"'),
        "bad_version": base.replace("version = 1", "version = 99"),
        "missing_data": base.replace(str(world), str(c / "nowhere")),
        "trust_key": base + "trust = true\n",
        "binary": "\x00\x01\x02",
    }
    for name, text in policies.items():
        (pol / f"{name}.toml").write_text(text)

    # reports for `explainkit report`
    rep = c / "reports"
    rep.mkdir()
    two_methods = GRADCAM_LIGHT.replace("methods=gradcam", "methods=gradcam|layercam")  # lists work everywhere
    assert main(["analyze", str(paths["demo"]), "--data", str(world), "--analyzer", f"gradcam:{two_methods}",
                 "--out", str(c / "gradcam_out")]) == 0
    good = json.loads((c / "gradcam_out" / "report.json").read_text())
    shutil.rmtree(c / "gradcam_out")
    key = next(iter(good["assets"]))

    def report(name: str, edit: Callable[[dict], object]) -> None:
        doc = json.loads(json.dumps(good))
        result = edit(doc)
        text = result if isinstance(result, str) else json.dumps(doc)
        (rep / f"{name}.json").write_text(text)

    report("ok", lambda d: None)
    report("not_json", lambda d: "{not json")
    report("version", lambda d: d.update(schema_version="9.0"))
    report("top_list", lambda d: json.dumps([d]))
    report("sections_str", lambda d: d.update(sections="gradcam"))
    report("section_no_analyzer", lambda d: d["sections"][0].pop("analyzer") and None)
    report("section_summary_list", lambda d: d["sections"][0].update(summary=[1, 2]))
    report("section_data_bad", lambda d: d["sections"][0].update(data={"methods": "x"}))
    report("findings_bad", lambda d: d.update(findings=[{"severity": 3}]))
    report("provenance_bad", lambda d: d.update(provenance="x"))
    report("assets_list", lambda d: d.update(assets=["x"]))
    report("deep", lambda d: '{"schema_version": "1.0", "sections": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for bad_name, uri in {"js": "javascript:alert(1)", "https": "https://evil.example/x.png",
                          "svg": "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+",
                          "html": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}.items():
        report(f"asset_{bad_name}", lambda d, uri=uri: d["assets"].update({key: uri}))

    # a warm activation cache (INVERT opts in)
    cache = c / "cache"
    assert main(["analyze", str(paths["demo"]), "--data", str(world), "--analyzer", "invert:layer=features.3",
                 "--out", str(c / "cache_out"), "--cache-dir", str(cache)]) == 0
    shutil.rmtree(c / "cache_out")
    paths.update(cfg=cfg, p=p, pol=pol, rep=rep, cache=cache, outside=outside)
    return paths


def _volume_corpus(p: Path, marks: Path) -> None:
    """A small volume world (``vol_ok``) and its broken variants: pickles, ranks, NaN, shapes, masks, mixtures."""
    from explainkit.datasets.volumes import VolumeWorldSpec, write_volume_world

    ok = write_volume_world(VolumeWorldSpec(n=4, size=12), p / "vol_ok")

    def variant(name: str, edit: Callable[[Path], object]) -> None:
        edit(_copy_world(ok, p / name))

    variant("vol_pickle", lambda r: np.save(r / "vol_0000.npy", np.array(
        [_Reduce(os.system, _touch(marks / "vol"))] * 8, dtype=object).reshape(2, 2, 2), allow_pickle=True))
    variant("vol_rank2", lambda r: np.save(r / "vol_0001.npy", np.ones((12, 12), np.float32)))
    variant("vol_rank5", lambda r: np.save(r / "vol_0001.npy", np.ones((1, 1, 12, 12, 12), np.float32)))
    variant("vol_nan", lambda r: np.save(r / "vol_0002.npy", np.full((12, 12, 12), np.nan, np.float32)))
    variant("vol_truncated", lambda r: (r / "vol_0000.npy").write_bytes((r / "vol_0000.npy").read_bytes()[:90]))
    variant("vol_shapes", lambda r: np.save(r / "vol_0003.npy", np.zeros((10, 12, 12), np.float32)))
    variant("vol_mask_shape", lambda r: np.save(r / "masks" / "lesion" / "vol_0001.npy", np.ones((4, 4, 4), np.uint8)))
    variant("vol_and_image", lambda r: (r / "x.png").write_bytes(_png_bytes(Image.new("RGB", (8, 8)))))


def _single_concept(csv_path: Path, name: str) -> str:
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("stamp")
    quoted = '"' + name.replace('"', '""') + '"'
    return "\n".join([f"path,{quoted}"] + [f"{r.split(',')[0]},{r.split(',')[col]}" for r in lines[1:]]) + "\n"


def _as_mode(im: Image.Image, mode: str) -> Image.Image:
    return _in_mode(np.asarray(im.convert("RGB")), mode)


# -- cases ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One hostile or broken input.

    ``argv`` and ``env`` values are templates: ``{c}`` corpus, ``{w}`` world, ``{demo}`` bundled
    model, ``{m}`` marker folder, ``{s}`` the sandbox (working directory), ``{mod}`` this module,
    ``{cfg}``/``{p}``/``{pol}``/``{rep}`` corpus sub-folders. ``--out {s}/out`` is added to
    ``analyze`` and ``check`` unless ``out`` is None (the command gets none) or already given.
    """

    argv: tuple[str, ...]
    code: int
    pattern: str = ""
    env: tuple[tuple[str, str], ...] = ()
    payload: bool = False
    lines: int = 1
    no_forward: bool = False
    out: str | None = "out"
    writes: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None
    post: Callable[[Path, dict, str, str], None] | None = None


def _a(model: str, *rest: str, data: str = "{w}") -> tuple[str, ...]:
    return ("analyze", model, "--data", data, *rest)


def _perf(model: str, *rest: str, data: str = "{w}") -> tuple[str, ...]:
    return _a(model, "--analyzer", PERF, *rest, data=data)


def _vol(folder: str, *rest: str, analyzer: str = PERF) -> tuple[str, ...]:
    """``analyze`` of the Conv3d model on a volume folder of the corpus (``analyzer=""``: the defaults)."""
    picked = ("--analyzer", analyzer) if analyzer and "--config" not in rest else ()
    return _a("{c}/vol.safetensors", "--arch", "{mod}:volume_net", *picked, *rest, data=f"{{p}}/{folder}")


def _counting(*rest: str) -> tuple[str, ...]:
    return _perf("{c}/tiny.safetensors", "--arch", "{mod}:counting_cnn", "--class-names", "{c}/names.txt", *rest)


def _check_counting(*rest: str) -> tuple[str, ...]:
    return ("check", "{c}/tiny.safetensors", "--arch", "{mod}:counting_cnn", "--class-names", "{c}/names.txt",
            "--policy", "{pol}/ok.toml", *rest)


def _odd(kind: str, *rest: str) -> tuple[str, ...]:
    return _perf("{c}/tiny.safetensors", "--arch", f"{{mod}}:odd(kind='{kind}')", "--class-names", "{c}/names.txt",
                 *rest)


def _file(name: str) -> Callable[[Path, dict], None]:
    return lambda s, _: (s / name).write_text("x\n")


def _dir(name: str, content: str | None = None) -> Callable[[Path, dict], None]:
    def make(s: Path, _: dict) -> None:
        (s / name).mkdir(parents=True)
        if content:
            (s / name / content).write_text("mine\n")
    return make


def _no_uri(uri: str) -> Callable[[Path, dict, str, str], None]:
    def post(s: Path, _: dict, out: str, err: str) -> None:
        html = (s / "again.html").read_text()
        assert uri not in html
        assert "<img" in html
    return post


def _with_cache(corrupt: Callable[[Path], None]) -> Callable[[Path, dict], None]:
    def setup(s: Path, paths: dict) -> None:
        shutil.copytree(paths["cache"], s / "cache")
        (entry,) = list((s / "cache").rglob("*.npz"))
        corrupt(entry)
    return setup


def _cache_replaced(s: Path, paths: dict, out: str, err: str) -> None:
    (entry,) = list((s / "cache").rglob("*.npz"))
    with np.load(entry, allow_pickle=False) as data:
        assert len(data["__index__"]) == 12


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _mlp_skips(s: Path, paths: dict, out: str, err: str) -> None:
    doc = json.loads((s / "out" / "report.json").read_text())
    info = [f for f in doc["findings"] if f["severity"] == "info" and f["analyzer"] == "gradcam"]
    assert info and "skipped" in info[0]["message"], doc["findings"]
    assert "gradcam" not in [sec["analyzer"] for sec in doc["sections"]]


def _summary_clean(s: Path, paths: dict, out: str, err: str) -> None:
    text = (s / "summary.md").read_text()
    _assert_inert(text)
    assert "](https://" not in text and "![" not in text


ANALYZE_CACHE = ("--analyzer", "invert:layer=features.3", "--cache-dir", "{s}/cache")
GH = (("GITHUB_ACTIONS", "true"), ("GITHUB_STEP_SUMMARY", "{s}/summary.md"))

CASES: dict[str, Case] = {
    # pickles: refused with exit 4, never executed; the message names the offending global
    "pickle os.system": Case(_perf("{c}/evil_os.pt"), 4, r"refusing .*evil_os\.pt.*posix\.system", payload=True),
    "pickle legacy format": Case(_perf("{c}/evil_legacy.pt"), 4, r"refusing .*posix\.system", payload=True),
    "pickle protocol 0": Case(_perf("{c}/evil_proto0.pt"), 4, r"refusing .*posix\.system", payload=True),
    "pickle builtins.eval": Case(_perf("{c}/evil_eval.pt"), 4, r"refusing .*builtins\.eval", payload=True),
    "pickle builtins.exec": Case(_perf("{c}/evil_exec.pt"), 4, r"refusing .*builtins\.exec", payload=True),
    "pickle subprocess": Case(_perf("{c}/evil_subprocess.pt"), 4, r"refusing .*subprocess\.check_call",
                              payload=True),
    "pickle torch.hub download": Case(_perf("{c}/evil_torch_hub.pt"), 4,
                                      r"refusing .*torch\.hub\.download_url_to_file", payload=True),
    "pickle inside a checkpoint dict": Case(_perf("{c}/evil_checkpoint.pt"), 4, r"refusing .*posix\.system",
                                            payload=True),
    "pickle INST opcode": Case(_perf("{c}/raw_inst.pt"), 4, r"refusing .*os\.system", payload=True),
    "pickle OBJ opcode": Case(_perf("{c}/raw_obj.pt"), 4, r"refusing .*os\.system", payload=True),
    "pickle memoised STACK_GLOBAL": Case(_perf("{c}/raw_memo_stack_global.pt"), 4, r"refusing .*posix\.system",
                                         payload=True),
    "pickle nested reduce": Case(_perf("{c}/raw_nested_reduce.pt"), 4, r"refusing .*builtins\.(getattr|__import__)",
                                 payload=True),
    "pickle EXT opcode": Case(_perf("{c}/raw_ext_opcode.pt"), 4, r"(refusing|cannot load)", payload=True),
    "pickle persistent id": Case(_perf("{c}/raw_persid.pt"), 4, r"(refusing|cannot load)", payload=True),
    "pickle named .safetensors": Case(_perf("{c}/evil_named.safetensors"), 4, r"refusing .*posix\.system",
                                      payload=True),
    "pickle, --allow-classes posix": Case(_perf("{c}/evil_os.pt", "--allow-classes", "posix"), 4,
                                          r"refusing .*posix\.system", payload=True),
    "pickle, --allow-classes builtins": Case(_perf("{c}/evil_eval.pt", "--allow-classes", "builtins"), 4,
                                             r"refusing .*builtins\.eval", payload=True),
    "pickle hint never names the standard library": Case(
        _perf("{c}/evil_mixed.pt"), 4, r"refusing .*posix\.system(?!.*--allow-classes [^;]*posix)"
        r".*--allow-classes {mod}\b", payload=True),
    "pickle hint for stdlib-only payload": Case(_perf("{c}/evil_os.pt"), 4, r"^(?!.*--allow-classes).*refusing",
                                                payload=True),
    "pickle, mixed, allowed user module": Case(_perf("{c}/evil_mixed.pt", "--allow-classes", "{mod}"), 4,
                                               r"refusing .*posix\.system", payload=True),
    "pickle via layers": Case(("layers", "{c}/evil_os.pt"), 4, r"refusing .*posix\.system", payload=True),
    "pickle via inspect": Case(("inspect", "{c}/evil_os.pt"), 4, r"refusing .*posix\.system", payload=True),
    "pickle via check": Case(("check", "{c}/evil_os.pt", "--policy", "{pol}/ok.toml"), 4,
                             r"refusing .*posix\.system", payload=True),
    "torchscript without --trust": Case(_perf("{c}/script.pt"), 4, r"TorchScript.*--trust"),
    "torch.export without --trust": Case(_perf("{c}/fake.pt2"), 4, r"torch\.export.*--trust", payload=True),
    "zip bomb checkpoint": Case(_perf("{c}/bomb.pt"), 4, r"bomb\.pt.*compress"),
    "truncated zip": Case(_perf("{c}/truncated.pt", "--arch", "explainkit:tiny_cnn"), 4, r"corrupt"),
    "truncated legacy": Case(_perf("{c}/legacy_truncated.pt"), 4, r"legacy_truncated\.pt"),
    "empty model file": Case(_perf("{c}/empty.pt"), 4, r"is empty"),
    "random bytes": Case(_perf("{c}/random.bin"), 4, r"unrecognised model format"),
    "safetensors truncated": Case(_perf("{c}/st_truncated.safetensors", "--arch", "explainkit:tiny_cnn"), 4,
                                  r"truncated"),
    "safetensors huge header": Case(_perf("{c}/st_huge_header.safetensors"), 4, r"unrecognised model format"),
    "safetensors bad header JSON": Case(_perf("{c}/st_bad_json.safetensors"), 4, r"unrecognised model format"),
    "safetensors impossible shape": Case(_perf("{c}/st_bad_shape.safetensors", "--arch", "explainkit:tiny_cnn"), 4,
                                         r"st_bad_shape\.safetensors"),
    # architecture specs from a config file: exit 2 naming file, line and key; nothing imported
    "config arch os.system": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_os.toml"), 2,
                                  r"arch_os\.toml line 1: 'arch'.*refus", payload=True),
    "config arch subprocess": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_subprocess.toml"), 2,
                                   r"arch_subprocess\.toml line 1: 'arch'.*refus", payload=True),
    "config arch builtins.eval": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_eval.toml"), 2,
                                      r"arch_eval\.toml line 1: 'arch'.*refus", payload=True),
    "config arch timm checkpoint_path": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_timm_ckpt.toml"), 2,
                                             r"arch_timm_ckpt\.toml line 1: 'arch'.*checkpoint_path", payload=True),
    "config arch torchvision weights": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_tv_weights.toml"), 2,
                                            r"arch_tv_weights\.toml line 1: 'arch'.*weights", payload=True),
    "config arch unregistered explainkit name": Case(
        _perf("{c}/weights.pt", "--config", "{cfg}/arch_unregistered.toml"), 2,
        r"arch_unregistered\.toml line 1: 'arch'.*load_model", payload=True),
    "config arch explainkit.models attribute": Case(
        _perf("{c}/weights.pt", "--config", "{cfg}/arch_models_attr.toml"), 2,
        r"arch_models_attr\.toml line 1: 'arch'.*refus", payload=True),
    "config arch expression argument": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_expr.toml"), 2,
                                            r"arch_expr\.toml line 1: 'arch'", payload=True),
    "config arch string argument": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_str.toml"), 2,
                                        r"arch_str\.toml line 1: 'arch'.*num_classes", payload=True),
    "config arch out-of-range size": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_big.toml"), 2,
                                          r"arch_big\.toml line 1: 'arch'.*num_classes", payload=True),
    "config arch allowed": Case(_perf("{c}/weights.pt", "--config", "{cfg}/arch_ok.toml"), 0, lines=0),
    "config allow_classes": Case(_perf("{c}/evil_os.pt", "--config", "{cfg}/allow_classes.toml"), 2,
                                 r"allow_classes\.toml line 1: 'allow_classes'.*--allow-classes", payload=True),
    "config trust": Case(_perf("{demo}", "--config", "{cfg}/trust.toml"), 2, r"trust\.toml.*cannot be set"),
    "config invalid TOML": Case(_perf("{demo}", "--config", "{cfg}/bad.toml"), 2, r"invalid TOML.*line 2"),
    "config unknown key": Case(_perf("{demo}", "--config", "{cfg}/unknown.toml"), 2, r"line 3: unknown key"),
    "config not UTF-8": Case(_perf("{demo}", "--config", "{cfg}/nonutf8.toml"), 2, r"nonutf8\.toml"),
    "config is a folder": Case(_perf("{demo}", "--config", "{cfg}"), 2, r"--config"),
    "config analyzer parameter not a number": Case(_a("{demo}", "--config", "{cfg}/lots.toml"), 2,
                                                   r"n_resamples.*lots"),
    "config analyzers not a list": Case(_a("{demo}", "--config", "{cfg}/analyzers_str.toml"), 2,
                                        r"analyzers_str\.toml line 1: 'analyzers'"),
    "config batch_size not a number": Case(_perf("{demo}", "--config", "{cfg}/batch_str.toml"), 2,
                                           r"batch_str\.toml line 1: 'batch_size'.*lots"),
    "config analyzer table not a table": Case(_perf("{demo}", "--config", "{cfg}/table_scalar.toml"), 2,
                                              r"analyzer"),
    "config single-element method list": Case(_a("{demo}", "--config", "{cfg}/methods_single.toml"), 0, lines=0),
    "config out is a file": Case(_counting("--config", "{cfg}/out_file.toml"), 2, r"afile", out=None,
                                 no_forward=True),
    # architecture specs and trust options from the environment
    "env arch os.system": Case(_perf("{c}/weights.pt"), 2, r"EXPLAINKIT_ARCH.*refus", payload=True,
                               env=(("EXPLAINKIT_ARCH", "os:system(command='touch {m}/env_os')"),)),
    "env arch builtins.exec": Case(_perf("{c}/weights.pt"), 2, r"EXPLAINKIT_ARCH.*refus", payload=True,
                                   env=(("EXPLAINKIT_ARCH", "builtins:exec(source='open(\"{m}/env_exec\", \"w\")')"),)),
    "env arch timm checkpoint_path": Case(
        _perf("{c}/weights.pt"), 2, r"EXPLAINKIT_ARCH.*checkpoint_path", payload=True,
        env=(("EXPLAINKIT_ARCH", "timm:resnet18(num_classes=3, checkpoint_path='{c}/evil_os.pt')"),)),
    "env arch allowed": Case(_perf("{c}/weights.pt"), 0, lines=0,
                             env=(("EXPLAINKIT_ARCH", "explainkit:tiny_cnn(num_classes=3)"),)),
    "env arch via layers": Case(("layers", "{c}/weights.pt"), 2, r"EXPLAINKIT_ARCH.*refus", payload=True,
                                env=(("EXPLAINKIT_ARCH", "os:system(command='touch {m}/env_layers')"),)),
    "env arch via inspect": Case(("inspect", "{c}/weights.pt"), 2, r"EXPLAINKIT_ARCH.*refus", payload=True,
                                 env=(("EXPLAINKIT_ARCH", "os:system(command='touch {m}/env_inspect')"),)),
    "env arch via check": Case(("check", "{c}/weights.pt", "--policy", "{pol}/ok.toml"), 2,
                               r"EXPLAINKIT_ARCH.*refus", payload=True,
                               env=(("EXPLAINKIT_ARCH", "os:system(command='touch {m}/env_check')"),)),
    "env allow-classes": Case(_perf("{c}/evil_os.pt"), 2, r"EXPLAINKIT_ALLOW_CLASSES.*--allow-classes",
                              payload=True, env=(("EXPLAINKIT_ALLOW_CLASSES", "posix"),)),
    "env config with hostile arch": Case(_perf("{c}/weights.pt"), 2, r"arch_os\.toml line 1: 'arch'.*refus",
                                         payload=True, env=(("EXPLAINKIT_CONFIG", "{cfg}/arch_os.toml"),)),
    "env batch size not a number": Case(_perf("{demo}"), 2, r"batch-size.*lots.*EXPLAINKIT_BATCH_SIZE",
                                        env=(("EXPLAINKIT_BATCH_SIZE", "lots"),)),
    "env device": Case(_perf("{demo}"), 2, r"CUDA is not available", env=(("EXPLAINKIT_DEVICE", "cuda:9"),)),
    "env out is a file": Case(_counting(), 2, r"afile", out=None, no_forward=True,
                              env=(("EXPLAINKIT_OUT", "{c}/afile"),)),
    # model metadata: refused with exit 4, naming the metadata key
    "metadata arch os.system": Case(_perf("{c}/meta_os.safetensors"), 4,
                                    r"metadata 'explainkit\.arch'.*refus", payload=True),
    "metadata plain arch key": Case(_perf("{c}/meta_plain_key.safetensors"), 4, r"metadata 'arch'.*refus",
                                    payload=True),
    "metadata timm checkpoint_path": Case(_perf("{c}/meta_timm_ckpt.safetensors"), 4,
                                          r"metadata 'explainkit\.arch'.*checkpoint_path", payload=True),
    "metadata torchvision weights": Case(_perf("{c}/meta_tv_weights.safetensors"), 4,
                                         r"metadata 'explainkit\.arch'.*weights", payload=True),
    "metadata expression argument": Case(_perf("{c}/meta_expr.safetensors"), 4, r"metadata 'explainkit\.arch'",
                                         payload=True),
    "metadata unregistered explainkit name": Case(_perf("{c}/meta_unregistered.safetensors"), 4,
                                                  r"metadata 'explainkit\.arch'.*load_model", payload=True),
    "metadata explainkit.models attribute": Case(_perf("{c}/meta_models_attr.safetensors"), 4,
                                                 r"metadata 'explainkit\.arch'.*refus", payload=True),
    "metadata out-of-range size": Case(_perf("{c}/meta_big.safetensors"), 4,
                                       r"metadata 'explainkit\.arch'.*num_classes", payload=True),
    "metadata allowed": Case(_perf("{c}/meta_ok.safetensors"), 0, lines=0),
    "metadata legacy explainkit.models spec": Case(_perf("{demo}"), 0, lines=0),
    "metadata ignored under explicit --arch": Case(
        _perf("{c}/meta_os.safetensors", "--arch", "explainkit:tiny_cnn(num_classes=3)", "--class-names",
              "{c}/names.txt"), 0, lines=0),
    "metadata class names as a file path": Case(_perf("{c}/meta_class_path.safetensors"), 4,
                                                r"metadata 'class_names'"),
    "metadata class names count": Case(_perf("{c}/meta_four_names.safetensors"), 2,
                                       r"3 outputs per image for 4 class names"),
    "metadata input size out of range": Case(_perf("{c}/meta_input_size.safetensors"), 4,
                                             r"metadata 'input_size'"),
    "metadata mean not finite": Case(_perf("{c}/meta_mean_nan.safetensors"), 4, r"metadata 'mean'"),
    # output paths: checked before the first model pass
    "--out is a file": Case(_counting("--out", "{s}/out"), 2, r"--out .*not a folder", out=None, no_forward=True,
                            setup=_file("out"), writes=("out",)),
    "--out below a file": Case(_counting("--out", "{s}/afile/sub"), 2, r"--out", out=None, no_forward=True,
                               setup=_file("afile"), writes=("afile",)),
    "--out is someone else's folder": Case(_counting(), 2, r"--out .*not empty", no_forward=True,
                                           setup=_dir("out", "notes.txt")),
    "check --out is a file": Case(_check_counting("--out", "{s}/out"), 2, r"--out", out=None, no_forward=True,
                                  setup=_file("out"), writes=("out",)),
    "check --junit is a folder": Case(_check_counting("--junit", "{s}/junit"), 2, r"--junit", no_forward=True,
                                      setup=_dir("junit"), writes=("junit",)),
    "check --junit below a file": Case(_check_counting("--junit", "{s}/afile/j.xml"), 2, r"--junit",
                                       no_forward=True, setup=_file("afile"), writes=("afile",)),
    "report --html is a folder": Case(("report", "{rep}/ok.json", "--html", "{s}/html"), 2, r"--html",
                                      setup=_dir("html"), writes=("html",)),
    "--cache-dir is a file": Case(_counting("--cache-dir", "{s}/cfile"), 2, r"--cache-dir", no_forward=True,
                                  setup=_file("cfile"), writes=("cfile",)),
    "train --out is a folder": Case(("train", "{w}", "--out", "{s}/tdir"), 2, r"--out", setup=_dir("tdir"),
                                    writes=("tdir",)),
    "world OUT is a file": Case(("world", "{s}/wfile"), 2, r"wfile", setup=_file("wfile"), writes=("wfile",)),
    # masks
    "mask of the wrong size": Case(_perf("{demo}", data="{p}/mask_small"), 2,
                                   r"masks/object/circle/.*\.png.*17x9.*64x64"),
    "mask unreadable": Case(_perf("{demo}", data="{p}/mask_garbage"), 2, r"masks/object/circle/"),
    "mask symlink outside the probe folder": Case(_perf("{demo}", data="{p}/mask_symlink_out"), 2,
                                                  r"outside the probe folder.*--follow-symlinks"),
    "masks folder symlink outside": Case(_perf("{demo}", data="{p}/masks_symlink_out"), 2,
                                         r"outside the probe folder.*--follow-symlinks"),
    "mask in 16 bit": Case(_perf("{demo}", data="{p}/mask_16bit"), 0, lines=0),
    # volumes (.npy): read without pickles, checked from the headers before the first model pass
    "volumes through default analyzers": Case(_vol("vol_ok", "--config", "{cfg}/light.toml"), 0, lines=0),
    "volume .npy with a pickle payload": Case(_vol("vol_pickle"), 2, r"vol_0000\.npy.*allow_pickle=False",
                                              payload=True, no_forward=True),
    "volume of rank 2": Case(_vol("vol_rank2"), 2, r"vol_0001\.npy: expected a 3-D .* or 4-D", no_forward=True),
    "volume of rank 5": Case(_vol("vol_rank5"), 2, r"vol_0001\.npy: expected a 3-D .* or 4-D", no_forward=True),
    "volume with NaN": Case(_vol("vol_nan"), 2, r"vol_0002\.npy: the volume holds NaN"),
    "volume truncated": Case(_vol("vol_truncated"), 2, r"cannot read vol_0000\.npy", no_forward=True),
    "volumes of two shapes": Case(_vol("vol_shapes"), 2, r"vol_0003\.npy is \(1, 10, 12, 12\)", no_forward=True),
    "volume mask of the wrong shape": Case(_vol("vol_mask_shape", analyzer="gradcam:" + GRADCAM_LIGHT.replace(
        ",metric_images=2,road_images=1,steps=2", "")), 2, r"vol_0001\.npy: mask of shape \(4, 4, 4\)"),
    "images and volumes in one folder": Case(_vol("vol_and_image"), 2, r"holds both images .* and volumes"),
    "image model on volumes": Case(_perf("{demo}", data="{p}/vol_ok"), 2, r"volumes .* but the model reads images",
                                   no_forward=True),
    "volume model on images": Case(_perf("{c}/vol.safetensors", "--arch", "{mod}:volume_net"), 2,
                                   r"the model reads volumes .* give --data a folder of \.npy", no_forward=True),
    "volume channels differ from the model's": Case(
        _perf("{c}/vol2.safetensors", "--arch", "{mod}:volume_net(in_channels=2)", data="{p}/vol_ok"), 2,
        r"volumes have 1 channel.*takes 2", no_forward=True),
    "image-only analyzer on volumes": Case(_vol("vol_ok", analyzer="invert"), 2,
                                           r"analyzer 'invert' needs .*images.*can run here: gradcam, performance"),
    "image-only CAM method on volumes": Case(_vol("vol_ok", analyzer="gradcam:methods=gradcam|saliency"), 2,
                                             r"gradcam: saliency do not run on volumes"),
    "discover on volumes": Case(("discover", "{c}/vol.safetensors", "--arch", "{mod}:volume_net", "--data",
                                 "{p}/vol_ok"), 2, r"analyzer 'discovery' needs images", out=None),
    "--input-size for volumes": Case(_vol("vol_ok", "--input-size", "12"), 2,
                                     r"--input-size: image preprocessing does not apply to volumes"),
    "--concepts for volumes": Case(_vol("vol_ok", "--concepts", "{w}/concepts.csv"), 2,
                                   r"--concepts: not read for a volume folder"),
    # images and tables
    "image truncated": Case(_perf("{demo}", data="{p}/img_truncated"), 2, r"unreadable image"),
    "image empty": Case(_perf("{demo}", data="{p}/img_empty"), 2, r"unreadable image"),
    "image is SVG text": Case(_perf("{demo}", data="{p}/img_text"), 2, r"unreadable image"),
    "image decompression bomb": Case(_perf("{demo}", data="{p}/img_bomb"), 2, r"unreadable image"),
    "image in every PIL mode": Case(_perf("{demo}", data="{p}/img_modes"), 0, lines=0),
    "image symlink outside the probe folder": Case(_perf("{demo}", data="{p}/img_symlink_out"), 2,
                                                   r"circle/.*outside the probe folder.*--follow-symlinks"),
    "image symlink outside, --follow-symlinks": Case(
        _perf("{demo}", "--follow-symlinks", data="{p}/img_symlink_out"), 0, lines=0),
    "image symlink inside the probe folder": Case(_perf("{demo}", data="{p}/img_symlink_in"), 0, lines=0),
    "image symlink loop": Case(_perf("{demo}", data="{p}/img_symlink_loop"), 2, r"circle/"),
    "class folder symlink outside": Case(_perf("{demo}", data="{p}/class_dir_symlink_out"), 2,
                                         r"outside the probe folder"),
    "labels.csv symlink outside": Case(_perf("{demo}", data="{p}/labels_symlink_out"), 2,
                                       r"labels\.csv.*outside the probe folder"),
    "concepts.csv symlink outside": Case(_perf("{demo}", data="{p}/concepts_symlink_out"), 2,
                                         r"concepts\.csv.*outside the probe folder"),
    "descriptions symlink outside": Case(_perf("{demo}", data="{p}/descriptions_symlink_out"), 2,
                                         r"descriptions\.json.*outside the probe folder"),
    "labels absolute path": Case(_perf("{demo}", data="{p}/labels_abs"), 2, r"must be relative"),
    "labels parent path": Case(_perf("{demo}", data="{p}/labels_parent"), 2, r"must be relative"),
    "classes.txt not UTF-8": Case(_perf("{demo}", data="{p}/classes_nonutf8"), 2, r"classes\.txt"),
    "label map of the wrong size": Case(_perf("{demo}", data="{p}/seg_map_small"), 2,
                                        r"labels/1\.png is 17x9 but its image 1\.png is 64x64"),
    "label map values out of range": Case(_perf("{demo}", data="{p}/seg_map_range"), 2,
                                          r"labels/1\.png holds value 7 .*values must be 0\.\.1 or 255"),
    "label map symlink outside": Case(_perf("{demo}", data="{p}/seg_map_symlink_out"), 2,
                                      r"labels/1\.png resolves outside the probe folder.*--follow-symlinks"),
    "colour (RGB) label map": Case(_perf("{demo}", data="{p}/seg_map_rgb"), 2, r"labels/1\.png is a RGB image"),
    "label maps without classes.txt": Case(_perf("{demo}", data="{p}/seg_no_classes"), 2, r"need classes\.txt"),
    "multi-hot labels.csv with a 2": Case(_perf("{demo}", data="{p}/multihot_nonbinary"), 2,
                                          r"labels\.csv row 3 \(1\.png\): non-binary value '2' in column 'square'"),
    "multi-hot labels.csv with a word": Case(_perf("{demo}", data="{p}/multihot_word"), 2,
                                             r"non-binary value 'yes' in column 'circle'"),
    "concepts.npy holding a pickle": Case(_perf("{demo}", data="{p}/concepts_npy_pickle"), 2, r"concepts\.npy",
                                          payload=True),
    "concepts.npy truncated": Case(_perf("{demo}", data="{p}/concepts_npy_truncated"), 2, r"concepts\.npy"),
    "descriptions nested too deep": Case(_perf("{demo}", data="{p}/descriptions_deep"), 2, r"descriptions\.json"),
    "concepts.csv with NUL": Case(_perf("{demo}", data="{p}/concepts_nul"), 2, r"concepts\.csv"),
    # model outputs
    "output flat (B*K,)": Case(_odd("flat"), 2,
                               r"model output shape \(6,\) for a batch of 2 images; expected \(2, K\)"),
    "output 4-D": Case(_odd("four_d"), 2, r"model output shape \(2, 3, 1, 1\)"),
    "output integer dtype": Case(_odd("int"), 2, r"model output .*int64"),
    "output None": Case(_odd("none"), 2, r"model output .*NoneType"),
    "output string": Case(_odd("string"), 2, r"model output .*str"),
    "output ambiguous dict": Case(_odd("ambiguous"), 2, r"--output-key"),
    "output ambiguous dict, --output-key": Case(_odd("ambiguous", "--output-key", "b"), 0, lines=0),
    "output dict with logits": Case(_odd("dict"), 0, lines=0),
    "output tuple": Case(_odd("tuple"), 0, lines=0),
    "output fewer logits than classes": Case(_odd("two"), 2, r"2 outputs per image for 3 class names"),
    "forward raises": Case(_odd("raise"), 3, r"kaputt"),
    "forward raises while probing the default layer": Case(
        _a("{c}/tiny.safetensors", "--arch", "{mod}:odd(kind='zeros')", "--class-names", "{c}/names.txt",
           "--analyzer", f"gradcam:{GRADCAM_LIGHT}"),
        3, r"zero input while looking for a default layer.*kaputt"),
    "MLP with the default analyzers": Case(_a("{c}/mlp.safetensors", "--arch", "{mod}:mlp", "--config",
                                              "{cfg}/light.toml"), 0, lines=0, post=_mlp_skips),
    "MLP with gradcam named": Case(_a("{c}/mlp.safetensors", "--arch", "{mod}:mlp", "--analyzer",
                                      f"gradcam:{GRADCAM_LIGHT}"), 2, r"no spatial layer"),
    "token grid ambiguous": Case(_a("{c}/tokens.safetensors", "--arch", "{mod}:tokens", "--layer", "block",
                                    "--analyzer", f"gradcam:{GRADCAM_LIGHT}"), 2, r"grid=.*prefix_tokens="),
    "token grid, hint followed": Case(_a("{c}/tokens.safetensors", "--arch", "{mod}:tokens", "--layer", "block",
                                         "--analyzer", f"gradcam:{GRADCAM_LIGHT},grid=8|8,prefix_tokens=1"), 0,
                                      lines=0),
    "pickle hint followed": Case(_perf("{c}/user_module.pt", "--allow-classes", "{mod}"), 0, lines=0),
    "pickle hint given": Case(_perf("{c}/user_module.pt"), 4, r"--allow-classes {mod}\b"),
    # analyzer parameters
    "analyzer int parameter 'lots'": Case(_a("{demo}", "--analyzer", "performance:n_resamples=lots"), 2,
                                          r"n_resamples.*lots"),
    "analyzer int parameter 2.5": Case(_a("{demo}", "--analyzer", "performance:n_resamples=2.5"), 2,
                                       r"n_resamples"),
    "analyzer bool parameter 'maybe'": Case(_a("{demo}", "--analyzer", f"{PERF},class_slices=maybe"), 2,
                                            r"class_slices"),
    "analyzer single-element list": Case(_a("{demo}", "--analyzer", f"gradcam:{GRADCAM_LIGHT}"), 0, lines=0),
    "analyzer single-element list (invert)": Case(
        _a("{demo}", "--analyzer", "invert:layer=features.3,artifact_concepts=stamp"), 0, lines=0),
    "analyzer unknown method": Case(_a("{demo}", "--analyzer", "gradcam:methods=nope"), 2,
                                    r"methods\[0\] must be one of"),
    "config method list given as a string": Case(_a("{demo}", "--config", "{cfg}/methods_str.toml"), 2,
                                                 r"methods must be a list"),
    # caches: a bad entry is a miss with one warning, and it is replaced
    "cache entry truncated": Case(_a("{demo}", *ANALYZE_CACHE), 0, r"WARNING.*cache", writes=("cache",),
                                  setup=_with_cache(lambda e: e.write_bytes(e.read_bytes()[:50])),
                                  post=_cache_replaced),
    "cache entry not a zip": Case(_a("{demo}", *ANALYZE_CACHE), 0, r"WARNING.*cache", writes=("cache",),
                                  setup=_with_cache(lambda e: e.write_text("hello")), post=_cache_replaced),
    "cache entry wrong shape": Case(_a("{demo}", *ANALYZE_CACHE), 0, r"WARNING.*cache", writes=("cache",),
                                    setup=_with_cache(lambda e: _save_npz(e, __index__=np.arange(3),
                                                                          acts=np.zeros((3, 2, 2)))),
                                    post=_cache_replaced),
    "cache entry holding a pickle": Case(
        _a("{demo}", *ANALYZE_CACHE), 0, r"WARNING.*cache", writes=("cache",), payload=True, post=_cache_replaced,
        setup=lambda s, p: _with_cache(lambda e: _save_npz(
            e, __index__=np.array([_Reduce(os.system, _touch(p["m"] / "cache"))], dtype=object)))(s, p)),
    "cache dir is a file": Case(_a("{demo}", *ANALYZE_CACHE), 2, r"--cache-dir", setup=_file("cache"),
                                writes=("cache",)),
    # report JSON
    "report not JSON": Case(("report", "{rep}/not_json.json", "--html", "{s}/again.html"), 2, r"not valid JSON"),
    "report schema version": Case(("report", "{rep}/version.json", "--html", "{s}/again.html"), 2, r"schema"),
    "report top-level list": Case(("report", "{rep}/top_list.json", "--html", "{s}/again.html"), 2, r"top_list"),
    "report sections not a list": Case(("report", "{rep}/sections_str.json", "--html", "{s}/again.html"), 2,
                                       r"'sections'"),
    "report section without analyzer": Case(("report", "{rep}/section_no_analyzer.json", "--html",
                                             "{s}/again.html"), 2, r"sections\[0\]"),
    "report summary a list": Case(("report", "{rep}/section_summary_list.json", "--html", "{s}/again.html"), 2,
                                  r"sections\[0\]"),
    "report section data wrong shape": Case(("report", "{rep}/section_data_bad.json", "--html", "{s}/again.html"),
                                            2, r"gradcam"),
    "report findings wrong shape": Case(("report", "{rep}/findings_bad.json", "--html", "{s}/again.html"), 2,
                                        r"'findings"),
    "report provenance wrong shape": Case(("report", "{rep}/provenance_bad.json", "--html", "{s}/again.html"), 2,
                                          r"'provenance'"),
    "report assets a list": Case(("report", "{rep}/assets_list.json", "--html", "{s}/again.html"), 2, r"'assets'"),
    "report nested too deep": Case(("report", "{rep}/deep.json", "--html", "{s}/again.html"), 2, r"deep\.json"),
    "report javascript: asset": Case(("report", "{rep}/asset_js.json", "--html", "{s}/again.html"), 0,
                                     r"WARNING.*asset", writes=("again.html",), post=_no_uri("javascript:alert")),
    "report https: asset": Case(("report", "{rep}/asset_https.json", "--html", "{s}/again.html"), 0,
                                r"WARNING.*asset", writes=("again.html",), post=_no_uri("https://evil")),
    "report SVG data asset": Case(("report", "{rep}/asset_svg.json", "--html", "{s}/again.html"), 0,
                                  r"WARNING.*asset", writes=("again.html",), post=_no_uri("data:image/svg")),
    "report HTML data asset": Case(("report", "{rep}/asset_html.json", "--html", "{s}/again.html"), 0,
                                   r"WARNING.*asset", writes=("again.html",), post=_no_uri("data:text/html")),
    "report valid": Case(("report", "{rep}/ok.json", "--html", "{s}/again.html"), 0, lines=0,
                         writes=("again.html",)),
    # policies
    "policy unknown kind": Case(("check", "{demo}", "--policy", "{pol}/unknown_kind.toml"), 2, r"unknown_kind.*nope"),
    "policy version": Case(("check", "{demo}", "--policy", "{pol}/bad_version.toml"), 2, r"version"),
    "policy missing data": Case(("check", "{demo}", "--policy", "{pol}/missing_data.toml"), 2, r"nowhere"),
    "policy trust key": Case(("check", "{demo}", "--policy", "{pol}/trust_key.toml"), 2, r"trust"),
    "policy binary": Case(("check", "{demo}", "--policy", "{pol}/binary.toml"), 2, r"binary\.toml"),
    # log injection: nothing a terminal or a CI runner would interpret
    "waiver reason injection under GitHub Actions": Case(
        ("check", "{demo}", "--policy", "{pol}/waiver_injection.toml"), 0, lines=0, env=GH,
        writes=("summary.md",), post=_summary_clean),
    "slice name injection": Case(("check", "{demo}", "--policy", "{pol}/slice_injection.toml"), 2,
                                 r"pwned", env=GH),
    "concept name injection": Case(_a("{demo}", "--analyzer", f"{PERF},min_slice_size=1",
                                      data="{p}/concept_injection"), 0, lines=0, env=GH),
    "OSC hyperlink in a class label": Case(_perf("{demo}", data="{p}/labels_ansi"), 2, r"classes\.txt"),
    "ANSI in a class folder name": Case(_perf("{demo}", data="{p}/ansi_class"), 2, r"unreadable image"),
    "--out with ANSI and a workflow command": Case(
        _perf("{demo}"), 0, lines=0, out=None, writes=("out\x1b[2J\n::error::pwned",), env=GH + (
            ("EXPLAINKIT_OUT", "{s}/out\x1b[2J\n::error::pwned"),)),
}


@pytest.fixture(scope="session")
def odd_models(hostile) -> dict[str, Path]:
    """Weights for the models without the TinyCNN layout, and a light config for default runs."""
    c = hostile["c"]
    torch.manual_seed(0)
    names = {"class_names": json.dumps(["circle", "square", "triangle"])}
    save_file(_MLP().state_dict(), c / "mlp.safetensors", metadata=names)
    save_file(_Tokens().state_dict(), c / "tokens.safetensors", metadata=names)
    save_file(_VolumeNet().state_dict(), c / "vol.safetensors",
              metadata={"class_names": json.dumps(["healthy", "lesion"])})
    save_file(_VolumeNet(2).state_dict(), c / "vol2.safetensors",
              metadata={"class_names": json.dumps(["healthy", "lesion"])})
    (hostile["cfg"] / "light.toml").write_text(
        "[analyzer.performance]\nn_resamples = 100\n"
        "[analyzer.captum]\nmethods = [\"saliency\"]\nmetric_images = 2\nroad_images = 1\nsteps = 2\n"
        "sanity = false\nn_examples = 1\nn_random = 0\nn_resamples = 100\nsave_maps = false\n")
    return hostile


# -- invariants -------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ANNOTATION = re.compile(r"^::(error|warning|notice) (file=[^,:\r\n]*(,line=\d+)?,)?title=[^:\r\n]*::[^\r\n]*$")


def _assert_inert(text: str, annotations: bool = False) -> None:
    """No control character, and no line a CI runner reads as a command (except our annotations)."""
    assert not _CONTROL.search(text), repr(text[:400])
    for line in text.splitlines():
        start = line.lstrip()
        if start.startswith(("::", "##[")):
            assert annotations and _ANNOTATION.match(line), repr(line)


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in [*filenames, *dirnames]:
            p = d / n
            if p in skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out


def _options_of(command: str) -> set[str]:
    cmd = cli.commands.get(command)
    names = {"--help", *(o for p in cli.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []))}
    if cmd is not None:
        names |= {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    return names


def _analyzer_params() -> set[str]:
    import inspect

    from explainkit.analyzers import get_analyzer_class, list_analyzers

    return {p for n in list_analyzers() for p in inspect.signature(get_analyzer_class(n).__init__).parameters}


def _assert_hints(command: str, text: str) -> None:
    """Every ``--option`` a message names exists for the command; every ``pass key=`` is a parameter."""
    options = _options_of(command)
    for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
        assert opt in options, f"hint names {opt}, which `explainkit {command}` does not have: {text}"
    params = _analyzer_params()
    for hint in re.findall(r"\bpass (?:the analyzer parameters? )?((?:\w+=[^ ,;]*(?: and |, )?)+)", text):
        for key in re.findall(r"(\w+)=", hint):
            assert key in params, f"hint names {key}=, which no analyzer accepts: {text}"


def _fill(template: str, v: dict) -> str:
    return template.format(**v)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, odd_models, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    paths = odd_models
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "home").mkdir()
    v = {"c": paths["c"], "w": paths["w"], "demo": paths["demo"], "m": paths["m"], "s": sandbox, "mod": MOD,
         "cfg": paths["cfg"], "p": paths["p"], "pol": paths["pol"], "rep": paths["rep"]}
    argv = [_fill(a, v) for a in case.argv]
    if argv[0] in ("analyze", "check") and case.out is not None and "--out" not in argv:
        argv += ["--out", str(sandbox / case.out)]
    for key in [k for k in os.environ if k.startswith(("EXPLAINKIT_", "GITHUB_"))]:
        if key != "EXPLAINKIT_DISABLE_PLUGIN_AUTOLOAD":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    monkeypatch.setenv("MPLCONFIGDIR", str(paths["c"].parent / "matplotlib"))  # matplotlib's own font cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox / "home" / ".cache"))
    for key, value in case.env:
        monkeypatch.setenv(key, _fill(value, v))
    monkeypatch.chdir(sandbox)
    if case.setup:
        case.setup(sandbox, paths)
    out_dir = sandbox / (case.out or "out")
    allowed = {out_dir, *(sandbox / w for w in case.writes)}
    before = _snapshot(sandbox, allowed), _snapshot(paths["c"], set())
    FORWARD_CALLS[0] = 0

    code = main(argv)

    stdout, stderr = capsys.readouterr()
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Try '") and not _PROGRESS.match(ln)]
    assert code == case.code, f"exit {code}, expected {case.code}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == case.lines, stderr
    if case.lines:
        assert lines[0].startswith("explainkit: "), lines[0]
        assert re.search(_fill(case.pattern, v), lines[0]), lines[0]
    github = dict(case.env).get("GITHUB_ACTIONS") == "true"
    _assert_inert(stdout, annotations=github)
    _assert_inert(stderr, annotations=github)
    _assert_hints(argv[0], stderr)
    assert not list(paths["m"].iterdir()), "a payload ran"
    after = _snapshot(sandbox, allowed), _snapshot(paths["c"], set())
    assert after == before, f"files written outside --out: {sorted(set(after[0]) ^ set(before[0]))[:5]}"
    if case.no_forward:
        assert FORWARD_CALLS[0] == 0, "the check came after a model pass"
    if case.post:
        case.post(sandbox, paths, stdout, stderr)


# -- images: every PIL mode against an independently computed RGB ------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_pil_mode_converts_by_value_range(mode, tmp_path):
    from explainkit.pixels import to_rgb

    image = _mode_images()[mode]
    got = np.asarray(to_rgb(image))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got.astype(int), _expected_rgb(image).astype(int), atol=1)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_sixteen_bit_file_matches_eight_bit(suffix, tmp_path, hostile):
    """The same picture in 8 and in 16 bits reads the same (no saturation)."""
    from explainkit.data.probe import ProbeSet

    eight = np.asarray(Image.open(_first_image(hostile["w"])).convert("L"))
    root = tmp_path / "probe"
    (root / "a").mkdir(parents=True)
    Image.frombytes("L", eight.shape[::-1], eight.tobytes()).save(root / "a" / "eight.png")
    _sixteen_bit(eight.astype(np.uint16) * 257).save(root / "a" / f"sixteen{suffix}")
    probe = ProbeSet.from_folder(root)
    a, b = (np.asarray(probe.load_image(i), np.float64) for i in range(2))
    assert abs(a.mean() - eight.mean()) < 0.01
    np.testing.assert_array_equal(a, b)


def test_palette_with_transparency_composites_on_white():
    from explainkit.pixels import to_rgb

    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0
    got = np.asarray(to_rgb(im))
    assert tuple(got[0, 0]) == (200, 100, 50)
    assert tuple(got[1, 1]) == (255, 255, 255)


# -- the whole message catalogue: every suggested option exists --------------------------------------
def test_every_suggested_option_exists():
    """Scan every string literal of the library and the CLI for ``--option`` and check it is real."""
    import ast

    every = set()
    for command in cli.commands:
        every |= _options_of(command)
    root = Path(explainkit.__file__).parent
    cli_root = Path(sys.modules["explainkit.cli"].__file__).parent
    bad = []
    paths = [*root.rglob("*.py"), *cli_root.rglob("*.py")]
    for path in paths:  # options of the maintenance scripts' own argument parsers (cli/docs.py)
        every |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", path.read_text(encoding="utf-8")))
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w-])", node.value):
                    if opt not in every:
                        bad.append(f"{path.name}: {opt}")
    assert not bad, bad


# -- outputs: staged beside --out and swapped in; a failed run leaves the previous report ------------
def _samples_world(root: Path, world: Path, n: int) -> Path:
    dst = root / f"probe{n}"
    for cls in ("circle", "square", "triangle"):
        (dst / cls).mkdir(parents=True)
        for f in sorted((world / cls).iterdir())[:n]:
            shutil.copy(f, dst / cls / f.name)
    return dst


def test_reused_out_never_mixes_runs(hostile, tmp_path):
    from explainkit.samples import read_samples

    out = tmp_path / "out"
    spec = [("gradcam", {"methods": ["gradcam"], "metric_images": 0, "road_images": 0, "sanity": False,
                         "n_examples": 0, "n_random": 0, "n_resamples": 100})]
    handle = explainkit.load_model(hostile["demo"])
    explainkit.analyze(handle, _samples_world(tmp_path, hostile["w"], 4), spec, out=out)
    first = set(read_samples(out, "gradcam"))
    explainkit.analyze(handle, _samples_world(tmp_path, hostile["w"], 2), spec, out=out)
    second = set(read_samples(out, "gradcam"))
    assert len(first) == 12 and len(second) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_run_keeps_the_previous_report(hostile, tmp_path):
    out = tmp_path / "out"
    assert main(_perf(str(hostile["demo"]), "--out", str(out), data=str(hostile["w"]))) == 0
    before = (out / "report.json").read_bytes()
    nan = tmp_path / "nan.safetensors"
    model = TinyCNN(3)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    explainkit.save_model(model, nan, arch="explainkit:tiny_cnn(num_classes=3)",
                          class_names=["circle", "square", "triangle"], preprocessing=SYNTHETIC_PREPROCESSING)
    assert main(_perf(str(nan), "--out", str(out), data=str(hostile["w"]))) == 3
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors", "out"]


@pytest.mark.slow
def test_sigterm_leaves_the_previous_report(hostile, tmp_path):
    """A SIGTERM'd run exits 3 and leaves the last complete report and no staging folder."""
    import signal
    import time

    out = tmp_path / "out"
    assert main(_perf(str(hostile["demo"]), "--out", str(out), data=str(hostile["w"]))) == 0
    before = (out / "report.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "explainkit", "analyze", str(hostile["demo"]), "--data",
                             str(hostile["w"]), "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(p.name.startswith(".out") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "terminated" in err
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- the pieces the corpus relies on, tested directly -------------------------------------------------
@pytest.mark.parametrize(("raw", "want"), [
    ("plain text, 95% sure", "plain text, 95% sure"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b]8;;https://evil.example\x07link\x1b]8;;\x07", "link"),
    ("\x9b2Jc1 CSI", "c1 CSI"),
    ("bell\x07 and nul\x00", "bell and nul"),
    ("a\nb\r\nc", "a%0Ab%0D%0Ac"),
    ("::error::x", "%3A:error::x"),
    ("  ::add-mask::x", "  %3A:add-mask::x"),
    ("##[warning]x", "%23#[warning]x"),
    ("x\n::error::y", "x%0A::error::y"),
    ("literal %0A stays literal", "literal %250A stays literal"),
])
def test_escape(raw, want):
    from explainkit.textsafe import escape

    assert escape(raw) == want


def test_escape_property_markdown_and_lines():
    from explainkit.textsafe import escape_markdown, escape_property, inert_lines

    assert escape_property("a:b,c") == "a%3Ab%2Cc"
    assert escape_markdown("![x](https://e/t.png) <b>|") == r"\!\[x\]\(https://e/t.png\) \<b\>\|"
    assert inert_lines("ok\n  ::error::x\r\n##[warning]y\x1b[2J") == "ok\n  %3A:error::x\n%23#[warning]y"


def test_pickle_scanner_tells_instantiated_classes_from_calls(hostile):
    """``torch.save(module)`` instantiates classes (NEWOBJ); payloads call (REDUCE, INST, OBJ)."""
    from explainkit.loading.pickle_scan import CALLED, INSTANTIATED, global_uses, uses_in_torch_file

    mixed = uses_in_torch_file(hostile["c"] / "evil_mixed.pt", legacy=False)
    assert mixed[f"{MOD}.UserNet"] == {INSTANTIATED}
    assert mixed["torch.nn.modules.conv.Conv2d"] == {INSTANTIATED}
    assert mixed["posix.system"] == {CALLED}
    assert mixed["collections.OrderedDict"] == {CALLED}
    for name, data in _raw_pickles(Path("/nowhere")).items():
        uses = global_uses(data)
        assert all(kinds == {CALLED} for kinds in uses.values()), (name, uses)


def test_staged_dir_swaps_without_renameat2(tmp_path, monkeypatch):
    """The two-rename fallback (no renameat2) also replaces the folder completely."""
    import explainkit.outputs as io_mod

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    (out / "stale.npz").write_text("old")
    monkeypatch.setattr(io_mod, "_exchange", lambda a, b: False)
    with io_mod.StagedDir(out) as staged:
        (staged.path / "report.json").write_text("new")
        staged.commit()
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert (out / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
