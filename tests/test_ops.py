"""The SIFA operator: reference against explicit loops, extension against reference, gradients,
input checks, backend choice, autocast and torch.compile (docs/design.md §2-3)."""
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import sifa.ops as ops
from kernel_catalogue import CATALOGUE, assert_same, run_ops
from kernel_catalogue import make_inputs as make_catalogue_inputs
from sifa.ops import _extension, reference

HAS_EXT = ops.backend() == "extension"
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built (run `bash make.sh`)")
needs_cuda = pytest.mark.skipif(not (HAS_EXT and torch.cuda.is_available()), reason="needs a GPU and the extension")


def loop_sample(img, y, x):
    """S(img, y, x) of docs/design.md §2.2 written out for one H×W plane."""
    H, W = img.shape
    if y <= -1 or x <= -1 or y >= H or x >= W:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    v = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                v += wy * wx * float(img[yy, xx])
    return v


def loop_defcor_defagg(x, off, w, scores, pad, dil, groups):
    N, C, T, H, W = x.shape
    kh, kw = w.shape[2:]
    K = kh * kw
    corr = torch.zeros(N, groups * K, T, H, W, dtype=torch.float64)
    out = torch.zeros(N, C, T, H, W, dtype=torch.float64)
    Cg = C // groups
    for n in range(N):
        for t in range(T):
            tp = t - 1 if t > 0 else 0
            for h in range(H):
                for ww in range(W):
                    for k in range(K):
                        i, j = divmod(k, kw)
                        py = h - pad + i * dil + float(off[n, 2 * k, t, h, ww])
                        px = ww - pad + j * dil + float(off[n, 2 * k + 1, t, h, ww])
                        for c in range(C):
                            s = loop_sample(x[n, c, t], py, px)
                            g = c // Cg
                            corr[n, g * K + k, t, h, ww] += float(w[c, t, i, j]) * float(x[n, c, tp, h, ww]) * s
                            out[n, c, t, h, ww] += float(scores[n, g * K + k, t, h, ww]) * s
    return corr, out


@pytest.mark.parametrize("groups,dil,k", [(1, 1, 3), (2, 2, 3), (1, 1, 1)])
def test_reference_matches_explicit_loops(groups, dil, k):
    torch.manual_seed(0)
    N, C, T, H, W = 2, 4, 3, 4, 5
    x = torch.randn(N, C, T, H, W, dtype=torch.float64)
    off = torch.randn(N, 2 * k * k, T, H, W, dtype=torch.float64) * 2
    w = torch.randn(C, T, k, k, dtype=torch.float64)
    scores = torch.randn(N, groups * k * k, T, H, W, dtype=torch.float64)
    pad = (dil * (k - 1) + 1) // 2
    corr, out = loop_defcor_defagg(x, off, w, scores, pad, dil, groups)
    torch.testing.assert_close(reference.defcor(x, off, w, 1, pad, dil, groups), corr)
    torch.testing.assert_close(reference.defagg(x, off, scores, k, 1, pad, dil, groups), out)


def test_reference_hand_computed_value():
    # one channel, one frame, 2×2 image, 1×1 kernel: sample at (0.5, 0.25) = bilinear mix of the 4 pixels
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 1, 2, 2)
    off = torch.zeros(1, 2, 1, 2, 2, dtype=torch.float64)
    off[0, 0, 0, 0, 0], off[0, 1, 0, 0, 0] = 0.5, 0.25
    off[0, 0, 0, 1, 1] = 0.5  # (1.5, 1): half of pixel (1,1), half outside -> 2.0
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    corr = reference.defcor(x, off, w, 1, 0, 1, 1)
    s00 = 0.5 * (0.75 * 1 + 0.25 * 2) + 0.5 * (0.75 * 3 + 0.25 * 4)
    assert corr[0, 0, 0, 0, 0].item() == pytest.approx(1.0 * s00)  # query x[0,0,0,0,0] = 1 (prev(0) = 0)
    assert corr[0, 0, 0, 1, 1].item() == pytest.approx(4.0 * 2.0)


def make_case(N, C, T, H, W, k, dil, groups, offset_scale, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, dtype=dtype, generator=g)
    off = torch.randn(N, 2 * k * k, T, H, W, dtype=dtype, generator=g) * offset_scale
    w = torch.randn(C, T, k, k, dtype=dtype, generator=g)
    scores = torch.randn(N, groups * k * k, T, H, W, dtype=dtype, generator=g)
    return [t.to(device).requires_grad_() for t in (x, off, w, scores)]


