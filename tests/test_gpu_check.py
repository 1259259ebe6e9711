"""The GPU tooling of benchmarks/ without a GPU: device properties read with fallbacks."""
import sys
from types import SimpleNamespace

import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402


def test_peak_bandwidth_from_properties_or_none(monkeypatch):
    # H100 SXM: 2619 MHz HBM3 clock on a 5120-bit bus -> 2·2.619e9·5120/8 = 3352 GB/s
    props = SimpleNamespace(memory_clock_rate=2_619_000, memory_bus_width=5120)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert abs(harness.peak_bandwidth_gbs() - 3352.3) < 0.1
    # a PyTorch whose device properties lack the memory clock and bus width (bench_ops died there)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(name="GPU"))
    assert harness.peak_bandwidth_gbs() is None


def test_copy_bandwidth_is_positive_and_finite():
    gbs = harness.copy_bandwidth_gbs("cpu", nbytes=8 << 20, repeat=3)
    assert 0 < gbs < 1e5
