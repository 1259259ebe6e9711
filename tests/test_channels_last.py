"""Channels-last networks (the config's ``channels_last``; sifa/models/memory_format.py): the SIFA blocks hand
the op its working layout, so its calls make no layout copies, with the contiguous network's logits,
gradients and state dict."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.utils._pytree as pytree
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

import sifa.ops as ops
from sifa.config import load_config
from sifa.errors import ConfigError
from sifa.layers import SIFA
from sifa.models import get_model_by_name
from sifa.models.build import build_model, uses_channels_last
from sifa.ops.profiling import layout_copies
from sifa.models.sifa_resnet import SIFABottleneck

needs_ext = pytest.mark.skipif(ops.backend() != "extension", reason="compiled extension not built")
CL = torch.channels_last_3d


def sifa_net(**kwargs):
    """A SIFA-Net whose residual branches are live (bn3 at zero would block every SIFA gradient) and whose offsets
    are a fraction of a pixel to a few pixels (the default init's reach hundreds at these sizes: far outside the
    image, where a rounding-sized change of an offset moves a tap to another pixel)."""
    torch.manual_seed(0)
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=5, clip_length=8, dropout_ratio=0.0, **kwargs)
    for block in model.modules():
        if hasattr(block, "bn3"):
            torch.nn.init.constant_(block.bn3.weight, 0.3)
        if isinstance(block, SIFABottleneck):
            block.conv_offset.weight.data *= 0.2
    return model


def forward_backward(model, x):
    x = x.clone().requires_grad_()
    logits = model(x)
    (logits[0].square().sum() + logits[1].sum()).backward()
    return logits, x.grad, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def two_threads():
    """The CPU convolutions run channels-last (oneDNN) for these small inputs only with a batch above 1 and more
    than one thread (else PyTorch's NCTHW convolution: its outputs come back contiguous)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@needs_ext
def test_same_logits_and_gradients_as_the_contiguous_network(two_threads):
    model = sifa_net()
    model_cl = copy.deepcopy(model)
    model_cl.set_channels_last()
    x = torch.randn(2, 3, 8, 64, 64)
    want = forward_backward(model, x)
    got = forward_backward(model_cl, x)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # gradients through 50 layers of BatchNorm over 2×2 to 8×8 maps: the convolutions' two summation orders
    # (oneDNN's channels-last and blocked kernels) differ by up to 1e-2 of the gradient here, the plain C2D
    # ResNet's alike; each SIFA block agrees to 1e-5 (the next test), and the float64 network exactly
    assert got[2].keys() == want[2].keys() and len(want[2]) > 100
    assert relative(got[1], want[1]) < 1e-2
    flat = [torch.cat([g[name].flatten() for name in want[2]]) for g in (got[2], want[2])]
    assert relative(*flat) < 1e-2
    # the SIFA blocks' offsets learn (those of more than one frame: with one, shift_back leaves nothing)
    assert all(b.conv_offset.weight.grad.abs().sum() > 0 for b in (model_cl.layer2[1], model_cl.layer3[1]))
    # the network did run channels-last: its conv weight gradients are in that layout
    assert got[2]["layer2.1.conv_offset.weight"].is_contiguous(memory_format=CL)


@needs_ext
@pytest.mark.parametrize("stage", ["layer2", "layer3", "layer4", "layer4_dual"])
def test_each_sifa_block_gives_the_contiguous_blocks_outputs_and_gradients(stage, two_threads):
    model = sifa_net()
    block = getattr(model, stage)[1]
    block_cl = copy.deepcopy(block)
    block_cl.conv_offset.to(memory_format=CL)
    for conv in (block_cl.conv1, block_cl.conv2, block_cl.conv3):
        conv.to(memory_format=CL)
    C, T = block.conv3.out_channels, block.def_cor.weight.shape[1]
    x = torch.randn(2, C, T, 4, 4)
    grad = torch.randn(2, C, T, 4, 4)
    results = []
    for net, memory_format in ((block, torch.contiguous_format), (block_cl, CL)):
        xs = x.clone(memory_format=memory_format).requires_grad_()
        out = net(xs)
        out.backward(grad.contiguous(memory_format=memory_format))
        results.append([out, xs.grad] + [p.grad for p in net.parameters() if p.grad is not None])
    assert results[1][0].is_contiguous(memory_format=CL) and results[1][1].is_contiguous(memory_format=CL)
    assert len(results[0]) == len(results[1]) > 5
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@needs_ext
def test_float64_network_gives_the_same_bits():
    # no oneDNN for float64: the convolutions are the same, so the logits and gradients are bitwise the same
    model = sifa_net().double()
    model_cl = copy.deepcopy(model)
    model_cl.set_channels_last()
    x = torch.randn(1, 3, 8, 64, 64, dtype=torch.float64)
    want, got = forward_backward(model, x), forward_backward(model_cl, x)
    assert all(torch.equal(a, b) for a, b in zip(got[0], want[0])) and torch.equal(got[1], want[1])
    assert all(torch.equal(got[2][name], g) for name, g in want[2].items())


def test_state_dict_unchanged():
    model = sifa_net()
    model_cl = copy.deepcopy(model)
    model_cl.set_channels_last()
    a, b = model.state_dict(), model_cl.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert b["layer2.1.conv2.weight"].is_contiguous(memory_format=CL)
    # each loads into the other; loading keeps the receiving network's layout
    fresh = sifa_net()
    fresh.set_channels_last()
    fresh.load_state_dict(a)
    assert fresh.conv1.weight.is_contiguous(memory_format=CL) and torch.equal(fresh.conv1.weight, a["conv1.weight"])
    plain = get_model_by_name("c2d_sifa_resnet50", num_classes=5, clip_length=8)
    plain.load_state_dict(b)
    assert plain.conv1.weight.is_contiguous() and torch.equal(plain.conv1.weight, a["conv1.weight"])
    model_cl.set_channels_last(False)
    assert all(p.is_contiguous() for p in model_cl.parameters()) and not model_cl.channels_last


@needs_ext
def test_no_layout_copies_in_the_sifa_calls_of_the_channels_last_network(two_threads):
    model = sifa_net()
    x = torch.randn(2, 3, 8, 64, 64)

    def step(net):
        return lambda: forward_backward(net, x)

    model_cl = copy.deepcopy(model)
    model_cl.set_channels_last()
    assert layout_copies(step(model_cl)) == []
    # the contiguous network (main's only way): every SIFA call copies its features into the working layout
    # and its output back, forward and backward
    copied = layout_copies(step(model))
    blocks = sum(isinstance(m, SIFABottleneck) for m in model.modules())
    assert len([c for c in copied if c[0] == "sifa::sifa_attention"]) == 2 * blocks
    assert len([c for c in copied if c[0] == "sifa::_sifa_attention_backward"]) == 3 * blocks


class NCTHWOutputs(TorchDispatchMode):
    """Records the ops that return an NCTHW-contiguous (not channels-last) tensor of ``channels`` channels."""

    def __init__(self, channels):
        super().__init__()
        self.channels, self.found = channels, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() == 5 and t.shape[1] in self.channels and \
                    t.is_contiguous() and not t.is_contiguous(memory_format=CL):
                self.found.append((str(func), tuple(t.shape)))
        return out


@needs_ext
@pytest.mark.parametrize("options", [{}, {"offset_guide": "plain"}, {"zero_init_residual": True},
                                     {"offset_mode": "zero"}])
def test_the_sifa_layer_keeps_channels_last_without_copies(options):
    # the layer's own ops (frame difference, conv_offset, shift_back, branch norm, residual) keep the layout:
    # no op of its forward or backward returns NCTHW features or offsets, and the op calls copy nothing
    torch.manual_seed(0)
    layer = SIFA(16, 4, **options)
    if "conv_offset" in dict(layer.named_children()):
        layer.conv_offset.to(memory_format=CL)
    if layer.norm is not None:
        torch.nn.init.ones_(layer.norm.weight)
    x = torch.randn(2, 16, 4, 6, 7).contiguous(memory_format=CL).requires_grad_()

    def step():
        out = layer(x)
        out.backward(torch.ones_like(out))
        return out

    with NCTHWOutputs(channels=(16, 18)) as mode:
        out = step()
    assert mode.found == []
    assert out.is_contiguous(memory_format=CL) and x.grad.is_contiguous(memory_format=CL)
    assert layout_copies(step) == []
    # the NCTHW layer: the same output, and its ops do return NCTHW tensors (what the check looks for)
    x_plain = x.detach().contiguous().requires_grad_()
    with NCTHWOutputs(channels=(16, 18)) as mode:
        torch.testing.assert_close(layer(x_plain), out.detach())
    assert mode.found != []


def _setting(tmp_path, **network):
    path = tmp_path / "cl.yml"
    path.write_text(yaml.safe_dump({"network": network}))
    return path


def test_the_config_key_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'channels_last' must be of type bool or NoneType, got str \('yes'\)"):
        load_config(_setting(tmp_path, channels_last="yes"))
    swin = load_config(_setting(tmp_path, net_name="c2d_sifa_swin_vit_t_p4_w7", channels_last=True))
    with pytest.raises(ConfigError, match=r"key 'channels_last' is true, but only c2d_sifa_resnet50, .* run "
                                          r"channels-last"):
        build_model(swin, 1)
    swin.channels_last = None
    assert not uses_channels_last(swin, "cuda")  # its SIFA calls already get channels-last views
    cfg = load_config(_setting(tmp_path, channels_last=None), ["clip_length=8"])
    assert (uses_channels_last(cfg, "cpu"), uses_channels_last(cfg, "cuda"), uses_channels_last(cfg)) == \
        (False, True, False)
    cfg.channels_last = True
    assert uses_channels_last(cfg, "cpu") and build_model(cfg, 1, "cpu").channels_last
    cfg.channels_last = False
    assert not uses_channels_last(cfg, "cuda") and not build_model(cfg, 1, "cuda").channels_last


def test_training_with_channels_last(tmp_path, tiny_data, monkeypatch):
    # a channels-last training run on the synthetic data: the network it trains is channels-last, and its
    # checkpoint (the same state dict) loads into the NCTHW network
    from helpers import tiny_config, train
    from sifa.checkpoint_file import load_checkpoint
    from sifa.engine import trainer

    built = []

    def spy(cfg, num_segments, device=None):
        built.append(build_model(cfg, num_segments, device))
        return built[-1]

    monkeypatch.setattr(trainer, "build_model", spy)
    config = tiny_config(tmp_path, tiny_data)
    train(config, "channels_last=true", "epochs=1")
    assert built[0].channels_last and built[0].conv1.weight.is_contiguous(memory_format=CL)
    checkpoint = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    assert checkpoint["config"]["channels_last"] is True
    plain = get_model_by_name("c2d_sifa_resnet50", num_classes=3, clip_length=8)
    plain.load_state_dict(checkpoint["model"])
    assert all(torch.isfinite(p).all() for p in plain.parameters())
