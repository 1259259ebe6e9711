"""Networks: state-dict layout against the original's listings, the model contract, forward/backward, checks."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

import yaml

from sifa.config import load_config
from sifa.errors import ConfigError
from sifa.models import check_model_config, get_model_by_name, list_models, model_entry
from sifa.models.build import build_model
from sifa.models.sifa_resnet import SIFABottleneck
from sifa.models.sifa_swin import SIFASwinBlock, SwinBlock
from sifa.ops import defagg, previous_frame

LISTINGS = sorted((Path(__file__).resolve().parent / "data" / "state_dict").glob("*.txt"))


def parse_listing(path: Path) -> Tuple[str, dict, int, int, Dict[str, Tuple[str, Tuple[int, ...]]]]:
    """-> (network, constructor kwargs, parameters, trainable parameters, {key: (kind, shape)})."""
    lines = path.read_text().splitlines()
    call = ast.parse(lines[0].lstrip("# ").strip(), mode="eval").body
    kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    total, trainable = map(int, re.search(r"parameters: (\d+) \(trainable (\d+)\)", lines[1]).groups())
    entries = {}
    for line in lines[3:]:
        key, kind, shape = line.split()
        entries[key] = (kind, () if shape == "scalar" else tuple(int(s) for s in shape.split("x")))
    return call.func.id, kwargs, total, trainable, entries


def describe(model: torch.nn.Module) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """Our state dict in the listing's terms: P trainable / F frozen parameter, B buffer."""
    params = dict(model.named_parameters())
    out = {}
    for key, value in model.state_dict().items():
        kind = ("P" if params[key].requires_grad else "F") if key in params else "B"
        out[key] = (kind, tuple(value.shape))
    return out


def test_listings_are_present() -> None:
    assert len(LISTINGS) == 6


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda p: p.stem)
def test_state_dict_matches_original(listing: Path) -> None:
    name, kwargs, total, trainable, expected = parse_listing(listing)
    assert name == listing.stem
    model = get_model_by_name(name, **kwargs)
    ours = describe(model)
    assert sorted(set(expected) - set(ours)) == [], "entries of the original we lack"
    assert sorted(set(ours) - set(expected)) == [], "entries the original lacks"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}, "kind or shape differs"
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_all_networks_registered_with_their_family() -> None:
    resnets = {"c2d_sifa_resnet50", "c2d_sifa_resnet101", "c2d_resnet50", "c2d_tsm_resnet50"}
    swins = {f"c2d_{s}swin_vit_{v}_p4_w7" for s in ("", "sifa_") for v in "tsbl"}
    assert set(list_models()) == resnets | swins
    assert set(list_models("resnet")) == resnets and set(list_models("swin")) == swins
    assert all(model_entry(name).family == "swin" for name in swins)


@pytest.mark.parametrize("name, heads", [("c2d_resnet50", 1), ("c2d_sifa_resnet50", 2)])
def test_model_contract(name: str, heads: int) -> None:
    """forward = forward_head(forward_features(x)), a list of per-head logits for every network."""
    torch.manual_seed(0)
    model = get_model_by_name(name, num_classes=5, clip_length=8).eval()
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(features, pre_logits=True)
    # the dual branch: half the frames, no stride in its stage 4
    assert [tuple(f.shape) for f in features] == [(2, 2048, 2, 2, 2), (2, 2048, 1, 4, 4)][:heads]
    assert isinstance(logits, list) and [tuple(o.shape) for o in logits] == [(2, 5)] * heads
    for a, b in zip(logits, model.forward_head(features)):
        torch.testing.assert_close(a, b)
    assert [tuple(p.shape) for p in pooled] == [(2, 2048)] * heads