CASES = [  # N, C, T, H, W, k, dil, groups, offset scale
    (2, 8, 4, 5, 7, 3, 1, 1, 1.5),
    (1, 8, 1, 6, 4, 3, 2, 2, 3.0),
    (2, 8, 2, 5, 5, 5, 1, 4, 2.0),
    (1, 4, 5, 7, 3, 1, 1, 1, 0.7),
    (3, 6, 3, 4, 6, 5, 2, 2, 20.0),   # samples pushed far outside the image
    (1, 4, 2, 3, 9, 3, 1, 1, 0.0),    # integer positions: taps on the border
    (1, 4, 3, 1, 5, 3, 1, 2, 1.0),    # one-pixel-high maps
]


@needs_ext
@pytest.mark.parametrize("case", CASES)
def test_extension_matches_reference(case):
    N, C, T, H, W, k, dil, groups, scale = case
    x, off, w, scores = make_case(N, C, T, H, W, k, dil, groups, scale)
    pad = (dil * (k - 1) + 1) // 2
    for fn, args in ((ops.defcor, (w, 1, pad, dil, groups)), (ops.defagg, (scores, k, 1, pad, dil, groups))):
        ref_fn = getattr(reference, fn.__name__)
        out, ref = fn(x, off, *args), ref_fn(x, off, *args)
        torch.testing.assert_close(out, ref)
        gout = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, off, args[0]), gout)
        want = torch.autograd.grad(ref, (x, off, args[0]), gout)
        for name, a, b in zip(("input", "offset", "weight"), got, want):
            torch.testing.assert_close(a, b, msg=lambda m: f"{fn.__name__} grad {name}: {m}")


def check_fused_against_reference(x, off, w, pad, dil, groups, device_args=None, tol=None):
    """sifa_attention (on `device_args`, default the same tensors) against the reference composition:
    output, scores, and the gradients of (input, offset, weight) for a loss on the output alone and
    on both outputs. `tol`: (rtol, atol) for low precision, results scaled by their magnitude."""
    xd, offd, wd = device_args or (x, off, w)
    ref_out, ref_scores = reference.sifa_attention(x, off, w, 1, pad, dil, groups)
    out, scores = ops.sifa_attention(xd, offd, wd, 1, pad, dil, groups, return_scores=True)
    kw = {} if tol is None else dict(rtol=tol[0], atol=tol[1])

    def close(a, b, what):
        scale = b.abs().max().item() + 1
        torch.testing.assert_close(a.detach().to("cpu", b.dtype) / scale, b.detach() / scale, **kw,
                                   msg=lambda m: f"sifa_attention {what}: {m}")

    close(out, ref_out, "output")
    close(scores, ref_scores, "scores")
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(ref_out.shape, generator=g, dtype=ref_out.dtype)
    gscores = torch.randn(ref_scores.shape, generator=g, dtype=ref_out.dtype)
    for name, with_scores in (("output loss", False), ("output+scores loss", True)):
        ref_loss = (ref_out * gout).sum() + ((ref_scores * gscores).sum() if with_scores else 0)
        loss = (out * gout.to(out)).sum() + ((scores * gscores.to(scores)).sum() if with_scores else 0)
        want = torch.autograd.grad(ref_loss, (x, off, w), retain_graph=True)
        got = torch.autograd.grad(loss, (xd, offd, wd), retain_graph=True)
        for which, a, b in zip(("input", "offset", "weight"), got, want):
            close(a, b, f"grad {which} ({name})")


