"""use_checkpoint: per-stage activation checkpointing gives the gradients, outputs and BatchNorm
statistics of the plain forward/backward."""
import copy

import pytest
import torch

from sifa.models import get_model_by_name

pytestmark = pytest.mark.slow  # full-size networks' forward and backward, twice each

CASES = {  # net name -> (frames, frame size)
    "c2d_sifa_resnet50": (8, 32),
    "c2d_resnet50": (8, 32),
    "c2d_sifa_swin_vit_s_p4_w7": (8, 224),
}


@pytest.mark.parametrize("net_name", CASES)
def test_checkpointed_stages_give_identical_gradients(net_name):
    torch.manual_seed(0)
    frames, size = CASES[net_name]
    plain = get_model_by_name(net_name, num_classes=3, clip_length=frames, dropout_ratio=0.5,
                              sifa_kernel=[3] if "swin" in net_name else [1, 3, 3, 3]).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    video = torch.randn(2, 3, frames, size, size)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout / drop-path draws in both
        outputs = model(video)
        sum((o * torch.arange(1, o.shape[1] + 1)).sum() for o in outputs).backward()
        results.append((outputs, model))
    (out_a, a), (out_b, b) = results
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))
    grads_a = {n: p.grad for n, p in a.named_parameters() if p.grad is not None}
    grads_b = {n: p.grad for n, p in b.named_parameters() if p.grad is not None}
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=0, msg=name)
    # Running statistics updated once, not again by the recomputation.
    buffers_b = dict(b.named_buffers())
    for name, buffer in a.named_buffers():
        assert torch.equal(buffer, buffers_b[name]), name
