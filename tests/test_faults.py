"""Training and checkpoints under faults: divergence, bad checkpoints, kills and full disks."""
import errno
import os
import re
import subprocess
import sys
import struct
import textwrap
import time
import zipfile

import pytest
import torch

from helpers import (CPU, REPO_ROOT, free_port, run_command, small_training_state, subprocess_env, tiny_config,
                     train, user_error)
from sifa.checkpoint_file import CheckpointWriteError, file_sha256, load_checkpoint, remove_leftover_tmp
from sifa.config import load_config
from sifa.engine import checkpoint as checkpoint_module
from sifa.engine.checkpoint import save_weights
from sifa.engine import trainer as trainer_module
from sifa.engine.trainer import NonFiniteLossError, Trainer
from sifa.errors import CheckpointError, CheckpointMismatchError, ConfigError
from sifa.models.build import build_model, load_pretrained

pytestmark = pytest.mark.slow  # training runs killed and resumed


# ------------------------------------------------------------------------------------ non-finite training
def test_nan_loss_stops_training_naming_epoch_and_iteration_and_keeps_the_last_checkpoint(
        tmp_path, tiny_data, monkeypatch):
    calls = {"n": 0}
    real_loss = trainer_module.classification_loss

    def loss_nan_at_epoch_2_iteration_2(outputs, labels, criterion):
        calls["n"] += 1
        loss = real_loss(outputs, labels, criterion)
        return loss * float("nan") if calls["n"] == 6 + 2 else loss  # 6 iterations per epoch

    monkeypatch.setattr(trainer_module, "classification_loss", loss_nan_at_epoch_2_iteration_2)
    config = tiny_config(tmp_path, tiny_data)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, iteration 2/6 .*last good checkpoint is "
                                                 r".*current\.pth"):
        train(config)
    saved = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_diverging_command_line_run_ends_with_one_error_line_not_a_traceback(tmp_path, tiny_data):
    # loss_weight 1e39 sends the gradients to NaN within two steps, as a far too large learning rate would.
    result = run_command(tiny_config(tmp_path, tiny_data), "loss_weight=1e39", "epochs=1", "eva_inter=false")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: training diverged: the (loss|gradient norm) is (nan|inf) at epoch 1, iteration "
                        r"[12]/6.*; stopped without saving this epoch, no epoch was saved; lower "
                        r"base_learning_rate or set clip_gradient", last), last


