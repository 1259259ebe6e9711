"""Nothing optional blocks the import: in an environment holding only torch, timm, numpy and pyyaml
(and what they depend on), ``import sifa``, the networks and the operator tests work.

The environment is a real venv (``python -m venv --without-pip``) whose site-packages holds symlinks
to the installed files of exactly those distributions and their transitive requirements (read from
their metadata), plus pytest and its requirements to run the operator tests: the interpreter sees
nothing else (no lmdb, OpenCV, PyAV, ONNX, tensorboard, matplotlib), as in a venv where only these
were installed, without copying the multi-GB torch install. The repository is put on ``sys.path``,
so the extension is the one built in place (``sifa/_C*.so``).
"""
import importlib.metadata
import os
import subprocess
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import REPO_ROOT as ROOT

pytestmark = pytest.mark.slow  # a venv importing sifa and running the operator tests
WANTED = ["torch", "timm", "numpy", "pyyaml"]
TEST_RUNNER = ["pytest"]
ABSENT = ["lmdb", "cv2", "av", "onnx", "onnxruntime", "onnxscript", "tensorboard", "matplotlib"]


def _closure(names):
    """The installed distributions ``names`` require, transitively (extras left out)."""
    found, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:  # a requirement for another platform
            continue
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _make_env(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False, clear=True).create(path)
    site = next(path.glob("lib/python*/site-packages"))
    for dist in _closure(WANTED + TEST_RUNNER).values():
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (site / top).exists():
                continue
            os.symlink(dist.locate_file(top), site / top)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def minimal_python(tmp_path_factory):
    return _make_env(tmp_path_factory.mktemp("minimal_env") / "venv")


def _run(python, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([str(python), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_environment_lacks_the_optional_packages(minimal_python):
    # what the other tests rely on: the optional packages are really absent there
    script = "import importlib.util as u; print([m for m in %r if u.find_spec(m) is not None])" % ABSENT
    result = _run(minimal_python, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_build_network_and_run_operator(minimal_python):
    script = """
import torch
import sifa, sifa.data, sifa.models, sifa.ops
from sifa.models import get_model_by_name
assert sifa.ops.backend() == "extension", sifa.ops.backend()
net = get_model_by_name("c2d_sifa_resnet50", num_classes=5, clip_length=8).eval()
with torch.no_grad():
    (logits,) = net(torch.randn(1, 3, 8, 64, 64))[:1]
assert logits.shape == (1, 5), logits.shape
x, off = torch.randn(1, 32, 4, 5, 5, dtype=torch.float64), torch.randn(1, 18, 4, 5, 5, dtype=torch.float64)
w = torch.randn(32, 4, 3, 3, dtype=torch.float64)
torch.testing.assert_close(sifa.ops.sifa_attention(x, off, w), sifa.ops.reference.sifa_attention(x, off, w, 1, 1, 1, 1)[0])
print("ok")
"""
    result = _run(minimal_python, "-c", script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_operator_tests_pass(minimal_python):
    # the CPU and (where a GPU is visible) CUDA operator tests
    result = _run(minimal_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ops.py",
                  "tests/test_ops_cuda.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