@needs_ext
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_reference(case):
    N, C, T, H, W, k, dil, groups, scale = case
    x, off, w, _ = make_case(N, C, T, H, W, k, dil, groups, scale)
    check_fused_against_reference(x, off, w, (dil * (k - 1) + 1) // 2, dil, groups)


@needs_ext
def test_fused_equals_separate_ops_and_frozen_weight():
    x, off, w, _ = make_case(2, 8, 3, 5, 6, 3, 1, 2, 1.5, dtype=torch.float32)
    w = w.detach()  # frozen, as in the networks: no weight gradient is computed
    fused = ops.sifa_attention(x, off, w, 1, 1, 1, 2)
    separate = ops.defagg(x, off, ops.defcor(x, off, w, 1, 1, 1, 2), 3, 1, 1, 1, 2)
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5)
    gout = torch.randn_like(fused)
    for a, b in zip(torch.autograd.grad(fused, (x, off), gout), torch.autograd.grad(separate, (x, off), gout)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    m = ops.DefCorFixW(8, 3, 3, 1, 1, defcor_groups=2)
    torch.testing.assert_close(m.attend(x, off), ops.defagg(x, off, m(x, off), 3, 1, 1, 1, 2), rtol=1e-5, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("op", ["defagg", "sifa_attention"])
def test_channels_last_in_channels_last_out(op):
    x, off, w, scores = make_case(2, 8, 3, 5, 6, 3, 1, 2, 1.5)
    x_cl = x.detach().to(memory_format=torch.channels_last_3d).requires_grad_()
    assert not x_cl.is_contiguous()
    third = w if op == "sifa_attention" else scores
    args = (1, 1, 1, 2) if op == "sifa_attention" else (3, 1, 1, 1, 2)
    out = getattr(ops, op)(x_cl, off, third, *args)
    ref = getattr(reference, op)(x, off, third, *args)
    if op == "sifa_attention":
        ref = ref[0]
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()
    assert getattr(ops, op)(x, off, third, *args).is_contiguous()  # contiguous in, contiguous out
    torch.testing.assert_close(out, ref)
    gout = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x_cl, off, third), gout)
    assert got[0].is_contiguous(memory_format=torch.channels_last_3d)
    for a, b in zip(got, torch.autograd.grad(ref, (x, off, third), gout)):
        torch.testing.assert_close(a, b)


@needs_ext
@pytest.mark.parametrize("shape", [(0, 4, 2, 3, 3), (2, 0, 2, 3, 3), (2, 4, 0, 3, 3)],
                         ids=["no samples", "no channels", "no frames"])
def test_empty_inputs(shape):
    N, C, T, H, W = shape
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    off = torch.randn(N, 18, T, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, T, 3, 3, dtype=torch.float64, requires_grad=True)
    out, scores = ops.sifa_attention(x, off, w, return_scores=True)
    ref_out, ref_scores = reference.sifa_attention(x, off, w)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(scores, ref_scores)  # empty channel sums are 0
    got = torch.autograd.grad((out.sum() + scores.sum()), (x, off, w))
    want = torch.autograd.grad((ref_out.sum() + ref_scores.sum()), (x, off, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    s = torch.randn(N, 9, T, H, W, dtype=torch.float64, requires_grad=True)
    agg = ops.defagg(x, off, s)
    assert agg.shape == x.shape
    for a, b in zip(torch.autograd.grad(agg.sum(), (off, s), allow_unused=True),
                    torch.autograd.grad(reference.defagg(x, off, s).sum(), (off, s), allow_unused=True)):
        torch.testing.assert_close(a, b if b is not None else torch.zeros_like(a))


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_non_finite_offsets_sample_nothing(backend, monkeypatch):
    # a NaN or infinite position samples nothing and passes no gradient, on both backends: the same
    # result as a position far outside the image
    if backend == "extension" and not HAS_EXT:
        pytest.skip("compiled extension not built")
    monkeypatch.setattr(_extension, "_chosen", backend == "extension")
    x, off, w, _ = make_case(1, 4, 2, 4, 5, 3, 1, 1, 1.0)
    bad = off.detach().clone()
    bad.view(-1)[::5] = float("nan")
    bad.view(-1)[1::7] = float("inf")
    bad.view(-1)[2::9] = -float("inf")
    far = torch.where(torch.isfinite(bad), bad, torch.full_like(bad, 1e6))
    results = []
    for offsets in (bad, far):
        o = offsets.clone().requires_grad_()
        out, scores = ops.sifa_attention(x, o, w, return_scores=True)
        grads = torch.autograd.grad(out.sum() + scores.sum(), (x, o, w))
        results.append((out, scores) + grads)
    for got, want in zip(*results):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)


@needs_ext
def test_extension_float32_and_non_contiguous():
    x, off, w, scores = make_case(2, 8, 3, 6, 5, 3, 1, 2, 1.5, dtype=torch.float32)
    xt = x.detach().transpose(3, 4).contiguous().transpose(3, 4)  # same values, non-contiguous strides
    offt = off.detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not offt.is_contiguous()
    torch.testing.assert_close(ops.defcor(xt, offt, w.detach(), 1, 1, 1, 2),
                               reference.defcor(x.detach(), off.detach(), w.detach(), 1, 1, 1, 2), rtol=1e-4, atol=1e-5)
    s = torch.randn(2, 3, 18, 6, 5).permute(0, 2, 1, 3, 4)  # N×18×3×6×5, non-contiguous
    assert not s.is_contiguous()
    torch.testing.assert_close(ops.defagg(xt, offt, s, 3, 1, 1, 1, 2),
                               reference.defagg(x.detach(), off.detach(), s.contiguous(), 3, 1, 1, 1, 2),
                               rtol=1e-4, atol=1e-5)


@needs_ext
def test_gradcheck_extension():
    x, off, w, scores = make_case(1, 4, 3, 4, 5, 3, 1, 2, 1.3, seed=3)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.defcor(a, b, c, 1, 1, 1, 2), (x, off, w))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.defagg(a, b, c, 3, 1, 1, 1, 2), (x, off, scores))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.sifa_attention(a, b, c, 1, 1, 1, 2, return_scores=True), (x, off, w))

