"""train_val_3d.py under the launchers: a user error is one message, once, without a traceback; Ctrl-C,
several nodes and torchrun's restarts of killed workers."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from helpers import REPO_ROOT, free_port, launch, subprocess_env, tiny_config
from sifa.checkpoint_file import load_checkpoint

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


# ------------------------------------------------------------------------------------------------------
# Faults of launched training runs: tiny runs of 2 processes, 2 epochs of 3 iterations.
CURRENT_ONLY = ("eva_inter=false", "save_freq=100")  # no validation, and current.pth alone: less to write


def launched(command, tmp_path):
    """``command`` (a launcher's) started in a session of its own, as a shell starts it: Ctrl-C reaches its
    process group."""
    with open(tmp_path / "launcher.log", "w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_log(out, text, process, tmp_path, timeout=180):
    deadline = time.time() + timeout
    while text not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
        assert time.time() < deadline and process.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
        time.sleep(0.2)


def torchrun(nproc, config, *args, node_options=()):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *node_options,
            SCRIPT, f"--config_file={config}", *args]


def assert_same_training(checkpoint, reference):
    a, b = load_checkpoint(str(checkpoint)), load_checkpoint(str(reference))
    assert a["epoch"] == b["epoch"] and a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    momentum = [(s["momentum_buffer"], r["momentum_buffer"])
                for s, r in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
    assert momentum and all(torch.equal(x, y) for x, y in momentum)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, tiny_data):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    launch(2, tiny_config(tmp_path, tiny_data), "--opts", *CURRENT_ONLY)
    return tmp_path / "out" / "current.pth"


def test_an_error_in_one_ranks_share_alone_is_printed_once(tmp_path, tiny_data):
    lines = open(tiny_data["train_list"]).read().splitlines()
    sampler = DistributedSampler(range(len(lines)), num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler.set_epoch(1)
    first_of_rank_1 = next(iter(sampler))  # the first video rank 1 reads, which rank 0 never reads in epoch 1
    lines[first_of_rank_1] = "moving_nowhere/train_0000 8 0"
    train_list = tmp_path / "train.txt"
    train_list.write_text("\n".join(lines) + "\n")
    config = tiny_config(tmp_path, {**tiny_data, "train_list": str(train_list)})
    result = run(torchrun(2, config, node_options=[f"--master_port={free_port()}"]), tmp_path)
    output = result.stdout + result.stderr
    message = f"error: epoch 1 training: {train_list}, line {first_of_rank_1 + 1}: video "
    assert output.count(message) == 1 and "moving_nowhere" in output, output
    # The other rank only lost its peer: it says nothing of gloo's closed connection, and no process a traceback.
    assert "Connection closed" not in output and "train_val_3d.py\", line" not in output, output
    assert output.count("Traceback") <= 1 and "exitcode  : 2" in output, output


def test_ctrl_c_of_a_launched_run_is_one_line_per_process_naming_the_checkpoint(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    out = tmp_path / "out"
    launcher = launched([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                         f"--master_port={free_port()}", SCRIPT, f"--config_file={config}",
                         "--opts", *CURRENT_ONLY], tmp_path)
    try:
        wait_for_log(out, "epoch [2/2] iter [1/", launcher, tmp_path)
        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in the launcher's terminal
        launcher.wait(timeout=60)
    finally:
        launcher.kill()
    output = (tmp_path / "launcher.log").read_text()
    for rank in (0, 1):
        assert output.count(f"interrupted (rank {rank}): training was stopped; rerun with resume=true to continue "
                            f"from {out / 'current.pth'}") == 1, output
    # The workers print nothing else; the launcher's own report (its SignalException) stays.
    assert "KeyboardInterrupt" not in output and "[rank0]:" not in output and "[rank1]:" not in output, output
    assert output.count("Traceback") <= 1, output
    assert load_checkpoint(str(out / "current.pth"))["epoch"] == 1


def test_two_nodes_train_checkpoint_and_resume_as_one(tmp_path, tiny_data, uninterrupted_run):
    """Two torchrun agents of one process each, rendezvousing on this machine as two nodes would."""
    config = tiny_config(tmp_path, tiny_data)
    for epochs in (1, 2):
        nodes = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                 f"--rdzv-id=two-nodes-{epochs}"]
        command = torchrun(1, config, "--opts", f"epochs={epochs}", "resume=true", *CURRENT_ONLY,
                           node_options=nodes)
        agents = [subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [agent.communicate(timeout=180)[0] for agent in agents]
        assert all(agent.returncode == 0 for agent in agents), "\n".join(o[-3000:] for o in outputs)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "2 process(es)" in log and f"resumed from {tmp_path / 'out' / 'current.pth'} (epoch 1)" in log
    assert_same_training(tmp_path / "out" / "current.pth", uninterrupted_run)


def test_a_worker_killed_mid_epoch_is_restarted_by_torchrun_and_resumes_by_itself(tmp_path, tiny_data,
                                                                                 uninterrupted_run):
    config = tiny_config(tmp_path, tiny_data)
    out = tmp_path / "out"
    launcher = launched(torchrun(2, config, "--opts", *CURRENT_ONLY,
                                 node_options=["--max-restarts=1", f"--master_port={free_port()}"]), tmp_path)
    try:
        wait_for_log(out, "epoch [2/2] iter [1/", launcher, tmp_path)
        rank_0 = int((out / "run.lock").read_text().split()[1])  # "pid N on host"
        os.kill(rank_0, signal.SIGKILL)
        assert launcher.wait(timeout=180) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    finally:
        launcher.kill()
    log = (out / "log.txt").read_text()
    assert log.count("epoch 1 done") == 1  # the restart trained epoch 2 alone
    assert f"resumed from {out / 'current.pth'} (epoch 1)" in log and "restart 1 of the workers by torchrun" in log
    assert_same_training(out / "current.pth", uninterrupted_run)