def with_hook_on_the_last_iteration(monkeypatch, hook):
    """Training's network calls ``hook(model)`` after the forward of the 6th (an epoch's last) iteration."""
    real_build_model = trainer_module.build_model

    def build_model(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        forwards = {"n": 0}

        def count(module, inputs, outputs):
            forwards["n"] += 1
            if forwards["n"] == 6:
                hook(model)

        model.register_forward_hook(count)
        return model

    monkeypatch.setattr(trainer_module, "build_model", build_model)


def test_an_infinite_gradient_norm_stops_training_before_the_step(tmp_path, tiny_data, monkeypatch):
    # The loss stays finite; the classifier's gradient is infinite (as when a huge lr blew up the weights).
    with_hook_on_the_last_iteration(monkeypatch, lambda model: model.fc.weight.register_hook(
        lambda grad: torch.full_like(grad, float("inf"))))
    with pytest.raises(NonFiniteLossError, match=r"^training diverged: the gradient norm is inf at epoch 1, iteration "
                                                 r"6/6; stopped without saving this epoch, no epoch was saved"):
        train(tiny_config(tmp_path, tiny_data), "epochs=1", "eva_inter=false")
    assert not (tmp_path / "out" / "current.pth").exists()


def test_an_epoch_with_infinite_batchnorm_statistics_is_not_saved(tmp_path, tiny_data, monkeypatch):
    # Training normalises with each batch's statistics: the loss and gradients stay finite. (Through .data:
    # the backward of the forward just run checks that its saved tensors have not changed.)
    with_hook_on_the_last_iteration(monkeypatch, lambda model: model.bn1.running_var.data.fill_(float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"^training diverged: after epoch 1, model\.bn1\.running_var hold "
                                                 r"NaN or infinite values; stopped without saving this epoch"):
        train(tiny_config(tmp_path, tiny_data), "epochs=1", "eva_inter=false")
    assert not (tmp_path / "out" / "current.pth").exists()


def test_fp16_steps_the_gradient_scaler_skips_are_not_errors(tmp_path, tiny_data):
    # fp16 autocast on the CPU (a GPU run's path, slowly): loss_weight 1e35 times the scaler's initial 65536
    # overflows float32, so the scaled gradients are infinite and the scaler skips steps, halving its scale.
    torch.set_num_threads(1)
    trainer = Trainer(load_config(tiny_config(tmp_path, tiny_data), ["epochs=1", "eva_inter=false",
                                                                     "loss_weight=1e35"]), CPU)
    trainer.amp_dtype = torch.float16
    try:
        trainer.train()
    finally:
        trainer.close()
    saved = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    assert saved["epoch"] == 1 and saved["scaler"]["scale"] < 65536.0
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_evaluation_refuses_non_finite_scores(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    cfg = load_config(config)
    weights = build_model(cfg, cfg.eva_num_segments).state_dict()
    weights["fc.weight"].fill_(3e38)  # finite weights whose logits overflow
    torch.save({"model": weights}, tmp_path / "overflow.pth")
    weights["fc.weight"].fill_(float("nan"))
    torch.save({"model": weights}, tmp_path / "nan.pth")
    trainer = Trainer(cfg, CPU, eval_only=True)
    try:
        with pytest.raises(FloatingPointError, match=r"overflow\.pth: the network's scores are NaN or infinite for "
                                                     r"6 of 6"):
            trainer.evaluate_checkpoint(str(tmp_path / "overflow.pth"))
        with pytest.raises(CheckpointError, match=r"nan\.pth: 1 of the network's tensors hold NaN or infinite "
                                                  r"values \(the first: fc\.weight\)"):
            trainer.evaluate_checkpoint(str(tmp_path / "nan.pth"))
    finally:
        trainer.close()
    assert not (tmp_path / "out" / "eval_only_accuracy.json").exists()


def test_iter_size_beyond_the_epoch_is_rejected(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)  # 12 videos / batch 2: 6 iterations per epoch
    with pytest.raises(ConfigError, match=r"'iter_size' \(7\) exceeds the 6 iterations per epoch"):
        train(config, "iter_size=7")


# --------------------------------------------------------------------------------------------- lost work
def test_the_epoch_is_saved_before_validation(tmp_path, tiny_data, monkeypatch):
    def unreadable_frame(*args, **kwargs):
        raise OSError("frame_00003.jpg: cannot decode")

    monkeypatch.setattr(trainer_module, "evaluate", unreadable_frame)
    with pytest.raises(OSError, match="cannot decode"):
        train(tiny_config(tmp_path, tiny_data), "epochs=1")
    assert load_checkpoint(str(tmp_path / "out" / "current.pth"))["epoch"] == 1


def test_resume_true_starts_from_scratch_without_a_checkpoint_and_clears_leftover_tmp(tmp_path, tiny_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "current.pth.tmp").write_bytes(b"partial")
    train(tiny_config(tmp_path, tiny_data), "resume=true", "epochs=1", "eva_inter=false")
    log = (out / "log.txt").read_text()
    assert f"there is no {out / 'current.pth'} yet: starting from scratch" in log
    assert "current.pth.tmp, left by an interrupted save" in log and not (out / "current.pth.tmp").exists()
    assert load_checkpoint(str(out / "current.pth"))["epoch"] == 1


def test_a_kill_during_a_save_keeps_the_reported_checkpoint(tmp_path):
    small_training_state(tmp_path, 1)
    saved = file_sha256(tmp_path / "current.pth")
    # The next save is killed (SIGKILL) halfway through writing the file.
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r}); sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
        from helpers import small_training_state
        def killed_while_writing(obj, f):
            f.write(b"PK\\x03\\x04 half a checkpoint"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = killed_while_writing
        small_training_state({str(tmp_path)!r}, 2)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    assert (tmp_path / "current.pth.tmp").exists() and file_sha256(tmp_path / "current.pth") == saved
    assert load_checkpoint(str(tmp_path / "current.pth"))["epoch"] == 1
    assert remove_leftover_tmp(str(tmp_path)) == ["current.pth.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt_epoch_1.pth", "ckpt_epoch_1.pth.sha256", "current.pth",
                                            "current.pth.sha256"]


def test_a_kill_between_checkpoint_and_checksum_renames_leaves_an_intact_checkpoint(tmp_path):
    small_training_state(tmp_path, 1)
    current = tmp_path / "current.pth"
    # Epoch 2's file is in place, its checksum still pending: as a kill between the two renames leaves it.
    small_training_state(tmp_path / "..", 2)
    os.replace(tmp_path / ".." / "current.pth", current)
    (tmp_path / "current.pth.sha256.tmp").write_text(f"{file_sha256(current)}  current.pth\n")
    assert load_checkpoint(str(current))["epoch"] == 2  # e.g. --eval_only on it before any run completes it
    assert remove_leftover_tmp(str(tmp_path)) == []
    assert load_checkpoint(str(current))["epoch"] == 2
    # The pending checksum vouches for its own file only.
    (tmp_path / "current.pth.sha256.tmp").write_text(f"{file_sha256(current)}  current.pth\n")
    damage(current, "flipped byte")
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_checkpoint(str(current))


def disk_full_as_oserror(obj, f):
    f.write(b"PK\x03\x04" + bytes(1000))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def disk_full_as_torch_reports_it(obj, f):
    """torch.save's writer meets the OSError and raises its own RuntimeError while that one unwinds."""
    f.write(b"PK\x03\x04" + bytes(1000))
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    finally:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("failing_save", [disk_full_as_oserror, disk_full_as_torch_reports_it])
def test_a_full_disk_names_the_folder_and_space_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                                   failing_save):
    small_training_state(tmp_path, 1)
    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError) as err:
        small_training_state(tmp_path, 2)
    message = str(err.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'current.pth'}: No space left on device "
                              f"({tmp_path} has "), message
    assert re.search(r"MiB free, the file needs about \d+\.\d MiB\); the partial file was removed and the "
                     r"previous checkpoint there is kept$", message), message
    monkeypatch.undo()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert load_checkpoint(str(tmp_path / "current.pth"))["epoch"] == 1


