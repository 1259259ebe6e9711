"""The CUDA kernels run on the CPU under the warp emulator (tests/emulation), compared with the CPU
kernels (themselves checked against the reference and explicit loops in test_ops.py) over a catalogue
of shapes the GPU tests never reach, under several lane schedules and grid sizes; and the emulator
shown to catch the bugs it exists for, on deliberately broken copies of the kernel file.

`python -m pytest -m emulation tests`; with SIFA_EMULATION_SANITIZER=address (and libasan preloaded,
as .ci/run does) the kernels are built with AddressSanitizer instead of the race checks.
"""
import os
import re

import pytest
import torch

import sifa.ops as ops

pytestmark = pytest.mark.emulation

SANITIZER = os.environ.get("SIFA_EMULATION_SANITIZER", "thread-hooks")
HAS_EXT = ops.backend() == "extension"


def _load(source=None, tag="kernels"):
    """Builds and loads an emulated kernel library; returns its torch.ops namespace."""
    from emulation import build

    if SANITIZER == "address" and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.fail("SIFA_EMULATION_SANITIZER=address needs LD_PRELOAD=$(gcc -print-file-name=libasan.so)")
    # UBSan reports go to a file the emulator reads after each launch and raises with
    os.environ.setdefault("UBSAN_OPTIONS", f"log_path={build.BUILD / 'ubsan'}:print_stacktrace=1")
    name = build.library_name(tag)
    if not hasattr(getattr(torch.ops, name), "defcor"):
        torch.ops.load_library(str(build.build(source, SANITIZER, tag)))
    return getattr(torch.ops, name)


@pytest.fixture(scope="module")
def emu():
    if not HAS_EXT:
        pytest.skip("the CPU kernels (the expectation) are not built: run `bash make.sh`")
    return _load()


SCHEDULES = {"in order": 0, "reversed": 1, "shuffled": 2}
# (schedule, most blocks): every launch of a case runs under each; 1 and 2 blocks make the grid-stride
# loops go round (several pixels per warp), 0 runs the grid the kernel asks for
RUNS = [("in order", 0), ("reversed", 1), ("shuffled", 2)]

#        N   C  T  H  W  kh kw dil G  offsets
CATALOGUE = {
    "C=33":            (1, 33, 3, 4, 5, 3, 3, 1, 1, 1.5),
    "C=40 G=2":        (2, 40, 2, 3, 4, 3, 3, 1, 2, 1.5),
    "C=70 G=5 dil=2":  (1, 70, 2, 3, 4, 3, 3, 2, 5, 2.0),
    "C=12 G=3":        (1, 12, 3, 3, 4, 3, 3, 1, 3, 1.0),
    "C=64 G=64":       (1, 64, 2, 3, 3, 3, 3, 1, 64, 1.0),
    "7x7 G=1":         (1, 16, 2, 4, 4, 7, 7, 1, 1, 1.5),
    "7x7 G=2 (G·K=98)": (1, 32, 2, 3, 3, 7, 7, 1, 2, 1.0),
    "K=1":             (2, 8, 3, 4, 5, 1, 1, 1, 1, 0.7),
    "1x3 kernel":      (1, 8, 2, 3, 4, 1, 3, 1, 1, 1.0),
    "H=1":             (1, 36, 3, 1, 6, 3, 3, 1, 2, 1.0),
    "T=1":             (2, 8, 1, 3, 3, 3, 3, 1, 1, 1.0),
    "offsets x20":     (1, 8, 2, 4, 4, 3, 3, 1, 1, 20.0),
    "half-integer":    (1, 8, 3, 4, 5, 3, 3, 1, 2, "half"),
    "integer":         (1, 8, 2, 4, 4, 3, 3, 1, 1, "integer"),
}


