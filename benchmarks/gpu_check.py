"""The in-process parts of benchmarks/gpu_check.sh: kernel timings, network steps, the targets of the
profilers, and summary.md.

    python benchmarks/gpu_check.py preflight
    python benchmarks/gpu_check.py kernels RESULTS.jsonl [--rehearsal]
    python benchmarks/gpu_check.py network RESULTS.jsonl [--rehearsal]
    python benchmarks/gpu_check.py profile-target | sanitize-target
    python benchmarks/gpu_check.py summary WORK_DIR OUT_DIR

Kernel timings: the fused forward (``sifa_attention``) and its backward op
(``_sifa_attention_backward``) called directly with the gradient mask of the networks (input and
offset, the correlation weight is frozen) and with the offset gradient only, so that the cost of the
input-gradient scatter shows. Each at the networks' real layer shapes (SIFA-Net's SIFA layers for a
16-frame clip; SIFA-Swin-B's non-shifted blocks for the 64-frame setting), float32 / bfloat16 /
float16, NCTHW-contiguous and channels_last_3d features. On a GPU: CUDA events around CUDA-graph
replays (the kernels' time) and around eager calls (plus the Python wrapper and the dispatcher),
warm (back-to-back) and cold (the L2 flushed before each call by writing a buffer larger than it);
the memory floor is the bytes a call must move once over the device-to-device copy bandwidth
measured here. ``--rehearsal`` runs the same code on the CPU at tiny sizes, timing eager calls only
(no graphs there): it proves the script, not the kernels' speed.

Results go to RESULTS.jsonl one row at a time (a stage cut short keeps its rows) and, as a table, to
stdout; ``summary`` turns the rows, the test report and the stage list into summary.md.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, bench_models

from harness import copy_bandwidth_gbs  # noqa: E402  (also puts the repository on sys.path)

K = 3
DTYPES = ("float32", "bfloat16", "float16")
LAYOUTS = ("contiguous", "channels_last")
# name -> (N, T, [(C, H=W)], offset scale): what the SIFA ops see in the networks. SIFA-Net: batch 8 of
# 16-frame clips (T = 16/4), learned offsets; SIFA-Swin-B: batch 2 of 64 frames (T = 64/4 tokens in
# time, settings/c2d_sifa_swin-b-1x64x2.k400.yml), zero offsets (sifa_swin.py, non-shifted blocks).
LAYERS = {
    "SIFA-Net": (8, 4, [(128, 28), (256, 14), (512, 7)], 2.0),
    "SIFA-Swin-B": (2, 16, [(128, 56), (256, 28), (512, 14), (1024, 7)], 0.0),
}
REHEARSAL_LAYERS = {"rehearsal": (1, 2, [(32, 6)], 2.0)}
PASSES = {"fwd": None, "bwd offset": [False, True, False], "bwd input+offset": [True, True, False]}
NETWORK_PAIRS = [("SIFA-R50", "c2d_sifa_resnet50", "C2D-R50", "c2d_resnet50"),
                 ("SIFA-Swin-B", "c2d_sifa_swin_vit_b_p4_w7", "Swin-B", "c2d_swin_vit_b_p4_w7")]
# the packages the preflight reports missing (needed ones and optional ones)
PACKAGES = ["timm", "yaml", "numpy", "ninja", "pytest", "cv2", "lmdb", "av", "tensorboard", "matplotlib", "tqdm",
            "onnx", "onnxscript", "onnxruntime"]


class Clock:
    """Marks in a device's time line: CUDA events (timed on the GPU) or the host clock on the CPU."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        if not self.cuda:
            return (end - start) * 1e3
        self.torch.cuda.synchronize()
        return start.elapsed_time(end)


