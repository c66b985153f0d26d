"""Loading: format sniffing, trust tiers, malicious pickles, architectures, preprocessing."""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import explainkit
from explainkit.errors import ConfigError, ModelRefusedError
from explainkit.hooks import capture_layers
from explainkit.loading import ModelFormat, sniff_format
from explainkit.loading.arch import parse_arch, strip_prefixes
from explainkit.loading.pickle_scan import globals_in_torch_file
from explainkit.models import TinyCNN

ARCH = "explainkit:tiny_cnn(num_classes=3)"
PREP = {"input_size": 32, "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5"}


class LocalNet(nn.Module):
    """A model class defined in this test module (for allow-classes tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyCNN(3).eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_safetensors_round_trip_with_metadata(model, tmp_path):
    path = explainkit.save_model(model, tmp_path / "m.bin", arch=ARCH, class_names=["a", "b", "c"],
                                 preprocessing={"input_size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert sniff_format(path) == ModelFormat.SAFETENSORS  # extension ignored
    h = explainkit.load_model(path)
    assert h.format == ModelFormat.SAFETENSORS and h.trust_mode == "weights-only"
    assert h.class_names == ("a", "b", "c") and h.arch == ARCH
    assert h.preprocessing.input_size == (32, 32)
    assert h.preprocessing.sources["mean"] == "safetensors metadata"
    assert h.sha256 == explainkit.loading.file_sha256(path)
    assert _same_outputs(model, h.module)


def test_state_dict_checkpoint_dict_and_prefixes(model, tmp_path):
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ck.pth")
    h = explainkit.load_model(tmp_path / "ck.pth", arch=ARCH, **PREP)
    assert h.format == ModelFormat.TORCH_ZIP and h.trust_mode == "weights-only"
    assert h.load_notes["stripped_prefixes"] == ["module.", "_orig_mod."]
    assert _same_outputs(model, h.module)


def test_legacy_format_loads(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "legacy.pt") == ModelFormat.TORCH_LEGACY
    h = explainkit.load_model(tmp_path / "legacy.pt", arch=ARCH, **PREP)
    assert _same_outputs(model, h.module)


def test_wrong_arch_reports_keys(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    expected = r"weights do not match --arch .*shape mismatch: classifier.weight \(3, 64\) vs \(5, 64\)"
    with pytest.raises(ConfigError, match=expected):
        explainkit.load_model(tmp_path / "sd.pt", arch="explainkit.models:tiny_cnn(num_classes=5)", **PREP)
    torch.save(TinyCNN(5).state_dict(), tmp_path / "sd5.pt")
    with pytest.raises(ConfigError, match=r"shape mismatch.*pass it: --arch 'NAME\(num_classes=K\)'"):
        explainkit.load_model(tmp_path / "sd5.pt", arch="explainkit.models:tiny_cnn", **PREP)
    with pytest.raises(ConfigError, match=r"missing key\(s\).*unexpected key\(s\)"):
        explainkit.load_model(tmp_path / "sd.pt", arch="torchvision:resnet18", **PREP)
    with pytest.raises(ConfigError, match="holds weights only; pass --arch"):
        explainkit.load_model(tmp_path / "sd.pt")


def test_full_module_needs_allow_classes(tmp_path):
    torch.manual_seed(0)
    net = LocalNet().eval()
    torch.save(net, tmp_path / "full.pt")
    mod = LocalNet.__module__
    with pytest.raises(ModelRefusedError, match=rf"{mod}\.LocalNet.*--allow-classes {mod}"):
        explainkit.load_model(tmp_path / "full.pt")
    with pytest.raises(ModelRefusedError):
        explainkit.load_model(tmp_path / "full.pt", allow_classes=["torch"])  # the class's module is not named
    h = explainkit.load_model(tmp_path / "full.pt", allow_classes=[mod])
    assert h.trust_mode == "allow-classes" and isinstance(h.module, LocalNet)
    assert f"{mod}.LocalNet" in h.load_notes["globals_allowed"]
    assert _same_outputs(net, h.module)


def test_torch_nn_only_full_module_loads_by_allowlist(tmp_path):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    torch.save(seq, tmp_path / "seq.pt")
    h = explainkit.load_model(tmp_path / "seq.pt")
    assert h.trust_mode == "allow-classes" and _same_outputs(seq, h.module)


class _Payload:
    """A pickle payload that would write a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["zip", "legacy", "nested"])
def test_malicious_pickle_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    obj = {"state_dict": {"w": torch.zeros(2)}, "evil": payload} if container == "nested" else payload
    path = tmp_path / "evil.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=container != "legacy")
    with pytest.raises(ModelRefusedError, match=r"os\.system|posix\.system"):
        explainkit.load_model(path, arch=ARCH)
    with pytest.raises(ModelRefusedError):
        explainkit.load_model(path, arch=ARCH, allow_classes=["os", "posix"])  # not nn.Module classes
    assert not marker.exists()


def test_raw_pickle_file_is_unrecognised(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelRefusedError, match="unrecognised model format"):
        explainkit.load_model(tmp_path / "raw.pkl")
    assert not marker.exists()


