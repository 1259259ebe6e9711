"""ImageNet weight transfer (torchvision ResNet, Swin in the official and timm layouts) and checkpoint loading."""
from __future__ import annotations

import copy
import re
from typing import Dict, Set

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from sifa.errors import CheckpointMismatchError
from sifa.models import (get_model_by_name, load_weights, remove_defcor_weight, remove_fc,
                         state_dict_of, transfer_weights)


def keys_matching(model: torch.nn.Module, pattern: str) -> Set[str]:
    return {k for k in model.state_dict() if re.search(pattern, k)}


def assert_inflated_centre(weight3d: torch.Tensor, weight2d: torch.Tensor, stride: int, padding: int) -> None:
    """[0, 0, w, 0] along time, and on 4 identical frames the 3-D conv equals the 2-D conv of one frame."""
    assert weight3d.shape == (*weight2d.shape[:2], 4, *weight2d.shape[2:])
    torch.testing.assert_close(weight3d[:, :, 2], weight2d)
    assert torch.count_nonzero(weight3d[:, :, [0, 1, 3]]) == 0
    frame = torch.randn(1, 3, 32, 32)
    video = frame.unsqueeze(2).expand(-1, -1, 4, -1, -1)
    out3d = F.conv3d(video, weight3d, stride=(4, stride, stride), padding=(0, padding, padding))
    torch.testing.assert_close(out3d[:, :, 0], F.conv2d(frame, weight2d, stride=stride, padding=padding))


