"""train_val_3d.py under the launchers: a user error is one message, once, without a traceback."""
import os
import subprocess
import sys

import pytest
import yaml

from helpers import REPO_ROOT, free_port

pytestmark = pytest.mark.slow  # torchrun launches of training runs

SCRIPT = str(REPO_ROOT / "train_val_3d.py")


def run(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_config_error_under_the_launcher_is_printed_once_without_a_traceback(tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(yaml.safe_dump({"base": str(REPO_ROOT / "settings" / "synthetic_demo.yml"),
                                      "optimizer": {"base_lerning_rate": 0.1}}))
    result = run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                  f"--master_port={free_port()}", SCRIPT, f"--config_file={config}"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("unknown key 'base_lerning_rate'") == 1, output
    # The launcher reports a failed child with a traceback of its own; none comes from the processes.
    assert "train_val_3d.py\", line" not in output and "ConfigError" not in output, output
    assert output.count("Traceback") <= 1 and "exitcode  : 2" in output, output


def test_missing_checkpoint_in_a_plain_run_is_one_message(tmp_path):
    result = run([sys.executable, SCRIPT, f"--config_file={REPO_ROOT / 'settings/synthetic_demo.yml'}",
                  "--eval_only", str(tmp_path / "missing.pth"),
                  "--opts", f"output_dir={tmp_path / 'out'}", "eva_list_file=/nonexistent/val.txt"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