def test_def_cor_weight_follows_clip_length() -> None:
    model = get_model_by_name("c2d_sifa_resnet50", clip_length=32)
    assert model.layer3[1].def_cor.weight.shape == (256, 8, 3, 3)
    assert model.layer4_dual[1].def_cor.weight.shape == (512, 4, 3, 3)
    assert torch.all(model.layer3[1].def_cor.weight == 1 / 256)


def test_sifa_resnet_forward_backward() -> None:
    torch.manual_seed(0)
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=7)
    for block in model.modules():  # bn3 starts at zero, which would block every residual-branch gradient
        if hasattr(block, "bn3"):
            torch.nn.init.ones_(block.bn3.weight)
    out = model(torch.randn(1, 3, 16, 112, 112))
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(1, 7), (1, 7)]
    assert all(torch.isfinite(o).all() for o in out)
    (out[0].sum() + out[1].sum()).backward()
    sifa_blocks = [m for m in model.modules() if isinstance(m, SIFABottleneck)]
    assert len(sifa_blocks) == 2 + 3 + 1 + 1  # odd blocks of layer2, layer3, layer4, layer4_dual
    for block in sifa_blocks:
        assert block.conv_offset.weight.grad.abs().sum() > 0
        assert block.def_cor.weight.grad is None  # frozen


def test_plain_resnet_has_one_head() -> None:
    model = get_model_by_name("c2d_resnet50", num_classes=5, clip_length=4).eval()
    (logits,) = model(torch.randn(2, 3, 4, 64, 64))
    assert logits.shape == (2, 5)


def test_sifa_step_closed_form() -> None:
    """K=1 with zero offsets: frame t gains corr[t+1]·f[t+1], corr[t] = mean_c f[t−1]·f[t] (frame 0: itself)."""
    torch.manual_seed(0)
    block = SIFABottleneck(16, 8, times=4, kernel_size=1)
    torch.nn.init.zeros_(block.conv_offset.weight)
    f = torch.randn(2, 8, 4, 5, 6)
    prev = torch.cat([f[:, :, :1], f[:, :, :-1]], dim=2)
    corr = (prev * f).mean(dim=1, keepdim=True)
    expected = f.clone()
    expected[:, :, :-1] += (corr * f)[:, :, 1:]
    torch.testing.assert_close(block.inter_frame(f), expected)