@pytest.fixture(scope="module")
def resnet50_2d() -> torchvision.models.ResNet:
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    for m in net.modules():  # torchvision's zero-free init leaves BN statistics trivial: make them not so
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def test_resnet_transfer_sifa(resnet50_2d: torchvision.models.ResNet) -> None:
    sd2d = resnet50_2d.state_dict()
    sd = remove_fc("c2d_sifa_resnet50", transfer_weights("c2d_sifa_resnet50", sd2d))
    model = get_model_by_name("c2d_sifa_resnet50")
    missing, unexpected = load_weights(model, sd, strict=False)
    expected_missing = keys_matching(model, r"(\.fc[12]\.|conv_offset\.weight|def_cor\.weight|^fc\.|^fc_dual\.)")
    assert set(missing) == expected_missing and unexpected == []
    state = model.state_dict()
    assert_inflated_centre(state["conv1.weight"], sd2d["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(state["layer2.0.downsample.0.weight"][:, :, 0], sd2d["layer2.0.downsample.0.weight"])
    for k, v in sd2d.items():
        if k.startswith("layer4."):
            dual = "layer4_dual." + k[len("layer4."):]
            torch.testing.assert_close(state[dual].squeeze(2) if v.dim() == 4 else state[dual], v)


def test_plain_c2d_on_a_static_clip_equals_the_2d_network(resnet50_2d: torchvision.models.ResNet) -> None:
    model = get_model_by_name("c2d_resnet50", num_classes=1000, clip_length=4).eval()
    missing, unexpected = load_weights(model, transfer_weights("c2d_resnet50", resnet50_2d.state_dict()))
    assert missing == [] and unexpected == []
    frame = torch.randn(2, 3, 96, 96, dtype=torch.float64)  # double: 2-D and 3-D convs sum in other orders
    with torch.no_grad():
        (video_logits,) = model.double()(frame.unsqueeze(2).expand(-1, -1, 4, -1, -1))
        torch.testing.assert_close(video_logits, copy.deepcopy(resnet50_2d).double()(frame))


def test_remove_defcor_weight_allows_another_clip_length() -> None:
    sd16 = get_model_by_name("c2d_sifa_resnet50", num_classes=10).state_dict()
    model32 = get_model_by_name("c2d_sifa_resnet50", num_classes=10, clip_length=32)
    with pytest.raises(RuntimeError, match="def_cor.weight"):
        model32.load_state_dict(sd16, strict=False)
    missing, unexpected = load_weights(model32, remove_defcor_weight("c2d_sifa_resnet50", sd16), strict=False)
    assert set(missing) == keys_matching(model32, r"def_cor\.weight$") and unexpected == []
    with pytest.raises(CheckpointMismatchError, match="def_cor.weight depends on the clip length"):
        load_weights(model32, sd16)
    assert load_weights(model32, sd16, skip=("def_cor.weight",)) == ([], [])
    no_fc = remove_fc("c2d_sifa_resnet50", {"model": sd16})
    assert set(sd16) - set(no_fc) == {"fc.weight", "fc.bias", "fc_dual.weight", "fc_dual.bias"}


def test_checkpoint_layouts_unwrap_alike() -> None:
    sd = {"fc.weight": torch.zeros(2, 3)}
    prefixed = {"module.fc.weight": sd["fc.weight"]}
    for checkpoint in (sd, {"model": sd}, {"state_dict": sd}, {"model": prefixed, "epoch": 3}):
        assert state_dict_of(checkpoint) == sd


def test_strict_loading_names_missing_unexpected_and_misshaped_keys() -> None:
    model = get_model_by_name("c2d_resnet50", num_classes=3, clip_length=4)
    state = model.state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(7, 2048)
    checkpoint = {"model": state, "config": {"net_name": "c2d_sifa_resnet50"}}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(model, checkpoint, source="checkpoint x.pth")
    assert str(err.value) == (
        "checkpoint x.pth does not fit c2d_resnet50: missing keys: layer1.0.conv1.weight; unexpected keys: "
        "extra.weight; shape mismatches (checkpoint vs network): fc.weight (7, 2048) vs (3, 2048); "
        "the checkpoint was trained as c2d_sifa_resnet50")


def timm_to_official(sd: Dict[str, torch.Tensor], timm_model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The official Swin checkpoint layout: merging at the end of stage i, ``head``, derived buffers saved."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    out.update({k: v for k, v in timm_model.named_buffers() if k.endswith(("relative_position_index", "attn_mask"))})
    return out


@pytest.fixture(scope="module")
def swin_base_2d() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_base_patch4_window7_224", pretrained=False).eval()


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_swin_transfer_sifa(swin_base_2d: torch.nn.Module, layout: str) -> None:
    sd2d = swin_base_2d.state_dict()
    assert "layers.1.downsample.reduction.weight" in sd2d and "head.fc.weight" in sd2d  # timm's naming
    checkpoint = {"model": timm_to_official(sd2d, swin_base_2d)} if layout == "official" else sd2d
    sd = remove_fc("c2d_sifa_swin_vit_b_p4_w7", transfer_weights("c2d_sifa_swin_vit_b_p4_w7", checkpoint))
    model = get_model_by_name("c2d_sifa_swin_vit_b_p4_w7", clip_length=8)
    missing, unexpected = load_weights(model, sd, strict=False)
    expected = r"(def_cor\.weight|tda_norm\.|^fc\.)"
    if layout == "timm":  # timm does not save the derived constant buffers; ours are computed at build
        expected = r"(def_cor\.weight|tda_norm\.|^fc\.|relative_position_index|attn_mask)"
    assert set(missing) == keys_matching(model, expected) and unexpected == []
    state = model.state_dict()
    assert_inflated_centre(state["patch_embed.proj.weight"], sd2d["patch_embed.proj.weight"], stride=4, padding=0)
    torch.testing.assert_close(state["layers.0.downsample.reduction.weight"], sd2d["layers.1.downsample.reduction.weight"])
    conv_keys = keys_matching(model, r"blocks\.\d+\.conv\.weight$")
    assert len(conv_keys) == 24 and all(torch.count_nonzero(state[k]) == 0 for k in conv_keys)


def assert_c2d_swin_on_a_static_clip_equals(swin_2d: torch.nn.Module, net_name: str) -> None:
    """The C2D Swin `net_name` with `swin_2d`'s transferred weights gives its logits on a clip of one frame
    repeated (`swin_2d` loses its patch norm, which the C2D Swin lacks)."""
    swin_2d.patch_embed.norm = torch.nn.Identity()
    model = get_model_by_name(net_name, num_classes=1000, clip_length=4).eval()
    missing, unexpected = load_weights(model, transfer_weights(net_name, swin_2d.state_dict()), strict=False)
    assert set(missing) == keys_matching(model, r"(relative_position_index|attn_mask)") and unexpected == []
    frame = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (video_logits,) = model(frame.unsqueeze(2).expand(-1, -1, 4, -1, -1))
        torch.testing.assert_close(video_logits, swin_2d(frame), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # two full Swin-Bs at 224 px
def test_plain_c2d_swin_on_a_static_clip_equals_the_2d_swin(swin_base_2d: torch.nn.Module) -> None:
    assert_c2d_swin_on_a_static_clip_equals(copy.deepcopy(swin_base_2d), "c2d_swin_vit_b_p4_w7")


@pytest.mark.slow  # a Swin-T at 224 px, 2-D and as a C2D network
def test_swin_t_is_timms_swin_tiny_on_a_static_clip() -> None:
    torch.manual_seed(0)
    swin_2d = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    assert_c2d_swin_on_a_static_clip_equals(swin_2d, "c2d_swin_vit_t_p4_w7")
    sifa = get_model_by_name("c2d_sifa_swin_vit_t_p4_w7", num_classes=1000, clip_length=8)
    missing, unexpected = load_weights(sifa, transfer_weights("c2d_sifa_swin_vit_t_p4_w7", swin_2d.state_dict()),
                                       strict=False)
    assert set(missing) == keys_matching(sifa, r"(def_cor\.weight|tda_norm\.|relative_position_index|attn_mask)")
    assert unexpected == [] and len(keys_matching(sifa, r"blocks\.\d+\.conv\.weight$")) == 12


def test_unknown_network_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        transfer_weights("resnet50", {})