def test_torchscript_needs_trust_and_has_no_hooks(model, tmp_path):
    torch.jit.save(torch.jit.script(model), tmp_path / "ts.pt")
    assert sniff_format(tmp_path / "ts.pt") == ModelFormat.TORCHSCRIPT
    with pytest.raises(ModelRefusedError, match=r"TorchScript.*--trust"):
        explainkit.load_model(tmp_path / "ts.pt", **PREP)
    h = explainkit.load_model(tmp_path / "ts.pt", trust=True, **PREP)
    assert h.trust_mode == "trusted" and not h.module_hooks and "module_hooks" not in h.capabilities
    assert _same_outputs(model, h.module)


def test_export_program_unflattened_hooks_fire_static_batch(model, tmp_path):
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
    torch.export.save(ep, tmp_path / "m.pt2")
    assert sniff_format(tmp_path / "m.pt2") == ModelFormat.TORCH_EXPORT
    with pytest.raises(ModelRefusedError, match=r"torch\.export.*--trust"):
        explainkit.load_model(tmp_path / "m.pt2", **PREP)
    h = explainkit.load_model(tmp_path / "m.pt2", trust=True, **PREP)
    assert h.static_batch == 2 and "dynamic_batch" not in h.capabilities
    assert "features.3" in h.layer_names()
    x = torch.randn(1, 3, 32, 32)
    with capture_layers(h.module, {"features.3": h.module.get_submodule("features.3")}, detach=True) as cap:
        out = h.forward(x)  # batch 1 padded to the static batch of 2
    assert out.shape == (1, 3) and len(cap.outputs["features.3"]) == 1
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-5)


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b"PK\x03\x04garbage", b"\x80\x02\x8a\x0a"])
def test_garbage_files_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelRefusedError):
        explainkit.load_model(path)


def test_truncated_files_refused(model, tmp_path):
    for name, saver in [("sd.pt", lambda p: torch.save(model.state_dict(), p)),
                        ("m.safetensors", lambda p: save_file(model.state_dict(), p))]:
        p = tmp_path / name
        saver(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelRefusedError):
            explainkit.load_model(p, arch=ARCH)


def test_unknown_zip_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("top/readme.txt", "hi")
    with pytest.raises(ModelRefusedError, match="not a PyTorch checkpoint"):
        sniff_format(tmp_path / "x.zip")


def test_pickle_scanner_agrees_with_torch(model, tmp_path):
    torch.save(model, tmp_path / "full.pt")
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(a=1)}, tmp_path / "ck.pt")
    for name in ("full.pt", "ck.pt"):
        ours = set(globals_in_torch_file(tmp_path / name, legacy=False))
        theirs = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / name))
        assert theirs <= ours


def test_arch_specs():
    spec = parse_arch("torchvision:resnet18(num_classes=10, zero_init_residual=True)")
    assert (spec.source, spec.name, dict(spec.kwargs)) == ("torchvision", "resnet18",
                                                           {"num_classes": 10, "zero_init_residual": True})
    for bad in ["resnet18", "torchvision:", "x:y(1)", "x:y(a=b)", "x:y(a=__import__('os'))"]:
        with pytest.raises(ConfigError):
            parse_arch(bad)
    with pytest.raises(ConfigError, match="unknown torchvision architecture"):
        explainkit.loading.arch.build_arch(parse_arch("torchvision:resnet1234"))
    with pytest.raises(ConfigError, match="cannot import"):
        explainkit.loading.arch.build_arch(parse_arch("no_such_pkg.mod:factory"))


def test_strip_prefixes_leaves_mixed_keys():
    sd = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert strip_prefixes(sd) == (sd, [])


def test_preprocessing_resolution_and_errors(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    # TinyCNN carries its own documented defaults.
    h = explainkit.load_model(tmp_path / "sd.pt", arch=ARCH, input_size=48)
    assert h.preprocessing.input_size == (48, 48)
    assert h.preprocessing.sources == {"input_size": "explicit", "mean": f"defaults of {ARCH}",
                                       "std": f"defaults of {ARCH}", "resize": "default"}
    h = explainkit.load_model(tmp_path / "sd.pt", arch=ARCH)
    assert h.preprocessing.mean == (0.5, 0.5, 0.5)
    # torchvision architectures take the default weights' transforms.
    from explainkit.loading.preprocessing import arch_defaults

    d = arch_defaults(nn.Identity(), "torchvision:resnet18")
    assert tuple(d["mean"]) == (0.485, 0.456, 0.406) and list(d["input_size"]) == [224]
    with pytest.raises(ConfigError, match="bad std"):
        explainkit.load_model(tmp_path / "sd.pt", arch=ARCH, std="0,1,1")
    with pytest.raises(ConfigError, match="bad input size"):
        explainkit.load_model(tmp_path / "sd.pt", arch=ARCH, input_size="huge")


def test_unknown_preprocessing_is_a_clear_error():
    h = explainkit.wrap(nn.Conv2d(3, 3, 1))
    assert h.preprocessing is None
    with pytest.raises(ConfigError, match="preprocessing unknown"):
        h.preprocess([])


def test_wrap_and_layer_names(model):
    h = explainkit.wrap(model, input_size=64, mean="0.5,0.5,0.5", std="0.5,0.5,0.5", class_names=["a", "b", "c"])
    assert h.format == ModelFormat.IN_MEMORY and h.sha256 is None
    assert h.layer_names()[:3] == ["features", "features.0", "features.0.0"]
    assert explainkit.wrap(h) is h
    with pytest.raises(ConfigError, match="class names must be non-empty and unique"):
        explainkit.wrap(model, class_names=["a", "a"])