def time_ms(fn: Callable, clock: Clock, repeat: int, flush: Optional[Callable] = None) -> float:
    """Per call: warm = ``repeat`` back-to-back calls between two marks; cold (``flush`` given) = the
    median of single calls, each after ``flush``."""
    if flush is None:
        start = clock.mark()
        for _ in range(repeat):
            fn()
        return clock.ms(start, clock.mark()) / repeat
    marks = []
    for _ in range(repeat):
        flush()
        start = clock.mark()
        fn()
        marks.append((start, clock.mark()))
    return statistics.median(clock.ms(a, b) for a, b in marks)


def capture_graph(fn: Callable):
    """``fn`` captured in a CUDA graph (warmed up on a side stream first, as capture requires)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def l2_flusher(device: str) -> Callable:
    """Writes a buffer of twice the L2 size (at least 256 MiB; 64 MiB on the CPU)."""
    import torch

    if device == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0
        size = max(2 * l2, 256 << 20)
    else:
        size = 64 << 20
    buffer = torch.empty(size // 4, dtype=torch.float32, device=device)
    return lambda: buffer.fill_(1.0)


def min_bytes(N: int, C: int, T: int, H: int, W: int, element: int, pass_: str) -> int:
    """Bytes a call must move at least once. Forward: features in and out, offsets in, scores out (float32
    for 16-bit features: the kernels keep them in their accumulation type). Backward: output gradient,
    features, offsets and scores in, offset gradient out, and the input gradient out when asked for."""
    features, offsets, scores = N * C * T * H * W * element, N * 2 * K * K * T * H * W * element, \
        N * K * K * T * H * W * max(element, 4)
    if pass_ == "fwd":
        return 2 * features + offsets + scores
    return 2 * features + 2 * offsets + scores + (features if pass_ == "bwd input+offset" else 0)


def _emit(results: Optional[Path], row: dict) -> None:
    if results is not None:
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_kernels(results: Optional[Path], rehearsal: bool) -> None:
    import torch

    device = "cpu" if rehearsal else "cuda"
    if not rehearsal:
        require_cuda_kernels()
    torch.manual_seed(0)
    clock = Clock(device)
    bandwidth = copy_bandwidth_gbs(device, (64 << 20) if rehearsal else (1 << 30))
    flush = l2_flusher(device)
    repeat = 3 if rehearsal else 30
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    print(f"torch {torch.__version__}, {name}, measured copy bandwidth {bandwidth:.0f} GB/s "
          f"(read + write of a {'64 MiB' if rehearsal else '1 GiB'} buffer), {repeat} calls per figure")
    _emit(results, {"kind": "bandwidth", "device": name, "copy_gbs": bandwidth})
    header = ["layer", "dtype", "layout", "pass", "graph warm µs", "graph cold µs", "eager warm µs",
              "eager cold µs", "floor µs", "% of floor (graph cold)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    dtypes = ("float32",) if rehearsal else DTYPES  # the CPU kernels compute in float32 or float64
    for net, (N, T, layers, scale) in (REHEARSAL_LAYERS if rehearsal else LAYERS).items():
        for C, S in layers:
            for dtype in dtypes:
                for layout in LAYOUTS:
                    case = {"layer": f"{net} C={C} {S}²", "N": N, "T": T, "dtype": dtype, "layout": layout}
                    try:
                        calls = _layer_calls(device, N, C, T, S, getattr(torch, dtype), layout, scale)
                    except Exception as exc:  # noqa: BLE001 (reported, and the next case runs)
                        _report_error(results, {**case, "pass": "setup"}, exc)
                        continue
                    for pass_, call in calls.items():
                        row = {"kind": "kernel", **case, "pass": pass_}
                        try:
                            row.update(_time_call(call, device, clock, repeat, flush))
                        except Exception as exc:  # noqa: BLE001
                            _report_error(results, row, exc)
                            continue
                        element = getattr(torch, dtype).itemsize
                        row["floor_ms"] = min_bytes(N, C, T, S, S, element, pass_) / (bandwidth * 1e9) * 1e3
                        cold = row["eager_cold_ms"] if row["graph_cold_ms"] is None else row["graph_cold_ms"]
                        row["floor_pct"] = 100 * row["floor_ms"] / cold
                        _emit(results, row)
                        us = [None if row[k] is None else row[k] * 1e3 for k in
                              ("graph_warm_ms", "graph_cold_ms", "eager_warm_ms", "eager_cold_ms", "floor_ms")]
                        print(f"| {row['layer']} | {dtype} | {layout} | {pass_} | "
                              + " | ".join(_fmt(v) for v in us) + f" | {row['floor_pct']:.0f} % |", flush=True)
                    del calls
                    if device == "cuda":
                        torch.cuda.empty_cache()


def _layer_calls(device: str, N: int, C: int, T: int, S: int, dtype, layout: str, scale: float) -> Dict[str, Callable]:
    """The fused forward (the Python wrapper the blocks call) and its backward op with each gradient mask."""
    import torch
    import sifa.ops as ops

    x = torch.randn(N, C, T, S, S, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d)
    off = (torch.randn(N, 2 * K * K, T, S, S, device=device) * scale).to(dtype)
    w = torch.full((C, T, K, K), 1.0 / C, device=device, dtype=dtype)
    out, scores = torch.ops.sifa.sifa_attention(x, off, w, [1, 1], [1, 1], [1, 1], 1)
    grad = torch.randn_like(out)
    calls = {"fwd": lambda: ops.sifa_attention(x, off, w)}
    for pass_, mask in PASSES.items():
        if mask is not None:
            calls[pass_] = (lambda m=mask: torch.ops.sifa._sifa_attention_backward(
                grad, None, x, off, w, scores, [1, 1], [1, 1], [1, 1], 1, m))
    return calls


def _time_call(call: Callable, device: str, clock: Clock, repeat: int, flush: Callable) -> dict:
    """Warm and cold times of ``call`` eager and, on a GPU, replayed from a CUDA graph (None where capture
    fails: the error is printed, the eager figures stand)."""
    import torch

    with torch.no_grad():
        call()  # warm-up; the first error, if any, names the case
        graph = None
        if device == "cuda":
            try:
                graph = capture_graph(call)
            except Exception as exc:  # noqa: BLE001
                print(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); eager figures only", flush=True)
        return {"graph_warm_ms": None if graph is None else time_ms(graph.replay, clock, repeat),
                "graph_cold_ms": None if graph is None else time_ms(graph.replay, clock, repeat, flush),
                "eager_warm_ms": time_ms(call, clock, repeat),
                "eager_cold_ms": time_ms(call, clock, repeat, flush)}


def _report_error(results: Optional[Path], case: dict, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]
    print(f"| {case['layer']} | {case['dtype']} | {case['layout']} | {case['pass']} | error: {message} |", flush=True)
    _emit(results, {**case, "kind": "kernel_error", "error": message})


def require_cuda_kernels() -> None:
    import torch
    import sifa.ops as ops

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible")
    if ops.backend() != "extension" or not torch._C._dispatch_has_kernel_for_dispatch_key("sifa::sifa_attention",
                                                                                          "CUDA"):
        sys.exit("the SIFA extension has no CUDA kernels (did the build stage succeed?)")


def run_network(results: Optional[Path], rehearsal: bool) -> None:
    import torch
    from bench_models import SIZES, build
    from sifa.models import model_entry

    device = "cpu" if rehearsal else "cuda"
    if not rehearsal:
        require_cuda_kernels()
    clock = Clock(device)
    repeat, warmup = (1, 1) if rehearsal else (5, 2)
    pairs = NETWORK_PAIRS[:1] if rehearsal else NETWORK_PAIRS  # Swin-B needs 224² inputs: too slow for a rehearsal
    print(f"torch {torch.__version__}, device {device}, mean of {repeat} steps after {warmup} warm-up steps")
    header = ["network", "input", "precision", "pass", "ms", "baseline", "baseline ms", "time ratio", "peak MiB",
              "baseline peak MiB"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    # the rehearsal runs each precision and each pass once, not every combination
    combinations = [(False, "train"), (True, "inference")] if rehearsal else \
        [(amp, mode) for amp in (False, True) for mode in ("train", "inference")]
    for label, net, base_label, base in pairs:
        size = (1, 8, 32) if rehearsal else SIZES[device][model_entry(net).family]
        for amp, mode in combinations:
            figures = []
            for name in (net, base):
                step = build(name, device, mode, amp, size)
                for _ in range(warmup):
                    step()
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                ms = time_ms(step, clock, repeat)
                peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
                figures.append((ms, peak))
                del step
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            (ms, peak), (base_ms, base_peak) = figures
            row = {"kind": "network", "network": label, "baseline": base_label,
                   "input": "{}×{}×{}²".format(*size), "precision": "bf16 autocast" if amp else "fp32",
                   "pass": mode, "ms": ms, "baseline_ms": base_ms, "ratio": ms / base_ms,
                   "peak_mib": peak, "baseline_peak_mib": base_peak}
            _emit(results, row)
            print(f"| {label} | {row['input']} | {row['precision']} | {mode} | {ms:.1f} | {base_label} | "
                  f"{base_ms:.1f} | {row['ratio']:.2f}× | {_fmt(peak, 0)} | {_fmt(base_peak, 0)} |", flush=True)


def profile_target() -> None:
    """What ncu profiles: the fused forward and the networks' backward (its per-pixel pass and its scatter) at
    SIFA-Net's C=256 14² layer."""
    import torch
    import sifa.ops as ops

    require_cuda_kernels()
    N, T, S, C = 8, 4, 14, 256
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(N, C, T, S, S, device="cuda", dtype=dtype)
        off = (torch.randn(N, 2 * K * K, T, S, S, device="cuda") * 2).to(dtype)
        w = torch.full((C, T, K, K), 1.0 / C, device="cuda", dtype=dtype)
        out, scores = torch.ops.sifa.sifa_attention(x, off, w, [1, 1], [1, 1], [1, 1], 1)
        torch.ops.sifa._sifa_attention_backward(torch.randn_like(out), None, x, off, w, scores, [1, 1], [1, 1],
                                                [1, 1], 1, PASSES["bwd input+offset"])
        ops.sifa_attention(x, off, w)
    torch.cuda.synchronize()


