"""Resuming a run and reusing its output folder: the configuration's values, the schedule, the folder's
checkpoints and validations (issue 23)."""
import json
import shutil

import pytest
import torch

from helpers import tiny_config, train
from sifa.checkpoint_file import file_sha256, load_checkpoint
from sifa.engine.optim import COSINE_FINAL_LR
from sifa.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow  # a training run, resumed


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_data):
    """The output folder of a finished 1-epoch run (6 iterations, base_learning_rate 0.02, validated)."""
    tmp_path = tmp_path_factory.mktemp("one_epoch")
    train(tiny_config(tmp_path, tiny_data), "epochs=1")
    return tmp_path / "out"


@pytest.fixture
def run(tmp_path, tiny_data, one_epoch_run):
    """A copy of the 1-epoch run's folder and its configuration."""
    shutil.copytree(one_epoch_run, tmp_path / "out")
    return tmp_path / "out", tiny_config(tmp_path, tiny_data)


def log_of(out):
    return (out / "log.txt").read_text()


def test_resume_trains_with_the_configurations_learning_rate_weight_decay_and_momentum(run):
    out, config = run
    train(config, "resume=true", "epochs=2", "eva_inter=false", "base_learning_rate=0.001", "weight_decay=0.001",
          "momentum=0.5")
    group = load_checkpoint(str(out / "current.pth"))["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], group["weight_decay"], group["momentum"]) == (0.001, 0.001, 0.5)
    log = log_of(out)
    # epoch 2 starts after the warm-up epoch, at the full learning rate of this configuration
    assert "epoch [2/2] iter [1/6]" in log and "lr 0.001000" in log.split("epoch [2/2] iter [1/6]")[1].split("\n")[0]
    assert "resume: learning rate (after warm-up) 0.001 (this configuration), not 0.02" in log
    assert "resume: weight_decay 0.001 (this configuration), not 0.0001" in log
    assert "resume: momentum 0.5 (this configuration), not 0.9" in log


def test_resume_with_another_batch_size_places_the_schedule_by_epoch(run):
    out, config = run
    train(config, "resume=true", "epochs=2", "eva_inter=false", "batch_size=3")  # 4 iterations per epoch
    saved = load_checkpoint(str(out / "current.pth"))
    assert saved["scheduler"]["last_epoch"] == 8  # 2 epochs x 4
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(COSINE_FINAL_LR)
    log = log_of(out)
    # epoch 2 is the first after the warm-up: the cosine starts at the full learning rate
    assert "lr 0.020000" in log.split("epoch [2/2] iter [1/4]")[1].split("\n")[0]
    assert "the schedule goes on from iteration 4 (epoch 1 x 4 iterations), not 6" in log


def test_a_run_without_resume_refuses_an_earlier_runs_folder_unless_told_to_overwrite(run):
    out, config = run
    saved = file_sha256(out / "current.pth")
    with pytest.raises(ConfigError, match=rf"^{out} holds the checkpoints of an earlier run \(current\.pth, best\.pth, "
                                          rf"ckpt_epoch_1\.pth\), which resume: false would overwrite: set resume=true "
                                          rf"to continue that run, or overwrite=true to train from scratch"):
        train(config)
    assert file_sha256(out / "current.pth") == saved
    earlier_events = {path.name for path in out.glob("events.out.tfevents.*")}
    assert earlier_events
    train(config, "overwrite=true", "epochs=1", "eva_inter=false", "save_freq=2")
    assert sorted(path.name for path in out.glob("*.pth")) == ["current.pth"]
    assert not (out / "val_accuracy.json").exists() and file_sha256(out / "current.pth") != saved
    events = {path.name for path in out.glob("events.out.tfevents.*")}
    assert len(events) == 1 and not events & earlier_events
    assert (f"overwrite: true: removed the earlier run's current.pth, best.pth, ckpt_epoch_1.pth, validation results "
            f"and {len(earlier_events)} TensorBoard event file(s)") in log_of(out)


def test_resume_true_without_current_resumes_from_the_newest_intact_epoch_checkpoint(run):
    out, config = run
    (out / "current.pth").unlink()
    (out / "current.pth.sha256").unlink()
    (out / "ckpt_epoch_2.pth").write_bytes(b"PK\x03\x04 cut short")
    kept = {name: file_sha256(out / name) for name in ("ckpt_epoch_1.pth", "best.pth")}
    train(config, "resume=true", "epochs=1")
    assert f"resuming from the newest intact epoch checkpoint {out / 'ckpt_epoch_1.pth'}" in log_of(out)
    assert "nothing left to train" in log_of(out)
    assert {name: file_sha256(out / name) for name in kept} == kept


def test_a_validation_that_did_not_finish_runs_on_resume(run):
    out, config = run
    history = json.loads((out / "val_accuracy.json").read_text())
    (out / "val_accuracy.json").unlink()  # the validation after the save was killed, or failed on a bad video
    (out / "best.pth").unlink()
    result = train(config, "resume=true", "epochs=1")
    assert result is not None and json.loads((out / "val_accuracy.json").read_text()) == history
    assert load_checkpoint(str(out / "best.pth"))["epoch"] == 1
    assert "the validation of epoch 1 did not finish" in log_of(out)
    assert train(config, "resume=true", "epochs=1") is None  # done once


def test_a_periodic_checkpoint_whose_copy_was_killed_is_recreated(run):
    out, config = run
    (out / "ckpt_epoch_1.pth").unlink()
    (out / "ckpt_epoch_1.pth.sha256").unlink()
    (out / "ckpt_epoch_1.pth.tmp").write_bytes(b"PK\x03\x04 half a copy")
    train(config, "resume=true", "epochs=1")
    assert file_sha256(out / "ckpt_epoch_1.pth") == file_sha256(out / "current.pth")
    assert load_checkpoint(str(out / "ckpt_epoch_1.pth"))["epoch"] == 1  # its SHA-256 file matches
    assert not (out / "ckpt_epoch_1.pth.tmp").exists()
    assert f"recreated {out / 'ckpt_epoch_1.pth'} from current.pth" in log_of(out)


def test_a_reverse_setting_that_does_not_fit_the_checkpoint_is_named(run, tmp_path):
    out, config = run
    with pytest.raises(CheckpointError, match=r"current\.pth: reverse is true, but it holds its optimizer state under "
                                              r"'optimizer', as usual: set reverse=false"):
        train(config, "resume=true", "reverse=true")
    checkpoint = load_checkpoint(str(out / "current.pth"))
    checkpoint["optimizer"], checkpoint["scheduler"] = checkpoint["scheduler"], checkpoint["optimizer"]
    swapped = tmp_path / "swapped.pth"
    torch.save(checkpoint, swapped)
    with pytest.raises(CheckpointError, match=r"swapped\.pth: it holds its optimizer state under 'scheduler' and its "
                                              r"scheduler's under 'optimizer' .*: set reverse=true"):
        train(config, f"resume={swapped}")
    train(config, f"resume={swapped}", "reverse=true", "epochs=1")
    assert f"resumed from {swapped} (epoch 1)" in log_of(out)
