"""Export: the SIFA ops' ONNX translation against the reference math, and the export tool's ONNX file
(in onnxruntime) and .pt2 program against the PyTorch network, for a small SIFA-Net and SIFA-Swin."""
import copy

import numpy as np
import pytest
import torch
import yaml

from helpers import user_error
from sifa.models import get_model_by_name
from sifa.models.sifa_swin import C2DSwin, SIFASwinBlock
from sifa.ops import functional, reference

pytest.importorskip("onnxscript", reason="ONNX export needs the export extras (requirements-extra.txt)")
onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extras (requirements-extra.txt)")
pytest.importorskip("onnxruntime", reason="the ONNX check runs in onnxruntime (requirements-extra.txt)")

from sifa.ops.onnx import onnx_translation_table  # noqa: E402  (needs the extras above)
from sifa.tools import export  # noqa: E402

TOLERANCE = 1e-4


def standard_operators_only(path):
    model = onnx.load(path)
    assert not model.functions and {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


class SifaOps(torch.nn.Module):
    """Every SIFA op (fused, correlation, aggregation) on one input, with grouped channels."""

    def __init__(self, channels, times, kernel, padding, dilation, groups):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, times, *kernel))
        self.args = (1, padding, dilation, groups)

    def forward(self, x, offset):
        out, scores = functional.sifa_attention(x, offset, self.weight, *self.args, return_scores=True)
        correlation = functional.defcor(x, offset, self.weight, *self.args)
        aggregation = functional.defagg(x, offset, correlation * 0.5, self.weight.shape[2:], *self.args)
        return out, scores, correlation, aggregation


@pytest.mark.parametrize("kernel, padding, dilation, groups, size", [
    ((3, 3), 1, 1, 1, (5, 6)), ((3, 3), 2, 2, 2, (6, 4)), ((1, 3), (0, 1), 1, 4, (1, 7)), ((1, 1), 0, 1, 1, (4, 4))])
def test_onnx_translation_of_the_sifa_ops_matches_the_reference(tmp_path, kernel, padding, dilation, groups, size):
    torch.manual_seed(0)
    N, C, T = 2, 8, 3
    x = torch.randn(N, C, T, *size)
    offset = torch.randn(N, 2 * kernel[0] * kernel[1], T, *size) * 2  # many taps fall between and off pixels
    model = SifaOps(C, T, kernel, padding, dilation, groups).eval()
    path = str(tmp_path / "ops.onnx")
    program = torch.onnx.export(model, (x, offset), dynamo=True, verbose=False,
                                custom_translation_table=onnx_translation_table())
    program.save(path)
    standard_operators_only(path)
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), (x, offset))})
    w = model.weight.detach()
    args = (1, padding, dilation, groups)
    correlation = reference.defcor(x, offset, w, *args)
    expected = [*reference.sifa_attention(x, offset, w, *args), correlation,
                reference.defagg(x, offset, correlation * 0.5, kernel, *args)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def sifa_net(tmp_path_factory):
    """A config and a bare-state-dict checkpoint of c2d_sifa_resnet50 at 8 frames of 64 px, 3 classes."""
    root = tmp_path_factory.mktemp("export")
    config = {"dataset": {"num_classes": 3, "crop_size": 64, "eva_crop_size": 64},
              "sampler": {"clip_length": 8}, "network": {"net_name": "c2d_sifa_resnet50"}}
    (root / "net.yml").write_text(yaml.safe_dump(config))
    torch.manual_seed(1)
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=3, clip_length=8).eval()
    torch.save(model.state_dict(), root / "net.pth")
    return root, model


