"""Hooks are only registered inside context managers and always removed."""

import pytest
import torch

from explainkit.adapters import resolve_layers
from explainkit.hooks import capture_layers, eval_mode, hook_count


def test_capture_removes_hooks_on_success_and_failure(tiny_cnn):
    layers = resolve_layers(tiny_cnn, ["features.1", "features.3"])
    x = torch.randn(2, 3, 32, 32)
    with capture_layers(tiny_cnn, layers, detach=True) as cap:
        assert hook_count(tiny_cnn) == 2
        tiny_cnn(x)
    assert hook_count(tiny_cnn) == 0
    assert cap["features.1"].shape == (2, 32, 16, 16) and cap.order == ["features.1", "features.3"]
    with pytest.raises(ZeroDivisionError), capture_layers(tiny_cnn, layers):
        raise ZeroDivisionError
    assert hook_count(tiny_cnn) == 0


def test_transform_and_stop_early(tiny_cnn):
    layers = resolve_layers(tiny_cnn, ["features.1"])
    calls = []
    tiny_cnn.classifier.register_forward_pre_hook(lambda *a: calls.append(1))
    with capture_layers(tiny_cnn, layers, detach=True, transform=lambda t: t.mean((2, 3)), stop_early=True) as cap:
        assert cap.forward(tiny_cnn, torch.randn(3, 3, 32, 32)) is None
    assert cap["features.1"].shape == (3, 32) and not calls  # classifier never ran


def test_grad_from_layers_matches_full_backward(tiny_cnn):
    name = "features.2"
    layers = resolve_layers(tiny_cnn, [name])
    x = torch.randn(2, 3, 32, 32)
    with eval_mode(tiny_cnn):
        with capture_layers(tiny_cnn, layers) as cap:
            out = tiny_cnn(x)
        act = cap[name]
        (g_full,) = torch.autograd.grad(out[:, 1].sum(), act)
        with capture_layers(tiny_cnn, layers, grad_from_layers=True) as cap2, torch.no_grad():
            out2 = tiny_cnn(x)
        assert out2.requires_grad
        (g_cut,) = torch.autograd.grad(out2[:, 1].sum(), cap2[name])
    assert torch.allclose(g_full, g_cut, atol=1e-6) and torch.allclose(out, out2, atol=1e-6)
    assert torch.is_grad_enabled()
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_eval_mode_restores_flags(tiny_cnn):
    tiny_cnn.train()
    tiny_cnn.features[1].eval()
    with eval_mode(tiny_cnn):
        assert not any(m.training for m in tiny_cnn.modules())
    assert tiny_cnn.training and not tiny_cnn.features[1].training and tiny_cnn.features[0].training


def test_layer_called_twice_is_reported(tiny_cnn):
    layers = resolve_layers(tiny_cnn, ["classifier"])
    with capture_layers(tiny_cnn, layers) as cap:
        tiny_cnn(torch.randn(1, 3, 16, 16))
        tiny_cnn(torch.randn(1, 3, 16, 16))
    from explainkit.errors import ConfigError

    with pytest.raises(ConfigError, match="ran 2 times"):
        cap["classifier"]
