"""Builds the warp emulator: the CUDA kernel file compiled for the host (see shim/warp_emulator.h).

The device code is compiled unmodified; only the two CUDA-only syntaxes are rewritten —
``kernel<<<grid, block, shmem, stream>>>(args)`` into ``sifa_emu::launch(grid, block, shmem, stream)(kernel, args)``
and ``extern __shared__ T name[];`` into a pointer to the block's emulated shared memory — with the
line numbers kept, so that reports name lines of the real file.

Sanitizers: the kernel file is always built with UndefinedBehaviorSanitizer (out-of-bounds shifts,
float→int overflow such as a NaN converted to an index, misaligned typed access) and, by default,
with -fsanitize=thread's instrumentation, whose access hooks the emulator's runtime implements to check
shared memory for races and every aligned access for its alignment. ``sanitizer="address"`` builds with
AddressSanitizer instead (the two instrumentations exclude each other): out-of-bounds reads and writes
of any tensor, checked in CI by running the suite with libasan preloaded.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
from torch.utils import cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNEL = ROOT / "cuda_sifa" / "csrc" / "ops" / "cuda" / "sifa_kernel.cu"
BUILD = ROOT / "build" / "emulation"

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}]*?>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\((\d+)\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\s*\[\s*\]\s*;")


_SCALAR_TYPES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16"}


def host_source(cuda_source: str) -> str:
    """The kernel file with its launch and dynamic shared memory syntax made host C++."""

    def launch(m: re.Match) -> str:
        return f"::sifa_emu::launch({m.group(2)})({m.group(1)}, " + "\n" * m.group(0).count("\n")

    def shared(m: re.Match) -> str:
        align, type_, name = m.group(1) or "1", m.group(2), m.group(3)
        return f"{type_}* const {name} = static_cast<{type_}*>(::sifa_emu::dynamic_shared({align}));"

    out, launches = _LAUNCH.subn(launch, cuda_source)
    out, shared_decls = _SHARED.subn(shared, out)
    if "<<<" in out or "__shared__" in out:
        raise RuntimeError("the warp emulator cannot rewrite a launch or shared declaration of the kernel file")
    return out


def _sanitizer_flags(sanitizer: str) -> tuple[list[str], list[str], list[str]]:
    """(kernel file flags, runtime flags, link flags)."""
    ub = ["-fsanitize=undefined,float-cast-overflow", "-fno-sanitize=vptr"]
    if sanitizer == "address":
        return ub + ["-fsanitize=address"], ["-fsanitize=address"], ["-fsanitize=address,undefined"]
    if sanitizer == "thread-hooks":
        return ub + ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"], [], ["-fsanitize=undefined"]
    raise ValueError(f"unknown sanitizer {sanitizer!r}")


def library_name(tag: str) -> str:
    """The op library a build registers: ``sifa_emulated``, or ``sifa_emulated_<tag>`` for a variant."""
    return "sifa_emulated" if tag == "kernels" else "sifa_emulated_" + re.sub(r"\W", "_", tag)


def build(source: Optional[str] = None, sanitizer: str = "thread-hooks", tag: str = "kernels",
          arch: int = 900, dtype: Optional[torch.dtype] = None, defines: tuple[str, ...] = ()) -> Path:
    """Compiles (or reuses) the emulated kernels as op library ``library_name(tag)``; `source`
    replaces the kernel file's text (the deliberately broken variants of the tests); `arch` the GPU
    architecture whose code paths run (SIFA_EMULATED_ARCH: 800 takes the scalar global atomics of
    GPUs before sm_90); `dtype` the one dtype a variant is built for (default: all four); `defines`
    macros of the kernel file's test-only switches (SIFA_INDEX_TYPE=int64_t: only the 64-bit index
    path, taken at every size; =int32_t: only the 32-bit one, half the kernels to compile).
    Returns the shared library's path."""
    source = KERNEL.read_text() if source is None else source
    kernel_flags, runtime_flags, link_flags = _sanitizer_flags(sanitizer)
    includes = [f"-I{HERE / 'shim'}", f"-I{KERNEL.parent}"] + [f"-I{p}" for p in cpp_extension.include_paths()]
    common = ["-std=c++20", "-fPIC", "-O1", "-g", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
              "-Wno-unused-variable", f"-DSIFA_EMULATED_ARCH={arch}"] + includes
    if dtype is not None:
        common.append(f"-DSIFA_EMULATED_DTYPE=at::ScalarType::{_SCALAR_TYPES[dtype]}")
    common += [f"-D{d}" for d in defines]
    inputs = [source, (HERE / "shim" / "warp_emulator.h").read_text(), (HERE / "runtime.cpp").read_text(),
              (HERE / "emulated_ops.cpp").read_text(), (KERNEL.parent.parent / "sifa.h").read_text(),
              (KERNEL.parent.parent / "sifa_math.h").read_text(), " ".join(common + kernel_flags + link_flags), tag,
              torch.__version__] + [p.read_text() for p in sorted((HERE / "shim").rglob("*.h*"))]
    key = hashlib.sha1("\0".join(inputs).encode()).hexdigest()[:16]
    out_dir = BUILD / f"{tag}-{sanitizer}-{key}"
    library = out_dir / "sifa_emulated.so"
    if library.exists():
        return library
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel_cpp = out_dir / "sifa_kernel_host.cpp"
    kernel_cpp.write_text(f'#line 1 "{KERNEL}"\n' + host_source(source))
    jobs = [
        ["g++", *common, *kernel_flags, "-include", "warp_emulator.h", f'-DSIFA_KERNEL_SOURCE="{kernel_cpp}"',
         f"-DSIFA_EMULATED_LIBRARY={library_name(tag)}",
         "-c", str(HERE / "emulated_ops.cpp"), "-o", str(out_dir / "emulated_ops.o")],
        ["g++", *common, *runtime_flags, "-O2", "-c", str(HERE / "runtime.cpp"), "-o", str(out_dir / "runtime.o")],
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for cmd in jobs]
    for cmd, proc in zip(jobs, procs):
        log = proc.communicate()[0]
        if proc.returncode:
            raise RuntimeError(f"warp emulator build failed:\n{' '.join(cmd)}\n{log[-20000:]}")
    torch_lib = Path(torch.__file__).parent / "lib"
    link = ["g++", "-shared", "-Wl,-Bsymbolic", *link_flags, str(out_dir / "emulated_ops.o"), str(out_dir / "runtime.o"),
            f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}", "-o",
            str(out_dir / "tmp.so")]
    result = subprocess.run(link, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"warp emulator link failed:\n{' '.join(link)}\n{result.stdout}{result.stderr}")
    os.replace(out_dir / "tmp.so", library)
    return library


if __name__ == "__main__":
    print(build(sanitizer=sys.argv[1] if len(sys.argv) > 1 else "thread-hooks"))
