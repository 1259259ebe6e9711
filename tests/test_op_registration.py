"""Registration of the six `torch.ops.sifa` ops and the CPU capability query, checked by
`torch.library.opcheck`: schema, fake (meta) kernel and autograd registration, on the CPU and, when
present, on a GPU; and the clear error of a double backward through the compiled kernels."""
import pytest
import torch
from torch.library import opcheck

import sifa.ops as ops

HAS_EXT = ops.backend() == "extension"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built (run `bash make.sh`)")

N, C, T, H, W, K = 2, 4, 3, 5, 6, 3
GEOMETRY = ([1, 1], [1, 1], [1, 1], 2)  # stride, padding, dilation, groups
GRADS = [True, True, True]  # output_mask of the backward ops: input, offset, weight
# The backward ops are never differentiated (that is the error below), so opcheck skips its
# differentiating pass for them: aot_dispatch_dynamic would run their backward. It cannot compare
# the string the CPU capability query returns either.
FORWARD_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
NOT_DIFFERENTIATED_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def sample(device):
    """Input, offset, correlation weight and scores (G·K² channels), float64, requiring gradients."""
    gen = torch.Generator().manual_seed(0)

    def tensor(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(device).requires_grad_()

    return (tensor(N, C, T, H, W), tensor(N, 2 * K * K, T, H, W, scale=1.5), tensor(C, T, K, K),
            tensor(N, 2 * K * K, T, H, W))


def channels_last(t):
    """``t`` laid out channels_last_3d, a leaf as ``t`` is."""
    return t.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(t.requires_grad)


def op_calls(device, layout="contiguous"):
    x, off, w, scores = sample(device)
    if layout == "channels_last":  # a channels-last network's features and offsets, read in place
        x, off = channels_last(x), channels_last(off)
    grad_out = torch.randn_like(x)
    grad_scores = torch.randn_like(scores)
    return {
        "defcor": ((x, off, w, *GEOMETRY), FORWARD_CHECKS),
        "defagg": ((x, off, scores, [K, K], *GEOMETRY), FORWARD_CHECKS),
        "sifa_attention": ((x, off, w, *GEOMETRY), FORWARD_CHECKS),
        "_defcor_backward": ((grad_scores, x, off, w, *GEOMETRY, GRADS), NOT_DIFFERENTIATED_CHECKS),
        "_defagg_backward": ((grad_out, x, off, scores, [K, K], *GEOMETRY, GRADS), NOT_DIFFERENTIATED_CHECKS),
        "_sifa_attention_backward": ((grad_out, grad_scores, x, off, w, scores.detach(), *GEOMETRY, GRADS),
                                     NOT_DIFFERENTIATED_CHECKS),
        "_cpu_capability": ((), NOT_DIFFERENTIATED_CHECKS),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["defcor", "defagg", "sifa_attention", "_defcor_backward", "_defagg_backward",
                                  "_sifa_attention_backward", "_cpu_capability"])
def test_opcheck(name, device):
    args, checks = op_calls(device)[name]
    opcheck(getattr(torch.ops.sifa, name), args, test_utils=checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["defcor", "defagg", "sifa_attention", "_defcor_backward", "_defagg_backward",
                                  "_sifa_attention_backward"])
def test_opcheck_channels_last(name, device):
    # the fake kernels give the real ones' layouts: channels-last features, and the offsets' gradient in the
    # offsets' channels-last layout
    args, checks = op_calls(device, "channels_last")[name]
    opcheck(getattr(torch.ops.sifa, name), args, test_utils=checks)


def test_every_op_of_the_library_is_checked():
    registered = {name for name in dir(torch.ops.sifa) if hasattr(getattr(torch.ops.sifa, name), "default")}
    assert registered == set(op_calls("cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_is_a_clear_error(device):
    x, off, w, scores = sample(device)
    groups = GEOMETRY[-1]
    calls = {"defcor": lambda: ops.defcor(x, off, w, groups=groups),
             "defagg": lambda: ops.defagg(x, off, scores, groups=groups),
             "sifa_attention": lambda: ops.sifa_attention(x, off, w, groups=groups)}
    for name, call in calls.items():
        grads = torch.autograd.grad(call().sum(), (x, off), create_graph=True)
        with pytest.raises(RuntimeError, match=f"sifa::_{name}_backward: double backward .* not implemented"):
            sum(g.sum() for g in grads).backward()


def test_the_reference_differentiates_twice():
    x, off, w, _ = sample("cpu")
    (gx,) = torch.autograd.grad(ops.reference.sifa_attention(x, off, w)[0].pow(2).sum(), x, create_graph=True)
    (gxx,) = torch.autograd.grad(gx.sum(), x)
    assert torch.isfinite(gxx).all() and gxx.abs().sum() > 0