def test_modules_shapes_and_frozen_weight():
    m = ops.DefCorFixW(8, 4, 3, 1, 1)
    assert m.weight.shape == (8, 4, 3, 3) and not m.weight.requires_grad
    assert torch.all(m.weight == 1 / 8)
    x = torch.randn(2, 8, 4, 5, 5)
    off = torch.zeros(2, 18, 4, 5, 5)
    corr = m(x, off)
    out = ops.DefAgg(8, 4, 3, 1, 1)(x, off, corr)
    assert corr.shape == (2, 9, 4, 5, 5) and out.shape == x.shape
    # zero offsets, centre tap: correlation is the channel mean of x[prev] * x[t] at the pixel
    expected = (x[:, :, [0, 0, 1, 2]] * x).mean(1)
    torch.testing.assert_close(corr[:, 4], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn,args,pattern", [
    ("defcor", dict(input=torch.zeros(2, 8, 4, 5)), "input must be 5-D"),
    ("defcor", dict(offset=torch.zeros(2, 16, 3, 5, 5)), "offset must have 2·kh·kw = 18 channels"),
    ("defcor", dict(offset=torch.zeros(2, 18, 3, 5, 4)), "offset batch and T×H×W"),
    ("defcor", dict(weight=torch.zeros(8, 2, 3, 3)), "weight must be C×T×kh×kw"),
    ("defcor", dict(weight=torch.zeros(8, 3, 3)), "weight must be 4-D"),
    ("defcor", dict(groups=3), "groups \\(3\\) must be ≥ 1 and divide"),
    ("defcor", dict(stride=2), "only stride 1"),
    ("defcor", dict(offset=torch.zeros(2, 18, 3, 5, 5, dtype=torch.float64)), "offset has dtype torch.float64"),
    ("defcor", dict(offset=torch.zeros(2, 18, 3, 5, 5, device="meta")), "offset is on meta"),
    ("defagg", dict(weight=torch.zeros(2, 9, 3, 5, 4)), "weight \\(scores\\) must be N×G·kh·kw×T×H×W"),
    ("defagg", dict(weight=torch.zeros(2, 9, 3, 5, 5), groups=2), "weight \\(scores\\) must be"),
    ("defagg", dict(stride=(1, 2)), "only stride 1"),
    ("defagg", dict(groups=0), "groups \\(0\\)"),
    ("sifa_attention", dict(weight=torch.zeros(8, 2, 3, 3)), "sifa_attention: weight must be C×T×kh×kw"),
    ("sifa_attention", dict(offset=torch.zeros(2, 8, 3, 5, 5)), "sifa_attention: offset must have 2·kh·kw = 18"),
    ("sifa_attention", dict(stride=2), "sifa_attention: only stride 1"),
    ("sifa_attention", dict(input=torch.zeros(2, 8, 3, 5, 5, dtype=torch.int64)), "sifa_attention: .*dtype"),
])
def test_input_checks(fn, args, pattern):
    base = dict(input=torch.zeros(2, 8, 3, 5, 5), offset=torch.zeros(2, 18, 3, 5, 5),
                weight=torch.zeros(2, 9, 3, 5, 5) if fn == "defagg" else torch.zeros(8, 3, 3, 3))
    base.update(args)
    with pytest.raises((ValueError, TypeError), match=pattern):
        getattr(ops, fn)(**base)


