"""The SIFA ops as the networks run them, on CUDA, against the float64 CPU kernels: the real layer shapes
(SIFA-Net's SIFA layers, SIFA-Swin-S/B/L widths at their maps), channels-last and misaligned views,
autocast, capture in a CUDA graph, a non-default stream, torch.compile and deterministic mode.

The bodies are device-generic: the ``cpu`` cases run the same checks on the CPU kernels (float32
against float64, on a subset of the shapes) so that the test logic runs without a GPU; the ``cuda``
cases skip without one. Inputs of 16-bit cases are rounded to their dtype before the float64
reference sees them, so the comparison measures the kernels' error, not the inputs' rounding.
"""
import pytest
import torch

import sifa.ops as ops
from kernel_catalogue import assert_same

HAS_EXT = ops.backend() == "extension"
pytestmark = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built (run `bash make.sh`)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=needs_cuda)]
TOLERANCE = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # of the largest magnitude + 1


def dtypes_on(device):
    return [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16, torch.float16]


# (name, C, H=W, offset scale): SIFA-Net's SIFA layers (learned offsets) and the SIFA-Swin blocks'
# widths, D·2^i at 56²/28²/14²/7² (zero offsets: the Swin blocks attend over the fixed window)
LAYERS = [(f"SIFA-Net C={C}", C, S, 2.0) for C, S in ((128, 28), (256, 14), (512, 7))] + [
    (f"SIFA-Swin-{v} C={D * 2 ** i}", D * 2 ** i, 56 >> i, 0.0)
    for v, D in (("S", 96), ("B", 128), ("L", 192)) for i in range(4)]
CPU_LAYERS = {"SIFA-Net C=128", "SIFA-Swin-S C=768"}  # one warp per pixel on CUDA, and three


def make_inputs(N, C, T, H, W, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64)
    off = torch.randn(N, 18, T, H, W, generator=g, dtype=torch.float64) * scale
    w = torch.full((C, T, 3, 3), 1.0 / C, dtype=torch.float64)  # the networks' frozen weight
    grad = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64)
    return x, off, w, grad


def attend(x, off, w, grad):
    """Output, scores and the gradients the networks ask for (input and offset; the weight is frozen)."""
    x, off = x.detach().requires_grad_(), off.detach().requires_grad_()
    out, scores = ops.sifa_attention(x, off, w, return_scores=True)
    grad_x, grad_off = torch.autograd.grad(out, (x, off), grad.to(out.dtype))
    return {"out": out, "scores": scores, "grad input": grad_x, "grad offset": grad_off}


def reference(x, off, w, grad, dtype):
    """The float64 CPU kernels on the inputs as ``dtype`` holds them."""
    return attend(*(t.detach().cpu().to(dtype).double() for t in (x, off, w, grad)))


def on_cpu(results):
    return {k: v.detach().cpu() for k, v in results.items()}


def as_channels_last(t):
    return t.to(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("device,layer", [
    pytest.param(device, layer, id=f"{device}-{layer[0]}", marks=[needs_cuda] if device == "cuda" else [])
    for device in ("cpu", "cuda") for layer in LAYERS if device == "cuda" or layer[0] in CPU_LAYERS])
def test_layer_shapes(device, layer):
    name, C, S, scale = layer
    tensors = make_inputs(1, C, 2, S, S, scale)
    for dtype in dtypes_on(device):
        want = reference(*tensors, dtype)
        for layout in ("contiguous", "channels_last"):
            x, off, w, grad = (t.to(device, dtype) for t in tensors)
            if layout == "channels_last":  # the Swin blocks' layout
                x = as_channels_last(x)
            got = attend(x, off, w, grad)
            assert got["out"].dtype == dtype
            assert got["out"].is_contiguous(memory_format=torch.channels_last_3d) == (layout == "channels_last")
            assert_same(on_cpu(got), want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype],
                        what=f"{name} {dtype} {layout} on {device}")


def misaligned(t, channels_last):
    """``t`` copied into a view whose first element is one element past a 16-byte boundary."""
    shape = t.shape if not channels_last else (t.shape[0], *t.shape[2:], t.shape[1])
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buffer[1:].view(shape)
    if channels_last:
        view = view.permute(0, 4, 1, 2, 3)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0 and view.is_contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    return view


@pytest.mark.parametrize("device", DEVICES)
def test_misaligned_and_sliced_views(device):
    # C = 64 and one group: the slice kernels, whose vector loads need aligned channel runs
    tensors = make_inputs(2, 64, 3, 5, 6, 1.5)
    for dtype in dtypes_on(device):
        want = reference(*tensors, dtype)
        x, off, w, grad = (t.to(device, dtype) for t in tensors)
        for channels_last in (False, True):
            views = (misaligned(x, channels_last), misaligned(off, False), w, misaligned(grad, channels_last))
            assert_same(on_cpu(attend(*views)), want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype],
                        what=f"misaligned {dtype} channels_last={channels_last} on {device}")
        # a channel slice of a wider channels-last tensor: strided, neither layout's contiguous form
        wide = as_channels_last(torch.cat([x, x[:, :3]], dim=1))
        assert_same(on_cpu(attend(wide[:, 1:65].copy_(x), off, w, grad)), want, rtol=TOLERANCE[dtype],
                    atol=TOLERANCE[dtype], what=f"channel slice {dtype} on {device}")