def make_inputs(case, dtype=torch.float64, seed=0):
    N, C, T, H, W, kh, kw, dil, G, offsets = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64)
    shape = (N, 2 * kh * kw, T, H, W)
    if offsets == "half":  # every sample on a half-pixel: bilinear weights of exactly 1/2 and 1/4
        off = torch.randint(-4, 5, shape, generator=g).double() / 2
    elif offsets == "integer":  # every sample on a pixel: three of the four weights are 0
        off = torch.randint(-2, 3, shape, generator=g).double()
    else:
        off = torch.randn(shape, generator=g, dtype=torch.float64) * offsets
    w = torch.randn(C, T, kh, kw, generator=g, dtype=torch.float64)
    scores = torch.randn(N, G * kh * kw, T, H, W, generator=g, dtype=torch.float64)
    pad = [dil * (kh - 1) // 2, dil * (kw - 1) // 2]
    return [t.to(dtype) for t in (x, off, w, scores)], dict(stride=[1, 1], padding=pad, dilation=[dil, dil],
                                                           groups=G, kernel_size=[kh, kw])


def run_ops(lib, tensors, geo, masks=((True, True, True),), with_grad_scores=True, seed=1):
    """Every op and its backward through `lib` (torch.ops.sifa or torch.ops.sifa_emulated): a dict of results."""
    x, off, w, scores = tensors
    s, p, d, G, k = geo["stride"], geo["padding"], geo["dilation"], geo["groups"], geo["kernel_size"]
    g = torch.Generator().manual_seed(seed)
    out = {}
    out["defcor"] = lib.defcor(x, off, w, s, p, d, G)
    out["defagg"] = lib.defagg(x, off, scores, k, s, p, d, G)
    fused, fused_scores = lib.sifa_attention(x, off, w, s, p, d, G)
    out["fused"], out["fused scores"] = fused, fused_scores
    grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    grad_scores = torch.randn(out["defcor"].shape, generator=g, dtype=torch.float64).to(x.dtype)
    for mask in masks:
        m = list(mask)
        tag = "".join("x" if b else "-" for b in mask)
        out[f"defcor bwd {tag}"] = lib._defcor_backward(grad_scores, x, off, w, s, p, d, G, m)
        out[f"defagg bwd {tag}"] = lib._defagg_backward(grad_out, x, off, scores, k, s, p, d, G, m)
        gs = grad_scores.to(fused_scores.dtype) if with_grad_scores else None
        out[f"fused bwd {tag}"] = lib._sifa_attention_backward(grad_out, gs, x, off, w, fused_scores, s, p, d, G, m)
        if with_grad_scores:
            out[f"fused bwd {tag} (output only)"] = lib._sifa_attention_backward(
                grad_out, None, x, off, w, fused_scores, s, p, d, G, m)
    return out


def assert_same(got, want, rtol=1e-10, atol=1e-10, what=""):
    for key, b in want.items():
        a = got[key]
        pairs = zip(a, b) if isinstance(b, (tuple, list)) else [(a, b)]
        for i, (ai, bi) in enumerate(pairs):
            assert ai.shape == bi.shape, f"{what} {key}[{i}]: shape {tuple(ai.shape)} != {tuple(bi.shape)}"
            if bi.numel() == 0:
                continue
            scale = bi.double().abs().max().item() + 1
            torch.testing.assert_close(ai.double() / scale, bi.double() / scale, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{what} {key}[{i}]: {m}")


def configure(emu, schedule, max_blocks, seed=0, only_last_blocks=0):
    emu.configure(SCHEDULES[schedule], seed, max_blocks, only_last_blocks)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_matches_cpu_kernels(emu, name):
    tensors, geo = make_inputs(CATALOGUE[name])
    want = run_ops(torch.ops.sifa, tensors, geo)
    for schedule, max_blocks in RUNS:
        configure(emu, schedule, max_blocks, seed=7)
        got = run_ops(emu, tensors, geo)
        launches, blocks, collectives, _ = emu.statistics()
        assert launches == 7 and blocks >= launches  # 3 forward, 4 backward launches
        if max_blocks:
            assert blocks == launches * max_blocks  # the grid-stride loops covered every pixel
        assert_same(got, want, what=f"{name}, {schedule} lanes, {max_blocks or 'all'} blocks:")


def test_every_gradient_mask(emu):
    tensors, geo = make_inputs(CATALOGUE["C=40 G=2"])
    masks = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]
    want = run_ops(torch.ops.sifa, tensors, geo, masks=masks)
    configure(emu, "shuffled", 2, seed=3)
    assert_same(run_ops(emu, tensors, geo, masks=masks), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduced_precision_matches_cpu_float32(emu, dtype):
    # the CPU kernels have no 16-bit path: compare with them on the same (rounded) values in float32
    tensors, geo = make_inputs(CATALOGUE["C=70 G=5 dil=2"], dtype)
    want = run_ops(torch.ops.sifa, [t.float() for t in tensors], geo)
    configure(emu, "reversed", 2)
    got = run_ops(emu, tensors, geo)
    for key, value in got.items():
        for t in value if isinstance(value, (tuple, list)) else [value]:
            assert t.numel() == 0 or t.dtype in (dtype, torch.float32), f"{key}: {t.dtype}"
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert_same(got, want, rtol=tol, atol=tol, what=str(dtype))


def test_empty_problems(emu):
    for shape in [(0, 8, 2, 3, 3), (2, 0, 2, 3, 3), (2, 8, 0, 3, 3)]:
        N, C, T, H, W = shape
        x, off = torch.randn(shape, dtype=torch.float64), torch.randn(N, 18, T, H, W, dtype=torch.float64)
        w = torch.randn(C, T, 3, 3, dtype=torch.float64)
        geo = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, kernel_size=[3, 3])
        scores = torch.randn(N, 9, T, H, W, dtype=torch.float64)
        assert_same(run_ops(emu, [x, off, w, scores], geo), run_ops(torch.ops.sifa, [x, off, w, scores], geo),
                    what=str(shape))


def test_indexing_beyond_int32(emu):
    # channels-last features of 2^31 + 2^16 elements (float16, 4.3 GB of address space, of which only
    # the pages of the last pixels are ever touched): the grid's last blocks compute the last pixels,
    # whose feature offsets p·C + c lie past 2^31. 1×1 kernel, zero offsets, T = 1: the score is
    # Σ_c w_c·x_c² and the output score·x.
    N, C, T, H, W = 1, 1 << 16, 1, 2, 16385
    x = torch.empty(N, C, T, H, W, dtype=torch.float16, memory_format=torch.channels_last_3d)
    tail = torch.randn(C, 4, generator=torch.Generator().manual_seed(0)).half() / 16
    x[0, :, 0, -1, -4:] = tail
    off = torch.zeros(N, 2, T, H, W, dtype=torch.float16)
    w = torch.full((C, T, 1, 1), 1.0 / C, dtype=torch.float16)
    configure(emu, "in order", 0, only_last_blocks=4)  # each block holds at least one pixel
    out, scores = emu.sifa_attention(x, off, w, [1, 1], [0, 0], [1, 1], 1)
    t = tail.double()
    score = ((t * t).sum(0) / C)
    torch.testing.assert_close(scores[0, 0, 0, -1, -4:].double(), score, rtol=2e-3, atol=1e-6)
    torch.testing.assert_close(out[0, :, 0, -1, -4:].double(), t * score, rtol=4e-3, atol=1e-6)


# --- the emulator catches bugs --------------------------------------------------------------------

def _mutant(pattern, replacement, count=1):
    from emulation import build

    source = build.KERNEL.read_text()
    mutated, n = re.subn(pattern, replacement, source, count=count)
    assert n == count, f"the kernel file no longer contains {pattern!r}: update the mutation"
    return mutated


MUTANTS = {  # (pattern, replacement, what the emulator must report)
    # the lanes fill the pixel's taps, then all read them: without the sync a lane reads a tap before
    # the lane that writes it got there
    "missing __syncwarp": (r"__syncwarp\(\);", "", r"shared memory race|shared memory byte \d+ that nobody wrote"),
    # a reduction whose shuffles run on some lanes only: the others never reach them
    "lane-dependent reduction": (r"v \+= __shfl_xor_sync\(0xffffffffu, v, lane_mask\)",
                                 "if (threadIdx.x % 2 == 0) v += __shfl_xor_sync(0xffffffffu, v, lane_mask)",
                                 r"warp divergence"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_emulator_catches_injected_bug(name):
    if not HAS_EXT:
        pytest.skip("needs the CPU kernels")
    pattern, replacement, report = MUTANTS[name]
    tag = re.sub(r"\W+", "-", name)
    lib = _load(_mutant(pattern, replacement), tag=f"mutant-{tag}")
    tensors, geo = make_inputs(CATALOGUE["C=40 G=2"])
    want = run_ops(torch.ops.sifa, tensors, geo)
    for schedule, max_blocks in RUNS:
        configure(lib, schedule, max_blocks)
        with pytest.raises(RuntimeError, match=report):
            run_ops(lib, tensors, geo)