def test_backend_env_forcing(monkeypatch):
    monkeypatch.setenv("SIFA_OPS_BACKEND", "reference")
    _extension.reset()
    try:
        assert ops.backend() == "reference"
        monkeypatch.setenv("SIFA_OPS_BACKEND", "extension")
        monkeypatch.setattr(_extension, "_library_path", lambda: None)
        _extension.reset()
        with pytest.raises(RuntimeError, match="bash make.sh"):
            ops.backend()
        monkeypatch.delenv("SIFA_OPS_BACKEND")
        _extension.reset()
        with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
            assert ops.backend() == "reference"
        monkeypatch.setenv("SIFA_OPS_BACKEND", "bogus")
        _extension.reset()
        with pytest.raises(ValueError, match="SIFA_OPS_BACKEND"):
            ops.backend()
    finally:
        monkeypatch.undo()
        _extension.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ops.backend()


CPU_CAPABILITIES = ["default", "avx2"]  # the CPU kernels' builds, in increasing order

# In a fresh process (the capability is chosen once per process): the capability the CPU kernels
# report, and every op and backward over the kernel catalogue in float64 and float32.
CATALOGUE_RUN = textwrap.dedent("""
    import sys, torch
    import sifa.ops as ops
    from kernel_catalogue import CATALOGUE, make_inputs, run_ops
    results = {}
    for name, case in CATALOGUE.items():
        for dtype in (torch.float64, torch.float32):
            tensors, geo = make_inputs(case, dtype)
            results[f"{name} {dtype}"] = run_ops(torch.ops.sifa, tensors, geo)
    torch.save(results, sys.argv[1])
    print(ops.cpu_capability())
""")


def run_catalogue(capability, path):
    env = {k: v for k, v in os.environ.items() if k not in ("SIFA_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY")}
    if capability:
        env["SIFA_CPU_CAPABILITY"] = capability
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])])
    return subprocess.run([sys.executable, "-c", CATALOGUE_RUN, str(path)], env=env, capture_output=True, text=True,
                          timeout=600)


@needs_ext
def test_cpu_capabilities_agree(tmp_path):
    # unset, the kernels take the widest instruction set the CPU runs: AVX2 exactly when ATen, which
    # reads the same CPU features, chooses AVX2 or AVX-512 (which includes AVX2 and FMA)
    aten = torch.backends.cpu.get_cpu_capability() if "ATEN_CPU_CAPABILITY" not in os.environ else None
    runs = {}
    for requested in ["", *CPU_CAPABILITIES]:
        result = run_catalogue(requested, tmp_path / f"{requested or 'unset'}.pt")
        assert result.returncode == 0, result.stderr
        runs[requested] = result.stdout.split()[-1], torch.load(tmp_path / f"{requested or 'unset'}.pt")
    best = runs[""][0]
    if aten is not None:
        assert best == ("avx2" if aten in ("AVX2", "AVX512") else "default"), aten
    # SIFA_CPU_CAPABILITY caps the choice: a capability the CPU lacks falls back to its best
    for requested in CPU_CAPABILITIES:
        expected = CPU_CAPABILITIES[min(CPU_CAPABILITIES.index(requested), CPU_CAPABILITIES.index(best))]
        assert runs[requested][0] == expected, requested
    # every build computes what the baseline computes (float32: FMA and wider reductions round differently)
    baseline = runs["default"][1]
    for requested, (capability, results) in runs.items():
        for key, want in baseline.items():
            tol = 1e-10 if "float64" in key else 1e-5
            assert_same(results[key], want, rtol=tol, atol=tol, what=f"{capability} {key}")
    bad = run_catalogue("avx512", tmp_path / "bad.pt")  # ATen's name, but no build of these kernels
    assert bad.returncode != 0 and "SIFA_CPU_CAPABILITY must be default or avx2, got 'avx512'" in bad.stderr


@needs_ext
@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None,
                    reason="inspects x86-64 machine code with objdump")
def test_avx_instructions_only_in_the_avx2_kernels():
    # The baseline build must run on any x86-64 CPU, so AVX (ymm registers, FMA) may appear only in
    # the AVX2 build's own functions, never in an inline function or template instance the linker
    # could share with the baseline path (what compiling a whole file with -mavx2 would risk).
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(_extension._library_path())],
                             capture_output=True, text=True, check=True).stdout
    with_avx, function = set(), None
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1]
        elif function and re.search(r"%[yz]mm|\bvfn?m(add|sub)", line):
            with_avx.add(function)
    assert with_avx, "no AVX code in the library: the AVX2 build of the CPU kernels is missing"
    # names as objdump demangles them, after a return type for function template instances
    outside = sorted(f for f in with_avx if not re.match(r"(\S+ )?sifa::ops::cpu_avx2::", f))
    assert not outside, outside[:5]


