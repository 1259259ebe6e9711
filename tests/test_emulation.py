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
from kernel_catalogue import CATALOGUE, assert_same, make_inputs, run_ops

pytestmark = [pytest.mark.emulation, pytest.mark.slow]  # compiles the CUDA kernels for the host

SANITIZER = os.environ.get("SIFA_EMULATION_SANITIZER", "thread-hooks")
HAS_EXT = ops.backend() == "extension"


def _load(source=None, tag="kernels", arch=900, dtype=None, defines=()):
    """Builds and loads an emulated kernel library (the code paths of GPU architecture `arch`, for
    `dtype` only when given, with the kernel file's test-only `defines`); returns its torch.ops namespace."""
    from emulation import build

    if SANITIZER == "address" and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.fail("SIFA_EMULATION_SANITIZER=address needs LD_PRELOAD=\"$(gcc -print-file-name=libasan.so) "
                    "$(gcc -print-file-name=libstdc++.so)\" (as .ci/run sets it)")
    # UBSan reports go to a file the emulator reads after each launch and raises with
    os.environ.setdefault("UBSAN_OPTIONS", f"log_path={build.BUILD / 'ubsan'}:print_stacktrace=1")
    name = build.library_name(tag)
    if not hasattr(getattr(torch.ops, name), "defcor"):
        torch.ops.load_library(str(build.build(source, SANITIZER, tag, arch, dtype, defines)))
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
if SANITIZER == "address":  # out-of-bounds accesses do not depend on the lane order: one run per case
    RUNS = RUNS[:1]

def configure(emu, schedule, max_blocks, seed=0, only_last_blocks=0, shared_limit=0):
    emu.configure(SCHEDULES[schedule], seed, max_blocks, only_last_blocks, shared_limit)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_matches_cpu_kernels(emu, name):
    tensors, geo = make_inputs(CATALOGUE[name])
    want = run_ops(torch.ops.sifa, tensors, geo)
    for schedule, max_blocks in RUNS:
        configure(emu, schedule, max_blocks, seed=7)
        got = run_ops(emu, tensors, geo)
        launches, blocks, collectives, _ = emu.statistics()
        # 3 forward, 4 backward launches; the slice kernels' two fused backwards with the input
        # gradient take two passes each
        assert launches == (9 if name.startswith("slice") else 7) and blocks >= launches
        if max_blocks:  # fewer blocks than pixels need: the grid-stride loops cover the rest
            assert blocks <= launches * max_blocks
        assert_same(got, want, what=f"{name}, {schedule} lanes, {max_blocks or 'all'} blocks:")


@pytest.fixture(scope="module")
def emu_index64():
    if not HAS_EXT:
        pytest.skip("the CPU kernels (the expectation) are not built: run `bash make.sh`")
    return _load(tag="index64", dtype=torch.float64, defines=("SIFA_INDEX_TYPE=int64_t",))  # make_inputs' dtype


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_on_the_64bit_index_path(emu_index64, name):
    # every shape takes the 32-bit index path (all its tensors have fewer than 2^31 elements); the
    # 64-bit one, which larger tensors take, forced here for every kernel (test_indexing_beyond_int32
    # reaches it by size, for the general forward only)
    tensors, geo = make_inputs(CATALOGUE[name])
    configure(emu_index64, "shuffled", 2, seed=5)
    assert_same(run_ops(emu_index64, tensors, geo), run_ops(torch.ops.sifa, tensors, geo), what=name)


def test_every_gradient_mask(emu):
    tensors, geo = make_inputs(CATALOGUE["C=40 G=2"])
    masks = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]
    want = run_ops(torch.ops.sifa, tensors, geo, masks=masks)
    configure(emu, "shuffled", 2, seed=3)
    assert_same(run_ops(emu, tensors, geo, masks=masks), want)


