"""FLOP counting (sifa.ops.flops, sifa.tools.complexity) against independently computed counts."""
from __future__ import annotations

import pytest
import torch
import torchvision

import sifa.ops
import sifa.ops.flops
from helpers import user_error
from sifa.models import get_model_by_name
from sifa.models.sifa_resnet import Bottleneck, SIFABottleneck
from sifa.tools import complexity

needs_extension = pytest.mark.skipif(sifa.ops.backend() != "extension",
                                     reason="the compiled SIFA extension is not built (run `bash make.sh`)")


def test_without_extension_the_error_says_to_build(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sifa.ops.flops, "backend", lambda: "reference")
    with pytest.raises(RuntimeError, match="bash make.sh"):
        sifa.ops.flops.register_flop_formulas()
    with user_error(capsys, "bash make.sh"):
        complexity.main(["--net_name", "c2d_resnet50", "--clip_length", "4"])


@needs_extension
@pytest.mark.parametrize("kernel", [1, 3])
def test_sifa_bottleneck_adds_offset_conv_and_two_sifa_ops(kernel: int) -> None:
    N, inplanes, planes, T, H, W = 2, 256, 64, 4, 14, 12
    x = torch.randn(N, inplanes, T, H, W)
    plain = complexity.count_flops(Bottleneck(inplanes, planes).eval(), x)
    sifa_flops = complexity.count_flops(SIFABottleneck(inplanes, planes, times=T, kernel_size=kernel).eval(), x)
    taps = kernel * kernel
    offset_conv = 2 * N * T * H * W * (2 * taps) * (planes * 3 * 3)  # 2 FLOPs per multiply-add
    sifa_ops = 2 * 10 * N * planes * T * H * W * taps  # defcor + defagg, 8 + 2 FLOPs per channel and tap
    assert sifa_flops == plain + offset_conv + sifa_ops


@needs_extension
def test_plain_c2d_on_four_frames_costs_the_2d_resnet_plus_the_deeper_stem() -> None:
    """The 4×7×7 stem sees 4 frames and emits 1: 4× the 2-D stem; the body is the 2-D ResNet-50 at T=1."""
    x2d = torch.randn(1, 3, 224, 224)
    flops_2d = complexity.count_flops(torchvision.models.resnet50(num_classes=400).eval(), x2d)
    flops_c2d = complexity.count_flops(get_model_by_name("c2d_resnet50", clip_length=4).eval(),
                                       torch.randn(1, 3, 4, 224, 224))
    stem_2d = 2 * 64 * (3 * 7 * 7) * 112 * 112
    assert flops_c2d == flops_2d + 3 * stem_2d


@pytest.mark.slow  # the CLI counting full networks
@needs_extension
def test_cli_prints_parameters_and_gflops(capsys: pytest.CaptureFixture) -> None:
    complexity.main(["--net_name", "c2d_sifa_resnet50", "--clip_length", "8", "--crop_size", "64",
                     "--num_classes", "10"])
    out = capsys.readouterr().out
    model = get_model_by_name("c2d_sifa_resnet50", clip_length=8, num_classes=10).eval()
    assert f"({sum(p.numel() for p in model.parameters())};" in out
    flops = complexity.count_flops(model, torch.randn(1, 3, 8, 64, 64))
    assert f"GFLOPs per view: {flops / 1e9:.2f}" in out


@pytest.mark.slow  # the CLI counting full networks
def test_cli_takes_the_network_and_view_from_a_config_file(capsys: pytest.CaptureFixture) -> None:
    from helpers import REPO_ROOT

    complexity.main(["--config_file", str(REPO_ROOT / "settings/synthetic_demo.yml"), "--opts", "num_classes=10"])
    from_config = capsys.readouterr().out
    complexity.main(["--net_name", "c2d_sifa_resnet50", "--clip_length", "8", "--crop_size", "64",
                     "--num_classes", "10"])  # the demo's net_name, clip_length x eva_num_segments, eva_crop_size
    assert from_config == capsys.readouterr().out and "1×3×8×64×64" in from_config