def sanitize_target() -> None:
    """What compute-sanitizer checks: every op and backward on one small case per kernel family (the general
    kernels: C=12 with 3 groups; the slice kernels: one group, C=64), float32 and float16."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kernel_catalogue import CATALOGUE, make_inputs, run_ops

    require_cuda_kernels()
    for name in ("C=12 G=3", "slice S=2"):
        for dtype in (torch.float32, torch.float16):
            tensors, geo = make_inputs(CATALOGUE[name], dtype)
            run_ops(torch.ops.sifa, [t.cuda() for t in tensors], geo)
    torch.cuda.synchronize()


def preflight() -> None:
    import torch

    print(f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} cores")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                  f"{p.total_memory / 2**30:.1f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
    else:
        print("GPU: none visible to torch")
    missing = [m for m in PACKAGES if importlib.util.find_spec(m) is None]
    print("missing packages:", ", ".join(missing) or "none")
    for tool in ("nvcc", "ncu", "compute-sanitizer", "ninja"):
        print(f"{tool}: {shutil.which(tool) or 'not found'}")


# --- summary.md ---------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> List[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short when a stage was killed
            pass
    return rows


def test_counts(junit: Path) -> Optional[Dict[str, float]]:
    """passed / failures / errors / skipped, seconds and the failed tests (name: message) from a pytest
    --junitxml report."""
    if not junit.exists():
        return None
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["time"] = sum(float(s.get("time", 0)) for s in suites)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = []
    for case in root.iter("testcase"):
        for problem in case:
            if problem.tag in ("failure", "error"):
                message = (problem.get("message") or problem.tag).strip().splitlines() or [problem.tag]
                counts["failed"].append(f"{case.get('name')}: {message[0][:160]}".replace("|", "/"))
    return counts


def write_summary(work: Path, out: Path) -> None:
    stages = [line.split("\t") for line in (work / "stages.tsv").read_text().splitlines()] \
        if (work / "stages.tsv").exists() else []
    rows = _read_jsonl(work / "results.jsonl")
    lines = ["# gpu_check summary", ""]
    preflight_log = out / "preflight.log"
    if preflight_log.exists():
        lines += ["    " + line for line in preflight_log.read_text().splitlines() if not line.startswith("== ")] + [""]
    lines += ["| stage | status | seconds | log |", "|---|---|---|---|"]
    lines += [f"| {s[0]} | {s[1]} | {s[2]} | {s[3] if len(s) > 3 else ''} |" for s in stages]
    lines += ["", "| what | shape / input | measured | floor / baseline | ratio |", "|---|---|---|---|---|"]
    counts = test_counts(out / "tests.xml")
    if counts is not None:
        lines.append(f"| CUDA tests (tests.xml) | test_ops_cuda.py, test_ops.py -k cuda | {counts['passed']} passed, "
                     f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped in "
                     f"{counts['time']:.0f} s | | |")
        lines += [f"| failed | {name} | | | |" for name in counts["failed"][:20]]
    for row in rows:
        if row["kind"] == "bandwidth":
            lines.append(f"| device-to-device copy | {row['device']} | {row['copy_gbs']:.0f} GB/s | | |")
        elif row["kind"] == "kernel":
            best = "graph" if row["graph_cold_ms"] is not None else "eager"
            measured = (f"{row[best + '_cold_ms'] * 1e3:.1f} µs cold ({best}; warm {row[best + '_warm_ms'] * 1e3:.1f}"
                        + (f", eager cold {row['eager_cold_ms'] * 1e3:.1f})" if best == "graph" else ")"))
            lines.append(f"| {row['pass']} {row['dtype']} {row['layout']} | {row['layer']} N={row['N']} T={row['T']} | "
                         f"{measured} | {row['floor_ms'] * 1e3:.1f} µs floor | {row['floor_pct']:.0f} % of floor |")
        elif row["kind"] == "kernel_error":
            lines.append(f"| {row['pass']} {row['dtype']} {row['layout']} | {row['layer']} N={row['N']} T={row['T']} | "
                         f"error: {row['error'].replace('|', '/')} | | |")
        elif row["kind"] == "network":
            lines.append(f"| {row['network']} {row['pass']} {row['precision']} | {row['input']} | {row['ms']:.1f} ms | "
                         f"{row['baseline']} {row['baseline_ms']:.1f} ms | {row['ratio']:.2f}× |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("kernels", "network"):
        p = sub.add_parser(name)
        p.add_argument("results", type=Path, help="JSON lines file the rows are appended to")
        p.add_argument("--rehearsal", action="store_true", help="on the CPU at tiny sizes (proves the script only)")
    for name in ("preflight", "profile-target", "sanitize-target"):
        sub.add_parser(name)
    p = sub.add_parser("summary")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if getattr(args, "rehearsal", False):  # one thread: cheap and steady on a shared CI machine
        import torch
        torch.set_num_threads(1)
    if args.command == "kernels":
        run_kernels(args.results, args.rehearsal)
    elif args.command == "network":
        run_network(args.results, args.rehearsal)
    elif args.command == "preflight":
        preflight()
    elif args.command == "profile-target":
        profile_target()
    elif args.command == "sanitize-target":
        sanitize_target()
    else:
        write_summary(args.work, args.out)


if __name__ == "__main__":
    main()