def test_sifa_blocks_equal_the_unfused_def_cor_then_def_agg() -> None:
    """The blocks run correlation and aggregation fused; the design writes them as defagg(f, o, def_cor(f, o))."""
    torch.manual_seed(0)
    block = SIFABottleneck(16, 8, times=4, kernel_size=3)
    torch.nn.init.normal_(block.conv_offset.weight, std=0.3)
    f = torch.randn(2, 8, 4, 6, 5, requires_grad=True)
    offset = block.conv_offset(torch.sigmoid(f - previous_frame(f)) * f + f)
    agg = defagg(f, offset, block.def_cor(f, offset))
    expected = f + torch.cat([agg[:, :, 1:], torch.zeros_like(agg[:, :, :1])], dim=2)
    got = block.inter_frame(f)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    gout = torch.randn_like(got)
    params = (f, block.conv_offset.weight)
    for a, b in zip(torch.autograd.grad(got, params, gout), torch.autograd.grad(expected, params, gout)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    swin = SIFASwinBlock(16, (6, 5), 2, 0, 0.0, times=4)
    tokens = torch.randn(2 * 4, 6, 5, 16)
    v = tokens.reshape(2, 4, 6, 5, 16).permute(0, 4, 1, 2, 3)
    zeros = v.new_zeros(2, 18, 4, 6, 5)
    agg = defagg(v, zeros, swin.def_cor(v, zeros))
    agg = torch.cat([agg[:, :, 1:], torch.zeros_like(agg[:, :, :1])], dim=2)
    expected = tokens + swin.tda_norm(agg.permute(0, 2, 3, 4, 1).reshape(8, 6, 5, 16))
    torch.testing.assert_close(swin.inter_frame(tokens), expected, rtol=1e-5, atol=1e-5)


def test_sifa_swin_forward_backward() -> None:
    torch.manual_seed(0)
    model = get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", num_classes=5, clip_length=8)
    features = model.forward_features(torch.randn(1, 3, 8, 224, 224))
    assert [tuple(f.shape) for f in features] == [(1, 2, 7, 7, 768)]  # 2 four-frame clips of 7×7 tokens
    assert [tuple(p.shape) for p in model.forward_head(features, pre_logits=True)] == [(1, 768)]
    (out,) = model.forward_head(features)
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    out.sum().backward()
    blocks = [m for m in model.modules() if isinstance(m, SIFASwinBlock)]
    assert len(blocks) == 24
    for block in blocks:
        if block.shifted:
            assert block.conv.weight.grad.abs().sum() > 0
        else:
            assert block.tda_norm.weight.grad.abs().sum() > 0
    last = model.layers[3].blocks
    assert not last[0].shifted and not last[1].shifted  # the 7×7 window covers the whole last stage


def test_sifa_swin_block_without_sifa_contribution_equals_plain() -> None:
    """tda_norm at zero (its init) and a zero temporal conv (the transfer's init) leave Swin unchanged."""
    torch.manual_seed(0)
    tokens = torch.randn(2 * 2, 14, 14, 32)
    for shift in (0, 3):
        sifa = SIFASwinBlock(32, (14, 14), 2, shift, 0.0, times=2).eval()
        plain = SwinBlock(32, (14, 14), 2, shift, 0.0).eval()
        torch.nn.init.zeros_(sifa.conv.weight)
        torch.nn.init.zeros_(sifa.tda_norm.weight)
        torch.nn.init.zeros_(sifa.tda_norm.bias)
        plain.load_state_dict(sifa.state_dict(), strict=False)
        torch.testing.assert_close(sifa(tokens), plain(tokens))
        torch.nn.init.ones_(sifa.tda_norm.weight)
        torch.nn.init.normal_(sifa.conv.weight)
        assert not torch.allclose(sifa(tokens), plain(tokens))


def test_autocast() -> None:
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=3, clip_length=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 8, 64, 64))
    assert all(o.shape == (1, 3) and torch.isfinite(o.float()).all() for o in out)
    block = SIFASwinBlock(32, (14, 14), 2, 0, 0.0, times=2)
    torch.nn.init.ones_(block.tda_norm.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(torch.randn(4, 14, 14, 32))
    assert y.shape == (4, 14, 14, 32) and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name, shape, match", [
    ("c2d_sifa_resnet50", (1, 3, 12, 64, 64), "divisible by 8"),
    ("c2d_sifa_resnet50", (1, 3, 8, 64, 64), "clip_length=16"),
    ("c2d_resnet50", (1, 3, 6, 64, 64), "divisible by 4"),
    ("c2d_resnet50", (1, 4, 8, 64, 64), "N×3×L×H×W"),
    ("c2d_swin_vit_s_p4_w7", (1, 3, 6, 224, 224), "divisible by 4"),
    ("c2d_swin_vit_s_p4_w7", (1, 3, 16, 112, 112), "224×224"),
])
def test_wrong_input_shape_is_rejected(name: str, shape: Tuple[int, ...], match: str) -> None:
    model = get_model_by_name(name, num_classes=2)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(shape))


def test_factory_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        get_model_by_name("c2d_sifa_resnet18")
    with pytest.raises(ValueError, match="pooling_arch"):
        get_model_by_name("c2d_resnet50", pooling_arch="max")
    with pytest.raises(ValueError, match="multiple of 8"):
        get_model_by_name("c2d_sifa_resnet50", clip_length=12)
    with pytest.raises(ValueError, match="multiple of 4"):
        get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", clip_length=6)
    with pytest.raises(ValueError, match="4 kernel sizes"):
        get_model_by_name("c2d_sifa_resnet50", sifa_kernel=[3, 3])