def test_other_errors_of_a_save_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def bug(obj, f):
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(checkpoint_module.torch, "save", bug)
    with pytest.raises(RuntimeError, match="^a bug in the writer$"):
        small_training_state(tmp_path, 1)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------- damaged checkpoints
def damage(path, kind):
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch: 3\nthis is a log, not a checkpoint\n")
    elif kind == "flipped byte":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif kind == "python objects":
        path.write_bytes(b"")
        torch.save({"model": {}, "optimizer": torch.optim.SGD}, path)
        os.remove(str(path) + ".sha256")


DAMAGE = {"truncated": "is truncated or damaged", "zero-byte": "is empty (0 bytes)",
          "text": "is not a PyTorch checkpoint", "flipped byte": "does not match the SHA-256",
          "python objects": "holds Python objects other than tensors"}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_gets_one_message_naming_file_and_problem(tmp_path, kind):
    path = tmp_path / "current.pth"
    small_training_state(tmp_path, 1)
    damage(path, kind)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    assert str(err.value).startswith(f"{path} {DAMAGE[kind]}") and "weights_only" not in str(err.value)


def flip_tensor_byte(path):
    """Flips a bit of the first tensor's data inside the zip archive of torch.save (not its padding)."""
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    # local header: 30 bytes, then the name and the extra field whose lengths it states at bytes 26 and 28
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_length + extra_length] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_checkpoint_without_its_checksum_file_is_checked_against_its_zip_crcs(tmp_path):
    path = tmp_path / "current.pth"
    small_training_state(tmp_path, 1)
    os.remove(str(path) + ".sha256")  # copied alone
    assert load_checkpoint(str(path))["epoch"] == 1
    flip_tensor_byte(path)
    with pytest.raises(CheckpointError, match=rf"^{path} is damaged: its member \w+/data/0 does not match the "
                                              rf"CRC-32 stored for it \(it has no SHA-256 file {path}\.sha256\)$"):
        load_checkpoint(str(path))


def test_a_safetensors_file_without_its_checksum_file_checks_its_tensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_weights(str(path), torch.nn.Linear(4, 2).state_dict(), epoch=1)
    os.remove(str(path) + ".sha256")  # copied alone
    assert load_checkpoint(str(path)).keys() == {"model", "epoch"}
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the data section ends the file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path} is damaged: its tensors do not match the SHA-256 stored in "
                                              rf"its metadata \(it has no SHA-256 file {path}\.sha256\)$"):
        load_checkpoint(str(path))


def test_a_pickle_that_would_run_code_is_refused_as_such(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": RunsShellCommand(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match=rf"^{path} holds Python objects other than tensors and plain data "
                                              rf"\(it names posix\.system, code that unpickling would run\): it "
                                              rf"was not loaded$"):
        load_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content, problem", [
    ([1, 2], r"{path} holds a list, not a checkpoint"),
    ({"model": {1: torch.zeros(1)}}, r"{path} holds no network weights: its entry 1 \(Tensor\) is not a tensor "
                                     r"named by a string"),
    ({"model": {"fc.weight": "text"}}, r"{path} holds no network weights: its entry 'fc\.weight' \(str\)")],
    ids=["a list", "an int key", "a text weight"])
