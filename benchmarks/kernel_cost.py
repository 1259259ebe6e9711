"""The CUDA kernels' cost as the compiler sees it, no GPU needed: per kernel and architecture, the
registers and spills `ptxas -v` reports and, from the SASS (`cuobjdump -sass`), the instruction
count and the instructions that move data: global loads/stores by width, atomics (those on floats
in global memory apart), shared-memory accesses, shuffles, branches around loads (conditional
forward branches that skip a global load), and 64-bit integer multiplies (address arithmetic). Then, per SIFA-Net shape (N=8, T=4, 3×3
taps: C=128 at 28², 256 at 14², 512 at 7²) and SIFA-Swin's widest (768 at 14², 1024 and 1536 at
7²), two floors of the fused op's passes on an H100 SXM
(3.35 TB/s, 132 SMs × 4 schedulers at 1.98 GHz): the memory floor (every input read once, every
output written once) and the issue floor (warp-instructions / issue rate), the warp-instructions
per pixel read from the SASS loops of the 3×3 kernels with 32-bit indices, the path of every shape
here (the pixel loop's body, plus the tap loop's body for each further tap where it is not unrolled)
times the warps' pixels (forward and first backward pass: one per pixel and each of the pixel's W
warps, a forward warp's loop body shared by its P pixels, C = 32·S·W/P as the kernel file's
ForwardShapes (ForwardShapes2Byte for half and bfloat16) and BackwardShapes map it; the backward's
scatter: one per pixel and channel slice) — an estimate that leaves out stalls, the per-block
prologues and the scatter's final sum.

    python benchmarks/kernel_cost.py [--arch 80 90] [--rev GIT_REV] [--dtype float Half] [--filter fused]

`--rev` measures the kernel file of another commit (e.g. the one before a change). cuobjdump and
nvdisasm come with a full CUDA toolkit; where they are missing,
`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` provides them.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "cuda_sifa" / "csrc" / "ops"
sys.path.insert(0, str(ROOT))

HBM_BYTES_PER_S = 3.35e12  # H100 SXM
WARP_INSTRUCTIONS_PER_S = 132 * 4 * 1.98e9  # SMs × warp schedulers × boost clock
SIFA_NET_SHAPES = [(8, 128, 4, 28, 28), (8, 256, 4, 14, 14), (8, 512, 4, 7, 7)]  # N, C, T, H, W; 3×3 taps
SWIN_WIDE_SHAPES = [(8, 768, 4, 14, 14), (8, 1024, 4, 7, 7), (8, 1536, 4, 7, 7)]
TAPS = 9
ELEMENT_BYTES = {"float": 4, "Half": 2, "BFloat16": 2, "double": 8}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    import site

    for base in site.getsitepackages():
        for candidate in glob.glob(os.path.join(base, "nvidia", "*", "bin", name)):
            return candidate
    sys.exit(f"{name} not found: install a full CUDA toolkit or `pip install nvidia-cuda-{name}`")


def _sources(rev: str | None, workdir: Path) -> Path:
    """The ops folder at `rev` (or the working tree), copied to `workdir`."""
    if rev is None:
        return OPS
    out = workdir / "ops"
    for path in subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "cuda_sifa/csrc/ops"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.split():
        target = workdir / "ops" / Path(path).relative_to("cuda_sifa/csrc/ops")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                                          capture_output=True).stdout)
    return out


def _compile(ops_dir: Path, arch: int, workdir: Path) -> tuple[str, Path]:
    """ptxas's report and the object file of the kernel file for one architecture."""
    import setup  # the project's build: the real toolkit and the pip-installed CUDA headers
    from torch.utils import cpp_extension

    nvcc = Path(setup._real_cuda_home() or "/usr/local/cuda") / "bin" / "nvcc"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{d}" for d in setup._pip_nvidia_includes()]
    obj = workdir / f"sm_{arch}.o"
    cmd = [str(nvcc), "-c", "-O3", "--expt-relaxed-constexpr", "-std=c++20", "-Xptxas", "-v",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-DTORCH_API_INCLUDE_EXTENSION_H",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", *includes, str(ops_dir / "cuda" / "sifa_kernel.cu"), "-o", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    return result.stdout + result.stderr, obj


def _demangle(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    short = {}
    for mangled, full in zip(names, out):
        m = re.search(r"::(\w+_kernel)<(.*?)>\(", full)
        short[mangled] = f"{m.group(1)}<{m.group(2).replace('c10::', '')}>" if m else full
    return short


def _ptxas(log: str) -> dict[str, tuple[int, int]]:
    """Kernel -> (registers, spill bytes)."""
    out, current, spills = {}, None, 0
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = int(m.group(1)) + int(m.group(2))
        elif (m := re.search(r"Used (\d+) registers", line)) and current:
            out[current] = (int(m.group(1)), spills)
    return out


def _sass(obj: Path) -> dict[str, Counter]:
    """Kernel -> counts of its SASS instructions by kind."""
    env = {**os.environ, "NVDISASM_PATH": str(Path(_tool("nvdisasm")).parent)}
    text = subprocess.run([_tool("cuobjdump"), "-sass", str(obj)], check=True, capture_output=True, text=True,
                          env=env).stdout
    out, current, listing = {}, None, []
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            if current is not None:
                current["per pixel"], current["branches around loads"] = _per_pixel(listing), _branches_around_loads(listing)
            current, listing = out.setdefault(m.group(1), Counter()), []
        elif current is not None and (m := re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)", line)):
            op = m.group(2)
            target = re.search(r"BRA\s+`?\(?(0x[0-9a-f]+)", line) if op.startswith("BRA") else None
            predicated = bool(re.match(r"\s+/\*[0-9a-f]+\*/\s+@", line))
            listing.append((int(m.group(1), 16), op.split(".")[0], int(target.group(1), 16) if target else None,
                            predicated))
            current["instructions"] += 1
            base = op.split(".")[0]
            if base in ("LDG", "STG"):
                width = next((w for w in ("128", "64", "U16", "S16", "U8") if f".{w}" in op), "32")
                current[f"{base}.{width}"] += 1
            elif base in ("ATOMG", "RED", "ATOM", "REDG"):
                current["atomics"] += 1
                if ".F32" in op or ".F64" in op or ".F16" in op or ".BF16" in op:
                    current["float atomics"] += 1
            elif base in ("ATOMS",):
                current["shared atomics"] += 1
            elif base in ("LDS", "STS"):
                current["shared"] += 1
            elif base == "SHFL":
                current["shuffles"] += 1
            elif base in ("IMAD", "IMUL") and ".WIDE" in op:
                current["64-bit mul"] += 1
    if current is not None:
        current["per pixel"], current["branches around loads"] = _per_pixel(listing), _branches_around_loads(listing)
    return out


def _branches_around_loads(listing: list) -> int:
    """Conditional forward branches that skip a global load (a load the warp may or may not issue)."""
    return sum(1 for address, base, target, predicated in listing
               if base == "BRA" and predicated and target is not None and target > address
               and any(b == "LDG" and address < a < target for a, b, _, _ in listing))


def _per_pixel(listing: list, taps: int = TAPS) -> int:
    """Warp-instructions a warp issues per pixel, from the loops of the SASS (backward branches):
    the pixel loop's body (the outermost loop holding the corner reads: shuffles in the forward and
    the backward's first pass, shared loads and stores in the scatter) plus, where the tap loop is
    not unrolled, its body once more per further tap (the innermost loop holding the shuffles)."""
    # the code past the first unconditional EXIT is the shuffles' fallback for diverged warps
    end = next((i for i, (_, base, _, predicated) in enumerate(listing) if base == "EXIT" and not predicated),
               len(listing))
    listing = listing[:end + 1]
    if len(listing) < 2:
        return len(listing)
    step = listing[1][0] - listing[0][0]
    loops = [(target, address) for address, _, target, _ in listing if target is not None and target <= address]

    def holds(loop, kinds):
        return {base for address, base, _, _ in listing if loop[0] <= address <= loop[1]} >= kinds

    def size(loop):
        return (loop[1] - loop[0]) // step + 1

    kinds = {"SHFL"} if any(base == "SHFL" for _, base, _, _ in listing) else {"LDS", "STS"}
    holding = sorted((loop for loop in loops if holds(loop, kinds)), key=size)
    if not holding:
        return len(listing)
    if kinds == {"SHFL"}:  # forward, backward first pass: the grid-stride loop over pixels
        pixel, tap = holding[-1], holding[0]
        return size(pixel) + (taps - 1) * size(tap) if tap != pixel else size(pixel)
    # the scatter: the loop over the frame's pixels (inside the loop over blocks' items)
    inner = [loop for loop in holding if loop != holding[-1]]
    return size(inner[-1] if inner else holding[-1])




def _kernel(counts: dict[str, int], *names: str) -> int | None:
    """The warp-instructions per pixel of the first of `names` compiled (kernel<args>), if any."""
    return next((counts[n] for n in names if n in counts), None)


def _slice_shapes(ops_dir: Path) -> dict[str, dict[int, tuple[str, int, int]]]:
    """Per pass ("Forward", "Backward", and "Forward2Byte" where the kernel file maps 2-byte dtypes'
    forward apart), C -> (the kernel name's shape arguments "S, W[, P], ", W warps per pixel, P pixels
    per warp) of the kernel file's slice kernels, C = 32·S·W/P; empty for a kernel file from before
    them (one warp per pixel, S = C / 32)."""
    text = (ops_dir / "cuda" / "sifa_kernel.cu").read_text()
    pixels_per_warp = "int S_, int W_, int P_" in text  # the forward's third shape argument, P
    out = {}
    for name, suffix, body in re.findall(r"using (Forward|Backward)Shapes(2Byte)? = std::tuple<(.*?)>;", text, re.S):
        shapes = out[name + suffix] = {}
        for S, W, P in re.findall(r"SliceShape<(\d+), (\d+)(?:, (\d+))?>", body):
            S, W, P = int(S), int(W), int(P or 1)
            args = f"{S}, {W}, {P}, " if pixels_per_warp and name.startswith("Forward") else f"{S}, {W}, "
            shapes[32 * S * W // P] = (args, W, P)
    return out


def _floors(counts: dict[str, int], arch: int, dtypes: list[str], shapes: dict[str, dict[int, tuple[int, int]]]) -> None:
    """Memory and issue floors of the fused op's forward and backward (input and offset gradients)."""
    print(f"floors on an H100 SXM from the sm_{arch} SASS (3×3 taps, one group):")
    print("| pass | dtype | N×C×T×H×W | memory floor MB | memory floor µs | warp-instr. per pixel | issue floor µs | "
          "issue / memory |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        e = ELEMENT_BYTES[dtype]
        for N, C, T, H, W in SIFA_NET_SHAPES + SWIN_WIDE_SHAPES:
            pixels = N * T * H * W
            S = C // 32  # the names of a kernel file from before W
            forward = "Forward2Byte" if e == 2 and "Forward2Byte" in shapes else "Forward"
            (fwd_new, fwd_warps, fwd_pixels), (bwd_new, bwd_warps, _) = (
                shapes.get(p, {}).get(C, ("", 1, 1)) for p in (forward, "Backward"))
            feature, offsets, scores = pixels * C, pixels * 2 * TAPS, pixels * TAPS
            # forward: x read, out written, offsets read, scores written (float)
            fwd_bytes = 2 * feature * e + offsets * e + scores * 4
            # the kernels compiled for 3×3 taps and 32-bit indices (the path of every shape here), else
            # (an older kernel file) those for 3×3 taps, or for any K
            fwd = _kernel(counts, f"forward_slice_kernel<{dtype}, {fwd_new}{TAPS}, int>",
                          f"forward_slice_kernel<{dtype}, {fwd_new}{TAPS}>",
                          f"forward_slice_kernel<{dtype}, {S}, {TAPS}>", f"forward_slice_kernel<{dtype}, {S}>")
            # backward: x, grad_out, offsets, scores read; float input gradient and offset gradient written
            bwd_bytes = 2 * feature * e + feature * 4 + 2 * offsets * e + scores * 4
            first = _kernel(counts, f"backward_slice_kernel<{dtype}, {bwd_new}{TAPS}, int>",
                            f"backward_slice_kernel<{dtype}, {bwd_new}{TAPS}>",
                            f"backward_slice_kernel<{dtype}, {S}, {TAPS}>", f"backward_slice_kernel<{dtype}, {S}>")
            fwd = None if fwd is None else fwd * fwd_warps // fwd_pixels
            first = None if first is None else first * bwd_warps
            s = 2 if C % 64 == 0 else 1
            scatter = _kernel(counts, f"scatter_slice_kernel<{dtype}, {s}, {TAPS}, int>",
                              f"scatter_slice_kernel<{dtype}, {s}, {TAPS}>")  # none before the two passes
            bwd = None if first is None else first + (scatter or 0) * C // (32 * s)
            for name, nbytes, per_pixel in (("forward", fwd_bytes, fwd), ("backward", bwd_bytes, bwd)):
                mem_us = nbytes / HBM_BYTES_PER_S * 1e6
                if per_pixel is None:
                    issue = ratio = "n/a"
                else:
                    issue_us = pixels * per_pixel / WARP_INSTRUCTIONS_PER_S * 1e6
                    issue, ratio = f"{issue_us:.1f}", f"{issue_us / mem_us:.2f}"
                print(f"| {name} | {dtype} | {N}×{C}×{T}×{H}×{W} | {nbytes / 1e6:.1f} | {mem_us:.1f} | "
                      f"{per_pixel if per_pixel is not None else 'n/a'} | {issue} | {ratio} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--rev", help="git revision whose kernel file to measure (default: the working tree)")
    parser.add_argument("--dtype", nargs="+", default=["float", "Half"])
    parser.add_argument("--filter", default="fused", help="'fused': the kernels the fused op runs; 'all'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ops_dir = _sources(args.rev, Path(tmp))
        print(f"kernel file: {args.rev or 'working tree'}")
        columns = ["kernel", "arch", "registers", "spill B", "SASS", "LDG.32", "LDG.64", "LDG.128", "LDG.U16",
                   "STG", "atomics", "float atomics (global)", "shared", "shared atomics", "shuffles", "branches around loads",
                   "64-bit mul", "warp-instr. per pixel"]
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        counts = {}
        for arch in args.arch:
            log, obj = _compile(ops_dir, arch, Path(tmp))
            regs, sass = _ptxas(log), _sass(obj)
            names = _demangle(sorted(regs))
            counts[arch] = {names[m]: sass.get(m, Counter())["per pixel"] for m in regs}
            for mangled in sorted(regs, key=lambda m: names[m]):
                name = names[mangled]
                if not any(f"<{d}," in name for d in args.dtype):
                    continue
                if args.filter == "fused" and "slice" not in name and "true, true" not in name:
                    continue
                c = sass.get(mangled, Counter())
                stg = sum(v for k, v in c.items() if k.startswith("STG"))
                row = [name, f"sm_{arch}", *regs[mangled], c["instructions"], c["LDG.32"], c["LDG.64"], c["LDG.128"],
                       c["LDG.U16"], stg, c["atomics"], c["float atomics"], c["shared"], c["shared atomics"],
                       c["shuffles"], c["branches around loads"], c["64-bit mul"], c["per pixel"]]
                print("| " + " | ".join(str(v) for v in row) + " |", flush=True)
        print()
        _floors(counts[max(counts)], max(counts), args.dtype, _slice_shapes(ops_dir))


if __name__ == "__main__":
    main()
