"""The GPU tooling of benchmarks/ without a GPU: device properties read with fallbacks, the memory
floor, summary.md, and benchmarks/gpu_check.sh rehearsed on the CPU as CI runs it."""
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from helpers import REPO_ROOT as ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
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

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
FILES = {"summary.md", "preflight.log", "build.log", "tests.log", "tests.xml", "kernels.log", "network.log",
         "tools.log"}


def test_min_bytes_hand_computed():
    # N=1 C=32 T=2 6²: features 1·32·2·36 = 2304, offsets 18·72 = 1296, scores 9·72 = 648 elements
    assert gpu_check.min_bytes(1, 32, 2, 6, 6, 4, "fwd") == 4 * (2 * 2304 + 1296 + 648)
    assert gpu_check.min_bytes(1, 32, 2, 6, 6, 4, "bwd offset") == 4 * (2 * 2304 + 2 * 1296 + 648)
    assert gpu_check.min_bytes(1, 32, 2, 6, 6, 4, "bwd input+offset") == 4 * (3 * 2304 + 2 * 1296 + 648)
    # 16-bit features keep float32 scores
    assert gpu_check.min_bytes(1, 32, 2, 6, 6, 2, "fwd") == 2 * (2 * 2304 + 1296) + 4 * 648


def test_summary_from_stages_rows_and_test_report(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "stages.tsv").write_text("build\tok\t95.2\tbuild.log\nkernels\ttimed out after 90 s\t90.1\tkernels.log\n")
    rows = [{"kind": "bandwidth", "device": "GPU X", "copy_gbs": 4000.0},
            {"kind": "kernel", "layer": "SIFA-Net C=256 14²", "N": 8, "T": 4, "dtype": "bfloat16",
             "layout": "contiguous", "pass": "fwd", "graph_warm_ms": 0.01, "graph_cold_ms": 0.02,
             "eager_warm_ms": 0.03, "eager_cold_ms": 0.04, "floor_ms": 0.005, "floor_pct": 25.0},
            {"kind": "kernel_error", "layer": "SIFA-Swin-B C=1024 7²", "N": 2, "T": 16, "dtype": "float16",
             "layout": "channels_last", "pass": "bwd offset", "error": "RuntimeError: boom | bang"},
            {"kind": "network", "network": "SIFA-R50", "baseline": "C2D-R50", "input": "8×16×224²",
             "precision": "fp32", "pass": "train", "ms": 130.0, "baseline_ms": 100.0, "ratio": 1.3,
             "peak_mib": 1.0, "baseline_peak_mib": 1.0}]
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "kern')  # cut short
    (out / "tests.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1" time="12.5">'
        '<testcase classname="tests.test_ops_cuda" name="test_a"/><testcase name="test_b"><skipped/></testcase>'
        '<testcase name="test_c"><failure message="assert 1 == 2&#10;more"/></testcase>'
        '<testcase name="test_d"/></testsuite></testsuites>')
    gpu_check.write_summary(work, out)
    summary = (out / "summary.md").read_text()
    assert "| build | ok | 95.2 | build.log |" in summary
    assert "| kernels | timed out after 90 s | 90.1 | kernels.log |" in summary
    assert "2 passed, 1 failed, 0 errors, 1 skipped in 12 s" in summary
    assert "| failed | test_c: assert 1 == 2 |" in summary
    assert "| device-to-device copy | GPU X | 4000 GB/s |" in summary
    assert ("| fwd bfloat16 contiguous | SIFA-Net C=256 14² N=8 T=4 | 20.0 µs cold (graph; warm 10.0, eager cold "
            "40.0) | 5.0 µs floor | 25 % of floor |") in summary
    assert "error: RuntimeError: boom / bang" in summary
    assert "| SIFA-R50 train fp32 | 8×16×224² | 130.0 ms | C2D-R50 100.0 ms | 1.30× |" in summary


def _run_script(*args, **env):
    full_env = {**os.environ, **env}
    full_env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=400)


def test_needs_an_output_folder():
    result = _run_script()
    assert result.returncode == 2 and "usage" in result.stderr


def test_out_of_budget_skips_every_stage_and_still_writes_the_summary(tmp_path):
    result = _run_script(str(tmp_path), GPU_CHECK_BUDGET_S="0")
    assert result.returncode == 0, result.stdout + result.stderr
    stages = re.findall(r"^\| (.+?) \| (.+?) \| [\d.]+ \| \S+ \|$", (tmp_path / "summary.md").read_text(), re.M)
    timed = [name for name, status in stages if status == "skipped: out of time"]
    assert timed[:2] == ["preflight", "tests"] and len(timed) >= 4, stages


@pytest.mark.slow  # the whole script on the CPU
def test_cpu_rehearsal(tmp_path):
    """The whole script as CI runs it on a machine without a GPU: every stage runs or says why not."""
    result = _run_script(str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name for p in tmp_path.iterdir()} <= FILES
    summary = (tmp_path / "summary.md").read_text()
    statuses = dict(re.findall(r"^\| (.+?) \| (.+?) \| [\d.]+ \| \S+ \|$", summary, re.M))
    for stage in ("preflight", "tests", "kernels (CPU rehearsal)", "network (CPU rehearsal)"):
        assert statuses.get(stage) == "ok", statuses
    assert statuses["build"] == "skipped: no GPU"
    # the counts in summary.md (from tests.xml) are pytest's own (its last line in tests.log)
    last = (tmp_path / "tests.log").read_text().strip().splitlines()[-1]
    passed, skipped = (int(re.search(rf"(\d+) {word}", last).group(1)) for word in ("passed", "skipped"))
    assert f"{passed} passed, 0 failed, 0 errors, {skipped} skipped" in summary
    assert skipped > 100  # every CUDA case skips without a GPU
    # one row per pass and layout at the rehearsal's layer, each with a floor; one network row per combination
    assert len(re.findall(r"^\| (fwd|bwd offset|bwd input\+offset) float32 (contiguous|channels_last) \| rehearsal "
                          r"C=32 6² N=1 T=2 \| [\d.]+ µs cold \(eager; warm [\d.]+\) \| [\d.]+ µs floor \|",
                          summary, re.M)) == 6
    assert len(re.findall(r"^\| SIFA-R50 (train fp32|inference bf16 autocast) \| 1×8×32² \| [\d.]+ ms \| C2D-R50 ",
                          summary, re.M)) == 2
