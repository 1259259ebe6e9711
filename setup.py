"""Builds the SIFA kernels (cuda_sifa/) into sifa/_C: CPU always, CUDA when a GPU is visible.

As torchvision and mmcv decide: the CUDA kernels are built when nvcc is found and a CUDA device is
visible, or when FORCE_CUDA=1 (a machine without a GPU building for one; needs nvcc); FORCE_CUDA=0
builds the CPU kernels only. TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: the visible
GPU's, else — FORCE_CUDA=1 without a GPU — a list covering Turing to Hopper); CUDA_HOME the toolkit.
"""
import glob
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "cuda_sifa" / "csrc"
# sifa-<script> runs sifa.tools.<tool>'s main() (through sifa/tools/console.py); python -m sifa.tools.<tool> too
CONSOLE_SCRIPTS = {"train": "train", "predict": "predict", "prepare": "prepare", "export": "export",
                   "export-weights": "export_weights", "visualize": "visualize", "plot": "plot_log",
                   "complexity": "complexity"}


def _real_cuda_home():
    """The toolkit that really holds nvcc: torch's guess can be a bare /usr/local or a wrapper."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return str(Path(candidate).resolve())
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = Path(nvcc).resolve()
    if nvcc.parent.name == "bin" and (nvcc.parent.parent / "include" / "cuda_runtime.h").exists():
        return str(nvcc.parent.parent)
    # a wrapper script (e.g. /usr/local/bin/nvcc -> exec /usr/local/cuda-X/bin/nvcc): find the toolkit it runs
    for root in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if (Path(root) / "bin" / "nvcc").is_file() and (Path(root) / "include" / "cuda_runtime.h").exists():
            return str(Path(root).resolve())
    return None


def _want_cuda(cuda_home):
    force = os.environ.get("FORCE_CUDA", "").strip()
    if force == "0":
        return False
    if force == "1":
        if cuda_home is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit with nvcc was found; set CUDA_HOME")
        return True
    if cuda_home is None:
        return False
    import torch
    return torch.cuda.is_available()


def _pip_nvidia_includes():
    """Header dirs of the pip `nvidia` packages installed with torch (cusparse.h, cublas.h, ...),
    which a minimal toolkit lacks but torch's CUDA headers include."""
    import site
    dirs = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "include"))
    return sorted(set(dirs))


def _extension():
    cuda_home = _real_cuda_home()
    use_cuda = _want_cuda(cuda_home)
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it
    import torch
    from torch.utils import cpp_extension

    if use_cuda:
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():  # the visible GPUs' architectures (torch's default adds PTX: a second compile)
                capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
                os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = "7.5;8.0;8.6;8.9;9.0+PTX"
    sources = [str(CSRC / "ops" / "sifa.cpp"), str(CSRC / "ops" / "autocast" / "sifa_kernel.cpp"),
               str(CSRC / "ops" / "cpu" / "sifa_kernel.cpp")]
    cxx, link = ["-O3", "-fopenmp-simd"], []
    if torch.backends.openmp.is_available():
        # torch's at::parallel_for is then OpenMP's, inlined into the kernels: compiled without -fopenmp its
        # pragma is ignored and the CPU kernels run on one thread (linked, libgomp is the one torch loaded)
        cxx, link = cxx + ["-fopenmp"], ["-fopenmp"]
    if use_cuda:
        sources.append(str(CSRC / "ops" / "cuda" / "sifa_kernel.cu"))
        nvcc = ["-O3", "--expt-relaxed-constexpr"]
        nvcc += [f"-I{d}" for d in _pip_nvidia_includes()]
        cxx += [f"-I{d}" for d in _pip_nvidia_includes()]
        return cpp_extension.CUDAExtension("sifa._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                                           extra_link_args=link)
    return cpp_extension.CppExtension("sifa._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class BuildExt(base):
        """An editable install (PEP 660) would compile in a fresh temporary folder each time; compile
        in the repository's build/temp.* instead, as `bash make.sh` and `pip install .` do, so that
        ninja recompiles only what changed (it also notices changed flags, e.g. FORCE_CUDA)."""

        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                import sysconfig
                self.build_temp = str(ROOT / "build" / f"temp.{sysconfig.get_platform()}-"
                                                      f"{sys.implementation.cache_tag}")

    return BuildExt


def _version():
    """sifa.__version__, read without importing the package (whose extension is what is being built)."""
    text = (ROOT / "sifa" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def main():
    setup(
        name="sifa",
        version=_version(),
        description="Stand-Alone Inter-Frame Attention in Video Models (SIFA-Net, SIFA-Transformer)",
        packages=find_packages(include=["sifa", "sifa.*"]),
        package_data={"sifa": ["base_config/*.yml"]},
        python_requires=">=3.10",
        ext_modules=[_extension()],
        cmdclass={"build_ext": _build_ext_class()},
        entry_points={"console_scripts": [f"sifa-{script} = sifa.tools.console:{function}"
                                          for script, function in CONSOLE_SCRIPTS.items()]},
    )


if __name__ == "__main__":
    main()