@needs_ext
def test_cpu_kernels_run_their_rows_on_torchs_openmp_threads():
    # at::parallel_for is inlined into the kernels; where torch's is OpenMP's, a build without
    # -fopenmp silently drops its pragma and every frame runs on one thread
    if not torch.backends.openmp.is_available():
        pytest.skip("this torch parallelises with its own thread pool, not OpenMP")
    symbols = subprocess.run(["objdump", "-T", str(_extension._library_path())], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(r"\bGOMP_parallel\b", symbols), "the CPU kernels were built without -fopenmp"


@needs_ext
def test_cpu_kernels_give_the_same_bits_on_any_number_of_threads():
    # every output element is one thread's, summed in a fixed order: a resumed run on another
    # machine, or under OMP_NUM_THREADS, computes what the uninterrupted one did
    x, off, w, _ = make_case(2, 64, 4, 9, 11, 3, 1, 2, 1.0, dtype=torch.float32)
    results, threads = [], torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            inputs = [t.clone().requires_grad_() for t in (x, off, w)]
            out = ops.sifa_attention(*inputs, 1, 1, 1, 2)
            results.append([out.detach(), *torch.autograd.grad((out * out).sum(), inputs)])
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results):
        assert torch.equal(one, three)


@needs_ext
def test_autocast_cpu_runs_in_float32():
    x, off, w, scores = make_case(1, 4, 2, 4, 4, 3, 1, 1, 1.0, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        corr = ops.defcor(x.bfloat16(), off, w, 1, 1, 1, 1)
        out = ops.defagg(x, off.bfloat16(), corr.bfloat16(), 3, 1, 1, 1, 1)
    assert corr.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(corr, reference.defcor(x.bfloat16().float(), off, w, 1, 1, 1, 1))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = ops.sifa_attention(x.bfloat16(), off, w, 1, 1, 1, 1)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference.sifa_attention(x.bfloat16().float(), off, w, 1, 1, 1, 1)[0])


class TinySifa(torch.nn.Module):
    def __init__(self, C=8, T=3):
        super().__init__()
        self.conv_offset = torch.nn.Conv3d(C, 18, (1, 3, 3), padding=(0, 1, 1))
        self.def_cor = ops.DefCorFixW(C, T, 3, 1, 1)
        self.def_agg = ops.DefAgg(C, T, 3, 1, 1)

    def forward(self, x):
        off = self.conv_offset(x)
        return x + self.def_agg(x, off, self.def_cor(x, off)) + self.def_cor.attend(x, off)


@needs_ext
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_torch_compile_fullgraph(memory_format):
    torch.manual_seed(0)
    model = TinySifa()
    x = torch.randn(2, 8, 3, 6, 6).to(memory_format=memory_format).requires_grad_()
    eager = model(x)
    eager.sum().backward()
    g_eager = model.conv_offset.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(model.conv_offset.weight.grad, g_eager)


@needs_cuda
@pytest.mark.parametrize("case", CASES[:5])
def test_cuda_matches_reference(case):
    N, C, T, H, W, k, dil, groups, scale = case
    pad = (dil * (k - 1) + 1) // 2
    for dtype, tol in ((torch.float64, None), (torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)):
        cpu = make_case(N, C, T, H, W, k, dil, groups, scale)
        gpu = [t.detach().to("cuda", dtype).requires_grad_() for t in cpu]
        kw = {} if tol is None else dict(rtol=tol, atol=tol * 10)
        for fn, i in ((ops.defcor, 2), (ops.defagg, 3)):
            args = (cpu[i], 1, pad, dil, groups) if fn is ops.defcor else (cpu[i], k, 1, pad, dil, groups)
            gargs = (gpu[i],) + args[1:]
            ref = getattr(reference, fn.__name__)(cpu[0], cpu[1], *args)
            out = fn(gpu[0], gpu[1], *gargs)
            assert out.dtype == dtype
            torch.testing.assert_close(out.double().cpu(), ref, **kw)
            gout = torch.randn_like(ref)
            want = torch.autograd.grad(ref, (cpu[0], cpu[1], cpu[i]), gout)
            got = torch.autograd.grad(out, (gpu[0], gpu[1], gpu[i]), gout.to("cuda", dtype))
            for a, b in zip(got, want):
                scale_ = b.abs().max().item() + 1
                torch.testing.assert_close(a.double().cpu() / scale_, b / scale_, **kw)