def test_a_sifa_swin_setting_without_sifa_kernel_gets_the_originals_kernel_3(tmp_path):
    # The default file's kernel sizes are the network's own: a SIFA-Net list there gave SIFA-Swin 1×1 blocks.
    setting = tmp_path / "swin.yml"
    setting.write_text(yaml.safe_dump({"network": {"net_name": "c2d_sifa_swin_vit_s_p4_w7"}}))
    model = build_model(load_config(setting), 1)
    assert {m.kernel_size for m in model.modules() if isinstance(m, SIFASwinBlock)} == {3}
    assert {m.def_cor.weight.shape[2:] for m in model.modules() if isinstance(m, SIFASwinBlock)} == {(3, 3)}


def test_sifa_kernel_is_checked_per_design(tmp_path):
    setting = tmp_path / "swin.yml"
    setting.write_text(yaml.safe_dump({"network": {"net_name": "c2d_sifa_swin_vit_s_p4_w7"}}))
    with pytest.raises(ConfigError, match=r"'sifa_kernel' must list 1 kernel size\(s\) for c2d_sifa_swin_vit_s_p4_w7 "
                                          r"\(the SIFA Swins; default \[3\]\), got \[1, 3, 3, 3\]"):
        check_model_config(load_config(setting, ["sifa_kernel=[1, 3, 3, 3]"]))
    with pytest.raises(ConfigError, match=r"'sifa_kernel' must list 4 kernel size\(s\) for c2d_sifa_resnet50"):
        check_model_config(load_config(setting, ["net_name=c2d_sifa_resnet50", "sifa_kernel=[3]"]))
    check_model_config(load_config(setting, ["net_name=c2d_resnet50", "sifa_kernel=[3]"]))  # unused there
    with pytest.raises(ValueError, match="c2d_sifa_swin_vit_s_p4_w7: sifa_kernel must be one kernel size"):
        get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", sifa_kernel=[1, 3, 3, 3])
    assert get_model_by_name("c2d_sifa_resnet50", clip_length=8).sifa_kernel == [1, 3, 3, 3]


def test_model_names_come_from_the_registry():
    for name in ("c2d_sifa_resnet50", "c2d_tsm_resnet50", "c2d_swin_vit_s_p4_w7"):
        assert get_model_by_name(name, num_classes=2, clip_length=8).name == name == model_entry(name).name


def test_config_checks_the_clip_length_against_the_networks_strides(tmp_path):
    setting = tmp_path / "net.yml"
    setting.write_text(yaml.safe_dump({"sampler": {"clip_length": 4}, "dataset": {"crop_size": 64,
                                                                                   "eva_crop_size": 64}}))
    with pytest.raises(ConfigError, match=r"'clip_length' \(4\) × num_segments \(1\) = 4 frames per view, but "
                                          r"c2d_sifa_resnet50 needs a multiple of 8"):
        check_model_config(load_config(setting))
    check_model_config(load_config(setting, ["net_name=c2d_resnet50"]))
    with pytest.raises(ConfigError, match="key 'net_name' names an unknown network 'c2d_resnet18'"):
        check_model_config(load_config(setting, ["net_name=c2d_resnet18"]))


@pytest.mark.parametrize("shift", [0, 3])
def test_the_timm_internals_the_swin_block_uses_still_give_timms_forward(shift):
    # SwinBlock recomputes timm's block forward from window_partition, window_reverse and the block's attributes
    # (attn, attn_mask, window_size, window_area, shift_size, norms, mlp, drop paths): a timm that renames or
    # changes them breaks this equality (or the construction).
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    block = SwinBlock(32, (14, 14), num_heads=2, shift_size=shift, drop_path=0.0).eval()
    assert block.shifted == bool(shift)
    x = torch.randn(2, 14, 14, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), SwinTransformerBlock.forward(block, x), rtol=0, atol=0)