# the general kernels, and the slice forward at every width where 2-byte dtypes map it apart from
# float (ForwardShapes2Byte: C = 64, 96, 128 at 4 pixels per warp, odd pixel counts at 128; 192 and
# 256 at 2), and over several warps (768)
@pytest.mark.parametrize("case", ["C=70 G=5 dil=2", "slice S=2", "slice S=4 dil=2", "slice C=128 odd pixels 5x5",
                                  "slice S=3", "slice S=6 5x5", "slice S=8 5x5", "slice C=768"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduced_precision_matches_cpu_float32(emu, dtype, case):
    # the CPU kernels have no 16-bit path: compare with them on the same (rounded) values in float32
    tensors, geo = make_inputs(CATALOGUE[case], dtype)
    want = run_ops(torch.ops.sifa, [t.float() for t in tensors], geo)
    configure(emu, "reversed", 2)
    got = run_ops(emu, tensors, geo)
    for key, value in got.items():
        for t in value if isinstance(value, (tuple, list)) else [value]:
            assert t.numel() == 0 or t.dtype in (dtype, torch.float32), f"{key}: {t.dtype}"
    # the fused op keeps its scores in float32, so its backward uses them unrounded
    assert got["fused scores"].dtype == torch.float32 and got["defcor"].dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert_same(got, want, rtol=tol, atol=tol, what=str(dtype))


def test_misaligned_channels_last_input_takes_the_general_kernels(emu):
    # a channels-last view one element into its storage: the slice kernels' vector loads would be
    # misaligned (a fault on a GPU); the op must notice and run the general kernels
    tensors, geo = make_inputs(CATALOGUE["slice S=2"], torch.float32)
    x = tensors[0]
    N, C, T, H, W = x.shape
    storage = torch.empty(x.numel() + 1)
    shifted = storage[1:].view(N, T, H, W, C).permute(0, 4, 1, 2, 3)
    shifted.copy_(x)
    assert shifted.is_contiguous(memory_format=torch.channels_last_3d) and shifted.data_ptr() % 16 != 0
    configure(emu, "in order", 0)
    assert_same(run_ops(emu, [shifted] + tensors[1:], geo), run_ops(torch.ops.sifa, tensors, geo), rtol=1e-5,
                atol=1e-5)


@pytest.mark.parametrize("case", ["slice S=2", "C=40 G=2", "H=1", "T=1"])
def test_channels_last_offsets_are_read_in_place(emu, case):
    # a channels-last network's offsets (channels_last_3d, read through Geometry's strides without a copy) and
    # features: the CUDA kernels give the CPU kernels' results on contiguous tensors, the offsets' gradient in
    # the offsets' layout
    tensors, geo = make_inputs(CATALOGUE[case], torch.float32)
    x, off, w, scores = tensors
    cl = torch.channels_last_3d
    want = run_ops(torch.ops.sifa, tensors, geo)
    configure(emu, "shuffled", 2)
    for features in (x, x.contiguous(memory_format=cl)):
        off_cl = off.contiguous(memory_format=cl)
        got = run_ops(emu, [features, off_cl, w, scores], geo)
        assert_same(got, want, rtol=1e-5, atol=1e-5, what=case)
        assert got["fused bwd xxx"][1].stride() == off_cl.stride()


def _fused_backward(lib, tensors, geo, mask):
    x, off, w, _ = tensors
    out, scores = lib.sifa_attention(x, off, w, geo["stride"], geo["padding"], geo["dilation"], 1)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return lib._sifa_attention_backward(grad_out, None, x, off, w, scores, geo["stride"], geo["padding"],
                                        geo["dilation"], 1, mask)


@pytest.mark.parametrize("case", ["slice S=2", "slice S=8 5x5", "slice C=384", "slice C=1536"])
def test_fused_input_gradient_without_atomics_is_deterministic(emu, case):
    # the slice kernels' input gradient: no atomics, and in float32 (where a changed summation order
    # changes bits) bitwise the same run to run, under every lane schedule and grid size (W > 1:
    # the pixel's warps add their channel sums in warp order, whichever warp gets there first)
    tensors, geo = make_inputs(CATALOGUE[case], torch.float32)
    want = _fused_backward(torch.ops.sifa, tensors, geo, [True, True, False])
    results = []
    for schedule, max_blocks in [("in order", 0), ("shuffled", 2), ("reversed", 1), ("shuffled", 0), ("in order", 0)]:
        configure(emu, schedule, max_blocks, seed=len(results))
        got = _fused_backward(emu, tensors, geo, [True, True, False])
        assert emu.statistics()[3] == 0, "global atomics in the fused backward"
        results.append(got)
    for got in results:
        for a, b, what in zip(got, results[0], ("input", "offset")):
            assert torch.equal(a, b), f"{what} gradient differs between runs"
    assert_same({case: results[0]}, {case: want}, rtol=1e-5, atol=1e-5)


def test_input_gradient_in_bands(emu):
    # a frame whose slice does not fit in one warp's shared memory (here 12×10 pixels × 64 channels ×
    # 4 bytes = 30 KB, on a device reporting 48 KB, of which the kernel takes half) is scattered in
    # bands of pixels, one block each: more blocks, same gradients
    tensors, geo = make_inputs((1, 64, 2, 12, 10, 3, 3, 1, 1, 2.0), torch.float32)
    want = _fused_backward(torch.ops.sifa, tensors, geo, [True, False, False])
    blocks = {}
    for shared_limit in (0, 1):
        configure(emu, "shuffled", 0, shared_limit=shared_limit)
        got = _fused_backward(emu, tensors, geo, [True, False, False])
        blocks[shared_limit] = emu.statistics()[1]
        assert_same({"bands": got}, {"bands": want}, rtol=1e-5, atol=1e-5, what=f"shared limit {shared_limit}")
    assert blocks[1] > blocks[0]


def test_sifa_net_stage4_shape(emu):
    # a SIFA-Net stage-4 SIFA call at its real frame size (C = 512, 7×7, T = 4; one sample): the
    # fused op's forward and input/offset gradients, float32, against the CPU kernels
    tensors, geo = make_inputs((1, 512, 4, 7, 7, 3, 3, 1, 1, 1.5), torch.float32)
    x, off, w, _ = tensors
    configure(emu, "shuffled", 0, seed=11)
    got = dict(zip(("out", "scores"), emu.sifa_attention(x, off, w, [1, 1], [1, 1], [1, 1], 1)))
    got["grads"] = _fused_backward(emu, tensors, geo, [True, True, False])
    want = dict(zip(("out", "scores"), torch.ops.sifa.sifa_attention(x, off, w, [1, 1], [1, 1], [1, 1], 1)))
    want["grads"] = _fused_backward(torch.ops.sifa, tensors, geo, [True, True, False])
    assert_same(got, want, rtol=1e-5, atol=1e-5)


def test_deterministic_mode(emu):
    tensors, geo = make_inputs(CATALOGUE["slice S=2"])
    torch.use_deterministic_algorithms(True)
    try:
        # the fused op's input and offset gradients: no atomics, at every width the slice kernels
        # serve with one warp per pixel and with several
        for case in ("slice S=2", "slice C=384", "slice C=768", "slice C=1024 5x5", "slice C=1536"):
            _fused_backward(emu, *make_inputs(CATALOGUE[case]), [True, True, False])
        # the frozen weight's gradient, and the general kernels' bilinear scatter, add with atomics
        with pytest.raises(RuntimeError, match="sifa backward \\(CUDA\\).*weight gradient.*atomics"):
            _fused_backward(emu, tensors, geo, [False, False, True])
        general, general_geo = make_inputs(CATALOGUE["C=40 G=2"])
        x, off, w, _ = general
        s, p, d = general_geo["stride"], general_geo["padding"], general_geo["dilation"]
        with pytest.raises(RuntimeError, match="sifa backward \\(CUDA\\).*scatter.*atomics"):
            emu._defcor_backward(torch.ones(x.shape[0], 18, *x.shape[2:], dtype=x.dtype), x, off, w, s, p, d, 2,
                                 [True, False, False])
        # no atomics when only the offsets' gradient is asked for, and none on the CPU
        emu._defcor_backward(torch.ones(x.shape[0], 18, *x.shape[2:], dtype=x.dtype), x, off, w, s, p, d, 2,
                             [False, True, False])
        _fused_backward(torch.ops.sifa, tensors, geo, [True, True, True])
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def emu_sm80():
    if not HAS_EXT:
        pytest.skip("the CPU kernels (the expectation) are not built: run `bash make.sh`")
    # the cases it runs: float32 and 32-bit indices
    return _load(tag="sm80", arch=800, dtype=torch.float32, defines=("SIFA_INDEX_TYPE=int32_t",))


# channels per lane S and warps per pixel W of the slice kernels' backward at each width C = 32·S·W
# (the kernel file's BackwardShapes)
SLICE_SHAPES = {64: (2, 1), 96: (3, 1), 128: (4, 1), 192: (6, 1), 256: (8, 1), 384: (6, 2), 512: (8, 2),
                768: (8, 3), 1024: (8, 4), 1536: (8, 6)}


@pytest.mark.parametrize("case", ["slice S=2", "slice C=512 x20", "slice C=384", "slice C=768"])
def test_scalar_atomics_before_sm90(emu, emu_sm80, case):
    # the weight gradient's adds on GPUs without float2/float4 global atomics (sm_80 builds) and with
    tensors, geo = make_inputs(CATALOGUE[case], torch.float32)
    want = _fused_backward(torch.ops.sifa, tensors, geo, [True, True, True])
    N, C, T, H, W = tensors[0].shape
    per_channel = N * T * H * W * 9 * C  # one add per channel, pixel and tap
    S = SLICE_SHAPES[C][0]  # a lane's channels: float4 adds where S is a multiple of 4, else float2
    for lib, adds_per_atomic in ((emu_sm80, 1), (emu, 4 if S % 4 == 0 else 2)):
        configure(lib, "shuffled", 2)
        got = _fused_backward(lib, tensors, geo, [True, True, True])
        assert lib.statistics()[3] == per_channel // adds_per_atomic
        assert_same({case: got}, {case: want}, rtol=1e-5, atol=1e-5)


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

def _mutant(pattern, replacement, count):
    from emulation import build

    source = build.KERNEL.read_text()
    mutated, n = re.subn(pattern, replacement, source, count=count)
    assert n == count, f"the kernel file no longer contains {pattern!r}: update the mutation"
    return mutated


GENERAL_AND_SLICE = ("C=40 G=2", "slice S=2")
MUTANTS = {  # (pattern, replacement, occurrences, what the emulator must report, cases it shows on)
    # the lanes fill the pixel's taps, then all read them: without the sync a lane reads a tap before
    # the lane that writes it got there
    "missing __syncwarp": (r"__syncwarp\(\);(?=\s*// taps)", "", 5,
                           r"shared memory race|shared memory byte \d+ that nobody wrote", GENERAL_AND_SLICE),
    # a reduction whose shuffles run on some lanes only: the others never reach them
    "lane-dependent reduction": (r"v \+= __shfl_xor_sync\(0xffffffffu, v, lane_mask\)",
                                 "if (threadIdx.x % 2 == 0) v += __shfl_xor_sync(0xffffffffu, v, lane_mask)",
                                 1, r"warp divergence", GENERAL_AND_SLICE),
    # the input gradient's scatter: the block sums its warps' copies before every warp finished its own
    "missing __syncthreads": (r"__syncthreads\(\);(?=\s*// every warp's copy complete)", "", 1,
                              r"shared memory race", ("slice S=2",)),
    # a pixel over several warps: a warp adds up the warps' channel sums before the others wrote theirs
    "missing cross-warp __syncthreads": (r"__syncthreads\(\);(?=\s*// every warp's partial sums written)", "", 1,
                                         r"shared memory race|shared memory byte \d+ that nobody wrote",
                                         ("slice C=384", "slice C=768")),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_emulator_catches_injected_bug(name):
    if not HAS_EXT:
        pytest.skip("needs the CPU kernels")
    if SANITIZER != "thread-hooks":
        pytest.skip("the shared-memory checks live in the default build, not under AddressSanitizer")
    pattern, replacement, count, report, cases = MUTANTS[name]
    tag = re.sub(r"\W+", "-", name)
    # make_inputs' dtype; the catalogue's shapes take the 32-bit index path
    lib = _load(_mutant(pattern, replacement, count), tag=f"mutant-{tag}", dtype=torch.float64,
                defines=("SIFA_INDEX_TYPE=int32_t",))
    for case in cases:  # the general and the slice kernels
        tensors, geo = make_inputs(CATALOGUE[case])
        for schedule, max_blocks in RUNS:
            configure(lib, schedule, max_blocks)
            with pytest.raises(RuntimeError, match=report):
                run_ops(lib, tensors, geo)
