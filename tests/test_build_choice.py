"""setup.py's choice of kernels, as torchvision and mmcv choose: CUDA when a GPU is visible or
FORCE_CUDA=1, never with FORCE_CUDA=0; CPU only on a machine with nvcc and no GPU."""
import importlib.util

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("sifa_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


@pytest.mark.parametrize("force,toolkit,gpu,want", [
    ("", "/usr/local/cuda", False, False),  # nvcc, no GPU (a laptop, a login node): CPU kernels only
    ("", "/usr/local/cuda", True, True),
    ("", None, True, False),                # a GPU but no toolkit to compile for it
    ("1", "/usr/local/cuda", False, True),  # building for a GPU elsewhere
    ("0", "/usr/local/cuda", True, False),
])
def test_cuda_kernels_built_when(setup_py, monkeypatch, force, toolkit, gpu, want):
    monkeypatch.setenv("FORCE_CUDA", force)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert setup_py._want_cuda(toolkit) is want


def test_force_cuda_without_toolkit_names_the_problem(setup_py, monkeypatch):
    monkeypatch.setenv("FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="no CUDA toolkit"):
        setup_py._want_cuda(None)