@needs_cuda
@pytest.mark.parametrize("case", CASES)
def test_cuda_fused_matches_reference(case):
    N, C, T, H, W, k, dil, groups, scale = case
    pad = (dil * (k - 1) + 1) // 2
    for dtype, tol in ((torch.float64, None), (torch.float32, (1e-4, 1e-3)), (torch.float16, (2e-2, 2e-2)),
                       (torch.bfloat16, (8e-2, 8e-2))):
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            x, off, w, _ = make_case(N, C, T, H, W, k, dil, groups, scale)
            gpu = (x.detach().to("cuda", dtype).to(memory_format=memory_format).requires_grad_(),
                   off.detach().to("cuda", dtype).requires_grad_(), w.detach().to("cuda", dtype).requires_grad_())
            check_fused_against_reference(x, off, w, pad, dil, groups, device_args=gpu, tol=tol)


@needs_cuda
@pytest.mark.parametrize("name", list(CATALOGUE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_catalogue_matches_cpu_kernels(name, dtype):
    # the shapes the warp emulator checks (tests/test_emulation.py), on the real GPU; the CPU kernels
    # have no 16-bit path, so they get the same rounded values in float32
    tensors, geo = make_catalogue_inputs(CATALOGUE[name], dtype)
    want = run_ops(torch.ops.sifa, [t.to(torch.float64 if dtype == torch.float64 else torch.float32) for t in tensors],
                   geo)
    got = run_ops(torch.ops.sifa, [t.cuda() for t in tensors], geo)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert_same({k: [t.cpu() for t in v] if isinstance(v, (tuple, list)) else v.cpu() for k, v in got.items()},
                want, rtol=tol, atol=tol, what=f"{name} {dtype}")


@needs_cuda
def test_cuda_deterministic_mode_refuses_the_weight_gradient():
    # the input and offset gradients are deterministic (bitwise equal run to run: test_ops_cuda.py); the
    # frozen weight's gradient adds with atomics, so deterministic mode refuses it
    x, off, w, _ = [t.detach().cuda().float() for t in make_case(2, 64, 3, 6, 6, 3, 1, 1, 1.5)]
    torch.use_deterministic_algorithms(True)
    try:
        out = ops.sifa_attention(x, off, w.clone().requires_grad_())
        with pytest.raises(RuntimeError, match="sifa backward \\(CUDA\\).*weight gradient"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@needs_cuda
def test_cuda_gradcheck_and_compile():
    x, off, w, scores = [t.detach().cuda().requires_grad_() for t in make_case(1, 4, 3, 4, 5, 3, 1, 2, 1.3)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.defcor(a, b, c, 1, 1, 1, 2), (x, off, w))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.defagg(a, b, c, 3, 1, 1, 1, 2), (x, off, scores))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ops.sifa_attention(a, b, c, 1, 1, 1, 2, return_scores=True), (x, off, w))
    model = TinySifa().cuda()
    xx = torch.randn(2, 8, 3, 6, 6, device="cuda")
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(xx), model(xx), rtol=1e-4, atol=1e-4)


@needs_cuda
def test_cuda_indexing_beyond_int32():
    # 1×1×1×46400×46400 = 2.15e9 elements > 2^31: with zero offsets and a 1×1 kernel the aggregation
    # is scores·x, so the far end of the tensor shows any 32-bit index overflow
    side = 46400
    free, _ = torch.cuda.mem_get_info()
    if free < 8 * side * side * 2:  # six half-precision tensors of this size and working room
        pytest.skip("not enough GPU memory for a 2^31-element test")
    x = torch.rand(1, 1, 1, side, side, device="cuda", dtype=torch.float16)
    scores = torch.rand_like(x)
    off = torch.zeros(1, 2, 1, side, side, device="cuda", dtype=torch.float16)
    out = ops.defagg(x, off, scores, 1, 1, 0, 1, 1)
    torch.testing.assert_close(out[..., -2:, :], x[..., -2:, :] * scores[..., -2:, :])
    corr = ops.defcor(x, off, torch.ones(1, 1, 1, 1, device="cuda", dtype=torch.float16), 1, 0, 1, 1)
    torch.testing.assert_close(corr[..., -2:, :], x[..., -2:, :] * x[..., -2:, :])
    del out
    fused, corr = ops.sifa_attention(x, off, torch.ones(1, 1, 1, 1, device="cuda", dtype=torch.float16), 1, 0, 1, 1,
                                     return_scores=True)
    tail = x[..., -2:, :].float()
    torch.testing.assert_close(fused[..., -2:, :].float(), tail * tail * tail, rtol=2e-2, atol=2e-2)