@pytest.mark.slow  # a full network exported and run
def test_export_tool_onnx_both_heads_runs_in_onnxruntime(sifa_net, capsys):
    root, model = sifa_net
    out = str(root / "both.onnx")
    difference = export.main(["--config_file", str(root / "net.yml"), "--checkpoint", str(root / "net.pth"),
                              "--format", "onnx", "--heads", "both", "--out", out])
    assert difference < TOLERANCE and "largest difference from PyTorch" in capsys.readouterr().out
    standard_operators_only(out)
    video = torch.randn(3, 3, 8, 64, 64)  # another batch size than the one traced
    with torch.no_grad():
        expected = model(video)
    got = export.run_exported(out, video)
    assert len(got) == 2
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.slow  # a full network exported and reloaded
def test_export_tool_pt2_reloads_with_the_main_head(sifa_net):
    root, model = sifa_net
    out = str(root / "main.pt2")
    export.main(["--config_file", str(root / "net.yml"), "--checkpoint", str(root / "net.pth"), "--format", "pt2",
                 "--out", out])
    video = torch.randn(3, 3, 8, 64, 64)
    with torch.no_grad():
        main_head = model(video)[0]
    (got,) = export.run_exported(out, video)
    np.testing.assert_allclose(got, main_head.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.slow  # a SIFA-Swin exported and compared
@pytest.mark.parametrize("export_format", export.FORMATS)
def test_sifa_swin_exports_match(tmp_path, export_format):
    torch.manual_seed(2)
    model = C2DSwin(32, (2, 2), (1, 2), 0.0, num_classes=4, clip_length=8, sifa_kernel=3, name="small_sifa_swin")
    plain = copy.deepcopy(model).eval()
    for block in model.modules():
        if isinstance(block, SIFASwinBlock):  # switch the SIFA residual on (it starts at zero)
            torch.nn.init.normal_(block.tda_norm.weight, std=5.0)
    model.eval()
    video = torch.randn(2, 3, 8, 224, 224)
    with torch.no_grad():
        expected = model(video)[0]
        assert not torch.allclose(expected, plain(video)[0], atol=10 * TOLERANCE)  # the SIFA steps matter
    path = str(tmp_path / f"swin.{export_format}")
    export.export(model, video, path, export_format)
    (got,) = export.run_exported(path, video)
    np.testing.assert_allclose(got, expected.numpy(), atol=TOLERANCE, rtol=0)


def test_export_errors_are_one_line(sifa_net, tmp_path, capsys):
    root, _ = sifa_net
    single_head = C2DSwin(32, (2, 2), (1, 2), 0.0, num_classes=4, clip_length=8, sifa_kernel=3)
    with pytest.raises(ValueError, match="--heads both: the network has 1 head"):
        export.export(single_head, torch.randn(2, 3, 8, 224, 224), str(tmp_path / "x.onnx"), "onnx", both_heads=True)
    with pytest.raises(ValueError, match="2 or more views"):
        export.export(single_head, torch.randn(1, 3, 8, 224, 224), str(tmp_path / "x.pt2"), "pt2")
    with user_error(capsys, "does not exist"):
        export.main(["--config_file", str(root / "net.yml"), "--checkpoint", str(root / "net.pth"), "--format", "pt2",
                     "--out", str(tmp_path / "absent" / "x.pt2")])
    with user_error(capsys, "error: checkpoint not found"):
        export.main(["--config_file", str(root / "net.yml"), "--checkpoint", str(tmp_path / "absent.pth"),
                     "--format", "pt2", "--out", str(tmp_path / "x.pt2")])


@pytest.mark.slow  # a full network exported and run
@pytest.mark.parametrize("export_format", ["onnx", "pt2"])
def test_export_of_a_channels_last_network(sifa_net, export_format):
    # channels_last: true builds the exported network channels-last (as on a GPU); the file computes the
    # same logits (in ONNX, layouts do not exist; the pt2 graph keeps the layout ops)
    root, model = sifa_net
    out = str(root / f"channels_last.{export_format}")
    difference = export.main(["--config_file", str(root / "net.yml"), "--checkpoint", str(root / "net.pth"),
                              "--format", export_format, "--out", out, "--opts", "channels_last=true"])
    assert difference < TOLERANCE
    video = torch.randn(3, 3, 8, 64, 64)
    with torch.no_grad():
        main_head = model(video)[0]
    np.testing.assert_allclose(export.run_exported(out, video)[0], main_head.numpy(), atol=TOLERANCE, rtol=0)
