"""Packaging: `pip install --no-build-isolation .` and `-e .` in a fresh venv,
then sifa.ops (compiled kernels) and load_config on a settings file from a directory outside the
repository, where only the base_config/ that travels inside the package can supply the defaults,
and the console scripts (sifa-train, ...) on the venv's PATH.

The venv uses --system-site-packages to reuse the installed torch (installing torch into it would
take minutes). The build runs in a temporary copy of the repository's files, so no build artefact
lands in the checkout; the editable install reuses the non-editable build's compiled objects (ninja),
so the kernels compile once. CPU kernels only (FORCE_CUDA=0) to keep it short.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from helpers import REPO_ROOT

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

# README's list of the console scripts
CONSOLE_SCRIPTS = ["sifa-train", "sifa-predict", "sifa-prepare", "sifa-export", "sifa-export-weights", "sifa-visualize",
                   "sifa-plot", "sifa-complexity"]

CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import sifa, sifa.ops
    from sifa.config import DEFAULT_CONFIG, load_config
    demo = load_config("synthetic_demo.yml")
    k400 = load_config("k400.yml")  # its `base: base_config/kinetics_base.yml` is not next to it
    print(json.dumps({"sifa": sifa.__file__, "backend": sifa.ops.backend(), "default": str(DEFAULT_CONFIG),
                      "demo_classes": demo.num_classes, "k400_classes": k400.num_classes}))
""")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _copy_sources(dest: Path) -> None:
    """The files git knows (tracked, and new ones it does not ignore): no sifa/_C*.so, no build/."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listing.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # skip deletions not yet committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_pip_install_outside_repository(tmp_path):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the sources to install are the files git lists)")
    env_dir = tmp_path / "venv"
    try:
        venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    except Exception as exc:  # e.g. a Python built without ensurepip
        pytest.skip(f"cannot create a venv with pip here ({exc!r}); CI can")
    python = str(env_dir / "bin" / "python")
    src = tmp_path / "src"
    _copy_sources(src)
    work = tmp_path / "elsewhere"  # outside the repository and the copy
    work.mkdir()
    shutil.copy(REPO_ROOT / "settings" / "synthetic_demo.yml", work / "synthetic_demo.yml")
    shutil.copy(REPO_ROOT / "settings" / "c2d_sifa_res50-1x16x1.k400.yml", work / "k400.yml")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIFA_OPS_BACKEND", "PIP_USER")}
    env.update(FORCE_CUDA="0", MAX_JOBS=str(os.cpu_count() or 2), PIP_DISABLE_PIP_VERSION_CHECK="1")
    # README's step: a fresh venv's bundled setuptools has no bdist_wheel (and may predate PEP 660)
    upgrade = subprocess.run([python, "-m", "pip", "install", "-q", "-U", "setuptools", "wheel"],
                             env=env, capture_output=True, text=True, timeout=180)
    if upgrade.returncode != 0:  # no package index: let the system's setuptools show through instead
        subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], env=env, check=False)

    def install_and_check(*args):
        _run([python, "-m", "pip", "install", "-q", "--no-build-isolation", *args], cwd=work, env=env,
             timeout=900)
        out = _run([python, "-c", CHECK], cwd=work, env=dict(env, SIFA_OPS_BACKEND="extension"), timeout=300)
        import json
        return json.loads(out.stdout.strip().splitlines()[-1])

    # non-editable: the package, its kernels and base_config/ all inside the venv
    info = install_and_check(str(src))
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=env).stdout.strip())
    assert Path(info["sifa"]).resolve().is_relative_to(site.resolve()), info
    assert info["backend"] == "extension", info
    assert Path(info["default"]) == Path(info["sifa"]).parent / "base_config" / "default.yml", info
    assert sorted(p.name for p in (Path(info["sifa"]).parent / "base_config").glob("*.yml")) == \
        sorted(p.name for p in (REPO_ROOT / "sifa" / "base_config").glob("*.yml"))
    assert (info["demo_classes"], info["k400_classes"]) == (4, 400), info

    # the console scripts: each is installed and answers --help; one runs a tool through and exits with 0
    for script in CONSOLE_SCRIPTS:
        usage = _run([str(env_dir / "bin" / script), "--help"], cwd=work, env=env, timeout=300).stdout
        assert usage.startswith("usage: "), (script, usage[:300])
    _run([python, "-c", "import torch; torch.save({'model': {'w': torch.arange(3.0)}, 'epoch': 1}, 'run.pth')"],
         cwd=work, env=env)
    _run([str(env_dir / "bin" / "sifa-export-weights"), "--checkpoint", "run.pth"], cwd=work, env=env, timeout=300)
    assert (work / "run.safetensors").is_file() and (work / "run.safetensors.sha256").is_file()

    # editable (PEP 660), same venv: the sources and their sifa/base_config/ are what runs
    info = install_and_check("-e", str(src))
    assert Path(info["sifa"]).resolve() == (src / "sifa" / "__init__.py").resolve(), info
    assert info["backend"] == "extension", info
    assert Path(info["default"]).resolve() == (src / "sifa" / "base_config" / "default.yml").resolve(), info
    assert (info["demo_classes"], info["k400_classes"]) == (4, 400), info