def _all_ops(x, off, w, scores, grad_out, grad_scores):
    """The three ops and their backward ops (every gradient asked) on these tensors: a list of results."""
    geo = ([1, 1], [1, 1], [1, 1], 2)
    lib = torch.ops.sifa
    fused, fused_scores = lib.sifa_attention(x, off, w, *geo)
    return [lib.defcor(x, off, w, *geo), lib.defagg(x, off, scores, [3, 3], *geo), fused, fused_scores,
            *lib._defcor_backward(grad_scores, x, off, w, *geo, [True] * 3),
            *lib._defagg_backward(grad_out, x, off, scores, [3, 3], *geo, [True] * 3),
            *lib._sifa_attention_backward(grad_out, grad_scores, x, off, w, fused_scores, *geo, [True] * 3),
            *lib._sifa_attention_backward(grad_out, None, x, off, w, fused_scores, *geo, [True] * 3)]


def _offset_layouts(off):
    """The offsets as contiguous, channels_last_3d and two strided views the kernels do not read in place."""
    N, K2, T, H, W = off.shape
    wide = torch.zeros(N, K2 + 3, T, H, W + 2, dtype=off.dtype)[:, 1:K2 + 1, :, :, 1:W + 1]
    wide.copy_(off)
    transposed = off.transpose(3, 4).contiguous().transpose(3, 4)  # dense, but h·W + w not one stride apart
    return {"contiguous": off, "channels_last": off.contiguous(memory_format=torch.channels_last_3d),
            "padded view": wide, "transposed": transposed}


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layouts_give_the_same_bits(dtype):
    # features contiguous or channels_last_3d, offsets in any layout: the kernels read the same values in the
    # same order, so every output and gradient is bitwise the same; the offsets' gradient comes in the offsets'
    # layout when they are read in place (contiguous, channels_last_3d), contiguous otherwise
    x, off, w, scores = (t.detach().to(dtype) for t in make_case(2, 8, 3, 5, 6, 3, 1, 2, 1.5))
    g = torch.Generator().manual_seed(3)
    grad_out = torch.randn(x.shape, generator=g, dtype=dtype)
    grad_scores = torch.randn(scores.shape, generator=g, dtype=dtype)
    want = _all_ops(x, off, w, scores, grad_out, grad_scores)
    cl = torch.channels_last_3d
    for x_layout, xs, gs in (("contiguous", x, grad_out),
                             ("channels_last", x.contiguous(memory_format=cl), grad_out.contiguous(memory_format=cl))):
        for off_layout, offs in _offset_layouts(off).items():
            got = _all_ops(xs, offs, w, scores, gs, grad_scores)
            for i, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"x {x_layout}, offsets {off_layout}: result {i}"
            in_place = off_layout in ("contiguous", "channels_last")
            for grad_offset in (got[5], got[8], got[11], got[14]):
                assert grad_offset.stride() == (offs.stride() if in_place else off.stride()), off_layout


@needs_ext
def test_no_layout_copies_for_channels_last_features_and_offsets():
    # channels_last_3d features and offsets (a channels-last network's): no 5-D tensor is copied inside the
    # op calls, forward or backward; contiguous features (and strided offsets) are copied, which the count sees
    from sifa.ops.profiling import layout_copies

    x, off, w, _ = (t.detach().float() for t in make_case(2, 8, 3, 5, 6, 3, 1, 1, 1.5))
    cl = torch.channels_last_3d

    def run(x, off):
        x, off = x.clone().requires_grad_(), off.clone().requires_grad_()  # clones outside the ops
        def step():
            out = ops.sifa_attention(x, off, w)
            out.backward(torch.ones_like(out))
        return layout_copies(step)

    assert run(x.contiguous(memory_format=cl), off.contiguous(memory_format=cl)) == []
    assert run(x.contiguous(memory_format=cl), off) == []  # contiguous offsets are read in place too
    copied = run(x, off)  # NCTHW features: into the working layout and back, forward and backward
    assert ("sifa::sifa_attention", (2, 3, 5, 6, 8)) in copied and ("sifa::_sifa_attention_backward",
                                                                   (2, 8, 3, 5, 6)) in copied
    strided = _offset_layouts(off)["transposed"]
    assert ("sifa::sifa_attention", tuple(off.shape)) in run(x.contiguous(memory_format=cl), strided)
