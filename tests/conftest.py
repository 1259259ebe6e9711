import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "emulation: CUDA kernels run on the CPU under the warp emulator (tests/emulation)")
    config.addinivalue_line("markers", "packaging: pip installs the package into a venv and uses it outside the "
                                       "repository (tests/test_packaging.py, a few minutes)")
