"""The operator's argument checks: one message naming the argument and the rule."""
import pytest
import torch

from sifa import ops

N, C, T, H, W = 1, 4, 2, 5, 5


def tensors(dtype=torch.float32):
    torch.manual_seed(0)
    return (torch.randn(N, C, T, H, W, dtype=dtype), torch.zeros(N, 18, T, H, W, dtype=dtype),
            torch.rand(C, T, 3, 3, dtype=dtype), torch.rand(N, 9, T, H, W, dtype=dtype))


@pytest.mark.parametrize("value", [1.5, (1,), (1, 1, 1), True, "1", (1.0, 1)])
def test_padding_that_is_not_an_int_or_a_pair_of_ints_is_named(value):
    x, off, w, scores = tensors()
    for call in (lambda: ops.defcor(x, off, w, padding=value), lambda: ops.defagg(x, off, scores, padding=value),
                 lambda: ops.sifa_attention(x, off, w, padding=value), lambda: ops.DefAgg(C, T, 3, 1, value)):
        with pytest.raises(TypeError, match=r"padding must be an int or a pair of ints \(height, width\), got "):
            call()


def test_pairs_of_ints_are_accepted_as_ints():
    x, off, w, scores = tensors()
    assert torch.equal(ops.defcor(x, off, w, padding=(1, 1), dilation=[1, 1]), ops.defcor(x, off, w, padding=1))
    assert torch.equal(ops.defagg(x, off, scores, kernel_size=torch.Size([3, 3])), ops.defagg(x, off, scores))


def test_a_three_dimensional_kernel_size_is_rejected():
    x, off, _, scores = tensors()
    with pytest.raises(TypeError, match=r"defagg: kernel_size must be .* got \(3, 3, 3\)"):
        ops.defagg(x, off, scores, kernel_size=(3, 3, 3))
    with pytest.raises(TypeError, match=r"DefCorFixW: kernel_size must be .* got \(3, 3, 3\)"):
        ops.DefCorFixW(C, T, (3, 3, 3), 1, 1)


@pytest.mark.parametrize("module", [ops.DefCorFixW, ops.DefAgg])
def test_modules_need_at_least_one_channel_and_frame(module):
    with pytest.raises(ValueError, match=rf"{module.__name__}: in_channels must be an int ≥ 1, got 0"):
        module(0, T, 3, 1, 1)
    with pytest.raises(ValueError, match=rf"{module.__name__}: times must be an int ≥ 1, got -1"):
        module(C, -1, 3, 1, 1)


def test_defagg_checks_its_channels_and_frames_against_the_input():
    x, off, _, scores = tensors()
    assert ops.DefAgg(C, T, 3, 1, 1)(x, off, scores).shape == x.shape
    for in_channels, times in ((2 * C, T), (C, T + 1)):
        with pytest.raises(ValueError, match=rf"DefAgg\({in_channels}, times={times}\): input has {C} channels and "
                                             rf"{T} frames"):
            ops.DefAgg(in_channels, times, 3, 1, 1)(x, off, scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_the_cpu_says_what_the_cpu_runs(dtype):
    x, off, w, scores = tensors(dtype)
    for call in (lambda: ops.defcor(x, off, w), lambda: ops.defagg(x, off, scores),
                 lambda: ops.sifa_attention(x, off, w)):
        with pytest.raises(TypeError, match=rf"on the CPU the SIFA ops run in float32 or float64, got {dtype}.*"
                                            r"torch.autocast\('cpu'\)"):
            call()
    with torch.autocast("cpu", dtype=dtype):  # autocast computes them in float32
        assert ops.sifa_attention(x, off, w).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_defagg_takes_float32_scores_of_half_features_as_the_kernels_do(dtype):
    # sifa_attention(..., return_scores=True) returns float32 scores for half features (the kernels' accumulation
    # type); defagg takes them back. Meta tensors: the dtype rule without the CPU's float32-only rule.
    x, off, _, scores = (t.to("meta") for t in tensors())
    x, off = x.to(dtype), off.to(dtype)
    assert ops.defagg(x, off, scores).dtype == dtype
    assert ops.defagg(x, off, scores.to(dtype)).dtype == dtype
    with pytest.raises(TypeError, match=rf"defagg: weight has dtype torch.float64 but must be .*for input {dtype}"):
        ops.defagg(x, off, scores.double())
    with pytest.raises(TypeError, match="defcor: weight has dtype torch.float32"):  # a weight, not scores
        ops.defcor(x, off, tensors()[2].to("meta"))
    x64, off64 = x.double(), off.double()
    with pytest.raises(TypeError, match="defagg: weight has dtype torch.float32 but must be torch.float64"):
        ops.defagg(x64, off64, scores)


def test_def_cor_geometry_by_keyword_defaults_to_same_size_sampling():
    assert (ops.DefCorFixW(C, T, 3).stride, ops.DefCorFixW(C, T, 3).padding) == ((1, 1), (1, 1))
    assert ops.DefCorFixW(C, T, 3, dilation=2).padding == (2, 2)
    assert ops.DefCorFixW(C, T, (1, 5), padding=(0, 1)).padding == (0, 1)
