"""What several test modules share: the repository root, the tiny training setting, the ways to run
the training entry point, and the check of a command-line tool's user-error exit."""
import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sifa.config import load_config
from sifa.engine.checkpoint import save_checkpoint
from sifa.engine.distributed import DistContext

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
EMULATION_HOSTS = ("x86_64", "AMD64")  # the warp emulator's fibers switch with x86-64 assembly (emulation/runtime.cpp)


def emulation_skip_reason(machine: str):
    """Why the emulation tests cannot run on a host of this ``platform.machine()``, or None when they can."""
    if machine in EMULATION_HOSTS:
        return None
    return f"the warp emulator's fiber switch is x86-64 assembly; this host is {machine or 'unknown'}"


def tiny_config(tmp_path, data, **overrides):
    """A setting that trains c2d_sifa_resnet50 for 2 epochs on ``data`` (the tiny_data fixture) in seconds."""
    cfg = {"dataset": {"format": "FRAME", "root_path": data["root_path"], "list_file": data["train_list"],
                       "eva_list_file": data["val_list"], "class_name_file": data["class_names"], "num_classes": 3,
                       "crop_size": 32, "eva_crop_size": 32, "num_workers": 0},
           "optimizer": {"base_learning_rate": 0.02, "warmup_epoch": 1, "epochs": 2, "clip_gradient": 5.0},
           "sampler": {"clip_length": 8, "batch_size": 2, "iter_size": 2, "num_clips": 1},
           "network": {"net_name": "c2d_sifa_resnet50", "dropout_ratio": 0.5},
           "logging": {"output_dir": str(tmp_path / "out"), "print_freq": 1, "save_freq": 1}}
    cfg.update(overrides)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


def launch(nproc, config, *args, launcher="torch.distributed.launch"):
    """Runs train_val_3d.py under ``launcher`` (torch.distributed.run is torchrun)."""
    command = [sys.executable, "-m", launcher, f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", "train_val_3d.py", f"--config_file={config}", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_command(config, *opts, **popen):
    """train_val_3d.py in one process, its output captured."""
    command = [sys.executable, "train_val_3d.py", f"--config_file={config}", "--opts", *opts]
    return subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=240, **popen)


def train(config, *overrides):
    """Trains ``config`` in this process; returns what Trainer.train returns."""
    from sifa.engine.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(load_config(config, list(overrides)), CPU)
    try:
        return trainer.train()
    finally:
        trainer.close()


def small_training_state(output_dir, epoch, save_freq=1):
    """A real checkpoint of a tiny network, written by the training's save."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return save_checkpoint(str(output_dir), epoch, save_freq, model, optimizer, scheduler, None, [], {"epochs": 9})


@contextlib.contextmanager
def user_error(capsys, match):
    """The block must end a command-line tool on a user error: exit status 2, and as the last line on stderr
    ``error: ...``, in which the regular expression ``match`` is found; no traceback."""
    capsys.readouterr()  # what came before the block
    with pytest.raises(SystemExit) as exit_info:
        yield
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(match, last) and "Traceback" not in err, err
