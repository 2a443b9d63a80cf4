"""HookManager / preserve_model_state leave the model bit-for-bit as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit

from captum_clip._hooks import HookManager, preserve_model_state


def _fingerprint(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_manager_restores_everything_after_exception():
    model = make_tiny_vit()
    model.visual.transformer.resblocks[0].train()  # a mixed-mode model
    model.text_projection.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before_out = model.encode_image(x)
    state, modes, grads = _fingerprint(model)

    class Boom(Exception):
        pass

    def scale_output(module, args, output):
        return output * 3

    with pytest.raises(Boom):
        with HookManager(model) as hooks:
            hooks.forward(model.visual.transformer.resblocks[-1], scale_output)
            hooks.forward_pre(model.visual, lambda m, a: None)
            hooks.patch_attr(model.visual, "output_tokens", True)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            with torch.no_grad():
                changed = model.encode_image(x)
            raise Boom

    assert _hook_count(model) == 0
    assert "output_tokens" not in model.visual.__dict__ or model.visual.output_tokens is False
    state2, modes2, grads2 = _fingerprint(model)
    assert modes2 == modes and grads2 == grads
    assert all(torch.equal(state[k], state2[k]) for k in state)
    with torch.no_grad():
        after_out = model.encode_image(x)
    assert torch.equal(before_out, after_out), (before_out - after_out).abs().max()
    assert isinstance(changed, tuple)  # the patched attribute was live inside


def test_preserve_model_state_restores_modes():
    model = make_tiny_vit()
    model.train()
    with pytest.raises(RuntimeError), preserve_model_state(model):
        model.eval()
        model.visual.requires_grad_(False)
        raise RuntimeError
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_type_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        HookManager("not a model")
    with pytest.raises(TypeError, match="nn.Module"), preserve_model_state(3):
        pass