def test_the_export_tools_report_a_foreign_checkpoint_in_one_line(tmp_path, capsys, content, problem):
    from sifa.tools import export, export_weights

    path = tmp_path / "current.pth"
    torch.save(content, path)
    problem = problem.format(path=re.escape(str(path)))
    with user_error(capsys, problem):
        export.main(["--config_file", str(REPO_ROOT / "sifa" / "base_config" / "default.yml"), "--checkpoint",
                     str(path), "--format", "pt2"])
    with user_error(capsys, problem):
        export_weights.main(["--checkpoint", str(path)])


class RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_damaged_checkpoints_for_resume_eval_only_and_pretrained(tmp_path, tiny_data):
    out = tmp_path / "out"
    out.mkdir()
    config = tiny_config(tmp_path, tiny_data)
    for epoch in (1, 2, 3):
        small_training_state(out, epoch)
    damage(out / "current.pth", "truncated")
    damage(out / "ckpt_epoch_3.pth", "flipped byte")
    with pytest.raises(CheckpointError, match=rf"cannot resume: {out / 'current.pth'} is truncated.*the newest intact "
                                              rf"epoch checkpoint is {out / 'ckpt_epoch_2.pth'}"):
        train(config, "resume=true")
    cfg = load_config(config)
    bare = tmp_path / "bare.pth"
    torch.save(build_model(cfg, 1).state_dict(), bare)
    with pytest.raises(CheckpointError, match=f"cannot resume from {bare}: it is not a training checkpoint .*"
                                              f"set pretrained_model instead"):
        train(config, f"resume={bare}")
    other_classes = tmp_path / "five_classes.pth"
    torch.save({"model": build_model(load_config(config, ["num_classes=5"]), 1).state_dict(), "optimizer": {},
                "scheduler": {}, "epoch": 1}, other_classes)
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {other_classes} does not fit c2d_sifa_resnet50: "
                                                      rf"shape mismatches .*fc\.weight \(5, 2048\) vs \(3, 2048\)"):
        train(config, f"resume={other_classes}")
    with pytest.raises(CheckpointError, match=r"ckpt_epoch_2\.pth: it was saved after epoch 2, beyond epochs = 1"):
        train(config, f"resume={out / 'ckpt_epoch_2.pth'}", "epochs=1")
    trainer = Trainer(cfg, CPU, eval_only=True)
    try:
        with pytest.raises(CheckpointError, match=f"{out / 'current.pth'} is truncated"):
            trainer.evaluate_checkpoint(str(out / "current.pth"))
    finally:
        trainer.close()
    damage(bare, "zero-byte")
    with pytest.raises(CheckpointError, match=f"{bare} is empty"):
        load_pretrained(build_model(cfg, 1), load_config(config, [f"pretrained_model={bare}"]))


# ------------------------------------------------------------------------------ launcher and output dir
def test_an_output_dir_is_locked_by_one_training_run(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from sifa.engine.guards import OutputDirLock
        lock = OutputDirLock({str(out)!r})
        print("locked", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_command(config, "epochs=1", "eva_inter=false")
        assert result.returncode == 2 and f"is in use by another training run (pid {holder.pid} on" in result.stderr
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died holding the lock: its file still names it, and the next run takes it over.
    assert f"pid {holder.pid} on" in (out / "run.lock").read_text()
    result = run_command(config, "epochs=1", "eva_inter=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(str(out / "current.pth"))["epoch"] == 1


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # fields: state, ppid, ...
                found.append(int(entry))
    return found


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_their_launcher_is_killed_and_the_same_command_resumes(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    out = tmp_path / "out"
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={port}",
               "train_val_3d.py", f"--config_file={config}", "--opts", "resume=true", "eva_inter=false"]
    env = subprocess_env()
    with open(tmp_path / "first.log", "w") as log:
        launcher = subprocess.Popen(command + ["epochs=50"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log,
                                    start_new_session=True)
    try:
        deadline = time.time() + 180
        while "iter [" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
            assert time.time() < deadline and launcher.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        workers = children_of(launcher.pid)
        assert len(workers) == 2
    finally:
        launcher.kill()  # SIGKILL: the launcher can tell nobody
        launcher.wait()
    deadline = time.time() + 30
    while any(running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(running(pid) for pid in workers), "workers outlived their launcher"
    assert "the launcher (pid" in (tmp_path / "first.log").read_text()
    saved = load_checkpoint(str(out / "current.pth"))["epoch"] if (out / "current.pth").exists() else 0
    result = subprocess.run(command + [f"epochs={saved + 1}"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert load_checkpoint(str(out / "current.pth"))["epoch"] == saved + 1
