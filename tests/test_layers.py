"""sifa.layers.SIFA: the inter-frame step as a layer, against the unfused reference ops and SIFA-Net's block."""
from __future__ import annotations

import pytest
import torch

from sifa.layers import SIFA, sifa_layers
from sifa.ops import reference


def unfused_sifa_step(x, conv_offset, weight, guide="difference"):
    """The bottleneck's step as docs/design.md §4.1 writes it, with the pure-PyTorch reference ops:
    x + shift_back(defagg(x, o, defcor(x, o))), o = conv_offset(sigmoid(x − x[prev]) · x + x)."""
    previous = torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)
    offset = conv_offset(torch.sigmoid(x - previous) * x + x if guide == "difference" else x)
    scores = reference.defcor(x, offset, weight, (1, 1), (1, 1), (1, 1), 1)
    agg = reference.defagg(x, offset, scores, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    return x + torch.cat([agg[:, :, 1:], torch.zeros_like(agg[:, :, :1])], dim=2)


def test_layer_equals_sifa_nets_step_with_the_same_weights():
    from sifa.models.sifa_resnet import SIFABottleneck

    torch.manual_seed(0)
    block = SIFABottleneck(16, 8, times=4, kernel_size=3)
    layer = SIFA(8, times=4, kernel_size=3)
    layer.load_state_dict({"conv_offset.weight": block.conv_offset.weight, "def_cor.weight": block.def_cor.weight})
    assert sifa_layers(block) == {"": block.sifa}  # the block runs a SIFA layer whose modules are its own
    assert block.sifa.conv_offset is block.conv_offset and block.sifa.def_cor is block.def_cor
    x = torch.randn(2, 8, 4, 6, 5)
    expected = unfused_sifa_step(x, block.conv_offset, block.def_cor.weight)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.inter_frame(x), expected, rtol=1e-5, atol=1e-5)


def test_plain_guide_and_fixed_window():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 5, 5)
    plain = SIFA(8, 3, offset_guide="plain")
    torch.testing.assert_close(plain(x), unfused_sifa_step(x, plain.conv_offset, plain.def_cor.weight, "plain"),
                               rtol=1e-5, atol=1e-5)
    fixed = SIFA(8, 3, offset_mode="zero")
    assert not hasattr(fixed, "conv_offset")  # nothing to learn: the state dict holds only def_cor.weight
    zero = torch.nn.Conv3d(8, 18, 1, bias=False)
    torch.nn.init.zeros_(zero.weight)
    torch.testing.assert_close(fixed(x), unfused_sifa_step(x, zero, fixed.def_cor.weight), rtol=1e-5, atol=1e-5)
    assert torch.all(SIFA(8, 3, offset_init="zero").conv_offset.weight == 0)
    with pytest.raises(ValueError, match=r"offset_mode must be one of \['learned', 'zero'\], got 'fixed'"):
        SIFA(8, 3, offset_mode="fixed")


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = SIFA(3, 3, kernel_size=3).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)  # fractional offsets: away from the bilinear kinks
    x = torch.randn(1, 3, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    weight = layer.conv_offset.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: torch.func.functional_call(layer, {"conv_offset.weight": w}, (x,)),
                                    (x, weight), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_channels_last_in_and_out():
    torch.manual_seed(0)
    layer = SIFA(8, 4)
    x = torch.randn(2, 8, 4, 6, 5)
    y = layer(x.to(memory_format=torch.channels_last_3d))
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)


def test_zero_init_residual_is_the_identity_and_learns():
    torch.manual_seed(0)
    layer = SIFA(8, 4, zero_init_residual=True)
    x = torch.randn(2, 8, 4, 6, 5)
    assert torch.equal(layer(x), x)
    # the branch norm gets a gradient at once; after one step the offsets get theirs too
    target = torch.randn_like(x)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        optimizer.step()
    assert layer.norm.weight.grad.abs().sum() > 0 and layer.conv_offset.weight.grad.abs().sum() > 0
    assert not torch.allclose(layer(x), x)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    layer = SIFA(8, 4, zero_init_residual=True)
    torch.nn.init.ones_(layer.norm.weight)
    x = torch.randn(1, 8, 4, 5, 5, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # the ops' fake kernels and autograd
    got = compiled(x)
    torch.testing.assert_close(got, layer(x))
    got.sum().backward()
    assert x.grad.abs().sum() > 0


def test_visualize_shows_the_fixed_window_of_sifa_swin(tmp_path):
    import json

    from sifa.models.sifa_swin import C2DSwin
    from sifa.tools import visualize

    torch.manual_seed(0)
    model = C2DSwin(32, (2, 2), (1, 2), 0.0, num_classes=4, clip_length=8, sifa_kernel=3, name="small_sifa_swin")
    block = model.layers[1].blocks[0]
    captured = {}
    block.sifa.register_forward_pre_hook(lambda module, args: captured.setdefault("f", args[0]))
    clip = torch.randn(3, 8, 224, 224)
    written = visualize.visualize(model.eval(), clip, str(tmp_path), num_points=2)
    # the non-shifted blocks (the shifted ones take their temporal convolution): 2 feature frames, 1 pair each
    assert written == [str(tmp_path / f"layers.{i}.blocks.0_t0.png") for i in (0, 1)]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("layers.0.blocks.0_t0.png", "clip.gif"))
    record = json.loads((tmp_path / "layers.1.blocks.0_t0.json").read_text())
    assert (record["stride"], record["feature_size"], record["query_image_frame"], record["key_image_frame"]) == \
        (8, [28, 28], 2, 6)
    f = captured["f"]
    zero = f.new_zeros(1, 18, *f.shape[2:])
    scores = reference.defcor(f, zero, block.def_cor.weight, (1, 1), (1, 1), (1, 1), 1)
    for point in record["points"]:
        h, w = point["query"]["feature"]
        for tap in point["taps"]:  # zero offsets: the 3×3 window around the query pixel, on frame 1
            assert tap["feature"] == [h - 1 + tap["row"], w - 1 + tap["col"]]
            assert tap["score"] == pytest.approx(float(scores[0, tap["tap"], 1, h, w]), rel=1e-4, abs=1e-6)


def test_the_key_view_widens_to_far_taps_unless_clipped_to_the_image():
    from sifa.tools.visualize import key_view

    points = [{"taps": [{"image": [-20.0, 10.0]}, {"image": [5.0, 90.0]}]}]  # one tap above, one right of 64×64
    assert key_view(points, 64, 64, clip_to_image=False) == ((-0.5, 91.0), (63.5, -21.0))
    assert key_view(points, 64, 64, clip_to_image=True) == ((-0.5, 63.5), (63.5, -0.5))
