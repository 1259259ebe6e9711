import os
import platform

import pytest

from helpers import emulation_skip_reason

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "emulation: CUDA kernels run on the CPU under the warp emulator (tests/emulation)")
    config.addinivalue_line("markers", "packaging: pip installs the package into a venv and uses it outside the "
                                       "repository (tests/test_packaging.py, a few minutes)")
    config.addinivalue_line("markers", "slow: left out of the quick subset, python -m pytest -m \"not slow\" tests "
                                       "(README)")


def pytest_collection_modifyitems(config, items):
    reason = emulation_skip_reason(platform.machine())
    if reason is None:
        return
    for item in items:
        if "emulation" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic data set of 3 classes, 4 training and 2 validation videos each, 8 frames of 32²."""
    from sifa.data import synthetic  # needs OpenCV, which the operator tests in a minimal environment lack

    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(str(root), num_classes=3, videos_per_class=4, val_videos_per_class=2, frames=8,
                              size=32, seed=0)