@pytest.mark.parametrize("device", DEVICES)
def test_autocast(device):
    # under autocast the ops compute in float32 on the CPU and in the autocast dtype on CUDA
    tensors = make_inputs(1, 128, 3, 7, 7, 1.5)
    x, off, w, grad = (t.to(device, torch.float32) for t in tensors)
    for dtype in ((torch.bfloat16,) if device == "cpu" else (torch.bfloat16, torch.float16)):
        computes_in = torch.float32 if device == "cpu" else dtype
        with torch.autocast(device, dtype=dtype):
            got = attend(x, off, w, grad)
        assert got["out"].dtype == computes_in
        assert got["grad input"].dtype == got["grad offset"].dtype == torch.float32  # the leaves' dtype
        assert_same(on_cpu(got), reference(*tensors, computes_in), rtol=TOLERANCE[computes_in],
                    atol=TOLERANCE[computes_in], what=f"autocast {dtype} on {device}")


@needs_cuda
def test_cuda_graph_capture_and_replay():
    tensors = make_inputs(2, 128, 4, 14, 14, 2.0)
    x, off, w, grad = (t.to("cuda", torch.float32) for t in tensors)
    x, off = as_channels_last(x).requires_grad_(), off.requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capturing stream, as capture requires
        for _ in range(2):
            torch.autograd.grad(ops.sifa_attention(x, off, w), (x, off), grad)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sifa_attention(x, off, w)
        grad_x, grad_off = torch.autograd.grad(out, (x, off), grad)
    fresh = make_inputs(2, 128, 4, 14, 14, 2.0, seed=1)  # new values in the captured tensors, then replay
    with torch.no_grad():
        x.copy_(fresh[0])
        off.copy_(fresh[1])
        grad.copy_(fresh[3])
    graph.replay()
    torch.cuda.synchronize()
    want = reference(*fresh, torch.float32)
    got = {"out": out, "grad input": grad_x, "grad offset": grad_off}
    assert_same(on_cpu(got), {k: want[k] for k in got}, rtol=TOLERANCE[torch.float32],
                atol=TOLERANCE[torch.float32], what="graph replay")


@needs_cuda
def test_cuda_non_default_stream():
    # the inputs are written on a side stream behind a long sleep; kernels launched anywhere but that
    # stream would read them before they are written
    tensors = make_inputs(2, 256, 4, 14, 14, 2.0)
    want = reference(*tensors, torch.float32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        source = [t.to("cuda", torch.float32) for t in tensors]
        stream.synchronize()
        x, off, w, grad = (torch.zeros_like(t) for t in source)
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
        for dst, src in zip((x, off, w, grad), source):
            dst.copy_(src)
        got = attend(x, off, w, grad)
    stream.synchronize()
    assert_same(on_cpu(got), want, rtol=TOLERANCE[torch.float32], atol=TOLERANCE[torch.float32],
                what="side stream")


@needs_cuda
def test_cuda_torch_compile():
    from sifa.layers import shift_back

    class SwinInterFrame(torch.nn.Module):
        """The SIFA step of a non-shifted SIFA-Swin block on B×H×W×C tokens (sifa_swin.py), learned offsets."""

        def __init__(self, C, T):
            super().__init__()
            self.T = T
            self.def_cor = ops.DefCorFixW(C, T, 3, 1, 1)
            self.offset = torch.nn.Linear(C, 18)

        def forward(self, tokens):
            B, H, W, C = tokens.shape
            v = tokens.reshape(B // self.T, self.T, H, W, C).permute(0, 4, 1, 2, 3)  # channels_last_3d view
            offset = self.offset(tokens).reshape(B // self.T, self.T, H, W, 18).permute(0, 4, 1, 2, 3)
            agg = shift_back(self.def_cor.attend(v, offset))
            return tokens + agg.permute(0, 2, 3, 4, 1).reshape(B, H, W, C)

    torch.manual_seed(0)
    block = SwinInterFrame(128, 4).cuda()
    tokens = torch.randn(8, 14, 14, 128, device="cuda", requires_grad=True)
    eager = block(tokens)
    eager_grads = torch.autograd.grad(eager.square().sum(), (tokens, block.offset.weight))
    compiled = torch.compile(block, fullgraph=True)(tokens)
    compiled_grads = torch.autograd.grad(compiled.square().sum(), (tokens, block.offset.weight))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


# (C, H = W): every width of the networks' SIFA layers at one of its maps; on CUDA the slice kernels
# with one warp per pixel (C ≤ 256) and with 2, 3, 4 and 6 (C = 384…1536): under deterministic mode
# the general kernels' backward would raise
DETERMINISTIC_WIDTHS = [(96, 28), (128, 14), (192, 14), (256, 14), (384, 14), (512, 7), (768, 14), (1024, 7),
                        (1536, 7)]


@pytest.mark.parametrize("device,C,size", [pytest.param("cpu", 128, 14, id="cpu-C=128")] + [
    pytest.param("cuda", C, size, id=f"cuda-C={C}", marks=needs_cuda) for C, size in DETERMINISTIC_WIDTHS])
def test_deterministic_mode_gives_identical_gradients(device, C, size):
    tensors = make_inputs(2, C, 4, size, size, 2.0)
    torch.use_deterministic_algorithms(True)
    try:
        runs = [attend(*(t.to(device, torch.float32) for t in tensors)) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    for key in ("out", "scores", "grad input", "grad offset"):
        assert torch.equal(runs[0][key], runs[1][key]), f"{key} differs between two runs on {device}"
    assert_same(on_cpu(runs[0]), reference(*tensors, torch.float32), rtol=TOLERANCE[torch.float32],
                atol=TOLERANCE[torch.float32], what=f"deterministic mode, C={C} on {device}")
