"""Kernel test cases shared by the emulated (test_emulation.py) and the real CUDA (test_ops.py)
runs: a catalogue of shapes, every op and backward of one op library on a case, and the comparison."""
import torch

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
    "non-finite":      (1, 8, 2, 4, 4, 3, 3, 1, 1, "non-finite"),
    "7x7 G=256 (shared memory > 48 KB)": (1, 256, 1, 2, 2, 7, 7, 1, 256, 1.0),
    # one group and C = 32·S·W: the fused op's slice kernels (S channels per lane in registers, W
    # warps per pixel whose channel sums add up through shared memory): one warp per pixel up to
    # C = 256 (S = 2…8), the forward up to 512 (S = 12, 16); the backward at 384 and 512 over 2 warps.
    # The forward takes two pixels per warp up to C = 128 (16 lanes × 4, 6, 8 channels: the names'
    # S is the backward's); for half and bfloat16 twice the channels per lane and four pixels per
    # warp up to C = 128, two at 192 and 256 (test_reduced_precision_matches_cpu_float32 runs them)
    "slice S=2":         (2, 64, 3, 3, 4, 3, 3, 1, 1, 1.5),
    "slice S=4 dil=2":   (1, 128, 2, 3, 3, 3, 3, 2, 1, 2.0),
    "slice S=8 5x5":     (1, 256, 2, 2, 3, 5, 5, 1, 1, 1.0),
    "slice C=512 x20":   (1, 512, 2, 2, 2, 3, 3, 1, 1, 20.0),
    # SIFA-Swin-S/L widths (96·2^i, 192·2^i): slices of 3, 6 and 12 channels, read in 4-, 8- and 16-byte parts
    "slice S=3":         (1, 96, 2, 3, 3, 3, 3, 1, 1, 1.5),
    "slice S=6 5x5":     (1, 192, 2, 2, 3, 5, 5, 1, 1, 1.0),
    "slice C=384":       (1, 384, 2, 2, 2, 3, 3, 1, 1, 2.0),
    # SIFA-Swin's last stages, over several warps: 768 (S, L), 1024 (B), 1536 (L)
    "slice C=768":       (2, 768, 2, 2, 2, 3, 3, 1, 1, 1.5),
    "slice C=1024 5x5":  (1, 1024, 2, 2, 2, 5, 5, 1, 1, 1.0),
    "slice C=1536":      (1, 1536, 3, 2, 2, 3, 3, 1, 1, 2.0),
    # the forward's two pixels per warp (C ≤ 128): an odd pixel count (the last warp's second pixel
    # computed again and not stored), with 25 taps, more than a pixel's 16 lanes fill at once
    "slice C=128 odd pixels 5x5": (1, 128, 3, 3, 3, 5, 5, 1, 1, 1.5),
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
    elif offsets == "non-finite":  # NaN and ±inf taps sample nothing, with zero gradient
        off = torch.randn(shape, generator=g, dtype=torch.float64)
        off.view(-1)[::7] = float("nan")
        off.view(-1)[3::11] = float("inf")
        off.view(-1)[5::13] = -float("inf")
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
    grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)  # x's device and dtype
    grad_scores = torch.randn(out["defcor"].shape, generator=g, dtype=torch.float64).to(x)
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
