"""Training engine: schedule, checkpoints, resumption, 2-process runs, evaluation sharding."""
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from types import SimpleNamespace

from helpers import CPU, REPO_ROOT, launch, tiny_config
from sifa.checkpoint_file import load_checkpoint
from sifa.config import check_run_inputs, load_config
from sifa.engine.checkpoint import resume_path
from sifa.engine.distributed import init_distributed
from sifa.engine.evaluate import topk_accuracy, view_probabilities
from sifa.engine.optim import COSINE_FINAL_LR, build_optimizer, build_scheduler
from sifa.engine.trainer import Trainer, classification_loss
from sifa.errors import ConfigError
from sifa.models import get_model_by_name
from sifa.models.build import build_model, freeze_bn, load_pretrained

pytestmark = pytest.mark.slow  # training runs of several epochs


# --------------------------------------------------------------------------------------------- schedule
def schedule(iters_per_epoch, **overrides):
    cfg = SimpleNamespace(base_learning_rate=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
                          warmup_multiplier=10, warmup_epoch=1, epochs=3, lr_scheduler="cosine",
                          lr_decay_rate=0.1, lr_decay_epochs=[2])
    vars(cfg).update(overrides)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_scheduler(optimizer, cfg, iters_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * iters_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return optimizer, lrs


def test_warmup_then_cosine():
    _, lrs = schedule(4)
    assert lrs[:4] == pytest.approx([0.01, 0.0325, 0.055, 0.0775])  # 0.1/10 -> 0.1 linearly over 4 iterations
    # cosine over the remaining 8 iterations from 0.1 towards 1e-6
    expected = [COSINE_FINAL_LR + (0.1 - COSINE_FINAL_LR) * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs[4:] == pytest.approx(expected)


def test_step_decay_and_no_warmup():
    _, lrs = schedule(2, lr_scheduler="step", warmup_epoch=0, lr_decay_epochs=[1, 2])
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_one_epoch_all_warmup_and_nesterov():
    optimizer, lrs = schedule(3, epochs=1, warmup_epoch=1, nesterov=True)
    assert lrs == pytest.approx([0.01, 0.04, 0.07])
    assert optimizer.param_groups[0]["nesterov"] is True
    _, lrs = schedule(1, epochs=1, warmup_epoch=0)
    assert lrs == pytest.approx([0.1])


# ----------------------------------------------------------------------------------------- components
def test_losses_and_scores_of_dual_head_outputs():
    torch.manual_seed(0)
    main, dual, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    criterion = torch.nn.CrossEntropyLoss()
    assert torch.allclose(classification_loss([main, dual], labels, criterion),
                          criterion(main, labels) + criterion(dual, labels))
    assert torch.equal(classification_loss([main], labels, criterion), criterion(main, labels))
    assert torch.allclose(view_probabilities([main, dual]), (main.softmax(1) + dual.softmax(1)) / 2)
    assert torch.equal(view_probabilities([main]), main.softmax(1))
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]]).numpy()
    assert topk_accuracy(scores, torch.tensor([2, 0]).numpy(), 1) == 50.0
    assert topk_accuracy(scores, torch.tensor([2, 0]).numpy(), 5) == 100.0


def test_frozen_bn_keeps_only_the_first_norm_trainable():
    model = get_model_by_name("c2d_resnet50", num_classes=3, clip_length=8)
    frozen = freeze_bn(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert frozen == norms[1:] and norms[0].weight.requires_grad
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    # ... and their statistics stay: eval mode, in which a forward leaves the running mean as it is
    assert norms[0].training and not any(m.training for m in frozen)
    before = frozen[0].running_mean.clone()
    model(torch.randn(2, 3, 8, 32, 32))
    assert torch.equal(frozen[0].running_mean, before) and not torch.equal(norms[0].running_mean, torch.zeros(64))


def test_frozen_bn_on_a_network_without_batch_norm_is_a_config_error():
    model = get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", num_classes=3, clip_length=8)
    with pytest.raises(ConfigError, match="frozen_bn is true, but c2d_sifa_swin_vit_s_p4_w7 has no BatchNorm"):
        freeze_bn(model)


def test_local_rank_arguments_and_environment(monkeypatch):
    from sifa.tools import train
    for flag in ("--local-rank=1", "--local_rank=1"):
        monkeypatch.setattr(sys, "argv", ["train_val_3d.py", "--config_file=x.yml", flag])
        assert train.parse_args().local_rank == 1
    monkeypatch.setattr(sys, "argv", ["train_val_3d.py", "--config_file=x.yml", "--eval_only"])
    assert train.parse_args().eval_only == ""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False)
    assert resume_path(True, "out") == os.path.join("out", "current.pth") and resume_path(False, "out") is None


def test_pretrained_imagenet_weights_are_transferred(tmp_path, caplog):
    import torchvision
    imagenet = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "resnet50.pth")
    cfg = load_config(REPO_ROOT / "sifa" / "base_config" / "default.yml",
                      [f"pretrained_model={tmp_path / 'resnet50.pth'}", "transfer_weights=true", "remove_fc=true",
                       "net_name=c2d_sifa_resnet50", "num_classes=3", "clip_length=8"])
    model = build_model(cfg, 1)
    # A Trainer built earlier in this process stops the "sifa" logger's propagation: listen on it directly.
    sifa_logger = logging.getLogger("sifa")
    sifa_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="sifa"):
            load_pretrained(model, cfg)
    finally:
        sifa_logger.removeHandler(caplog.handler)
    stem = model.conv1.weight
    assert torch.equal(stem[:, :, 2], imagenet["conv1.weight"]) and not stem[:, :, [0, 1, 3]].any()
    assert torch.equal(model.layer4_dual[0].conv1.weight[:, :, 0], imagenet["layer4.0.conv1.weight"])
    assert any("missing keys" in line and "fc.weight" in line for line in caplog.messages)


# ------------------------------------------------------------------------------------ tiny training runs
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, tiny_data):
    torch.set_num_threads(1)
    config = tiny_config(tmp_path, tiny_data)
    full = load_config(config)
    trainer = Trainer(full, CPU)
    trainer.train()
    trainer.close()
    resumed = load_config(config, [f"output_dir={tmp_path / 'resumed'}",
                                   f"resume={tmp_path / 'out' / 'ckpt_epoch_1.pth'}"])
    trainer = Trainer(resumed, CPU)
    trainer.train()
    trainer.close()
    a = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    b = load_checkpoint(str(tmp_path / "resumed" / "current.pth"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b)) and len(momentum_a) > 0
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12  # 2 epochs x 6 iterations
    # The first epoch changed the weights (a resume that restarts from scratch could not match).
    first = load_checkpoint(str(tmp_path / "out" / "ckpt_epoch_1.pth"))
    assert not torch.equal(first["model"]["fc.weight"], a["model"]["fc.weight"])


@pytest.mark.parametrize("augment_on_device", [False, True])
def test_training_batches_reach_the_network_normalised_on_its_device(tmp_path, tiny_data, monkeypatch,
                                                                     augment_on_device):
    """The workers hand on uint8 clips; the network gets them normalised as the evaluation normalises
    (after the colour steps with augment_on_device)."""
    import sifa.engine.trainer as trainer_module
    from sifa.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.set_num_threads(1)
    seen = []
    normalize = trainer_module.normalize_clips

    def recording(clips, time_dim):
        out = normalize(clips, time_dim)
        seen.append((clips.clone(), out))
        return out

    monkeypatch.setattr(trainer_module, "normalize_clips", recording)
    colour_calls = []
    device_colour = trainer_module.DeviceColourAugment.__call__
    monkeypatch.setattr(trainer_module.DeviceColourAugment, "__call__",
                        lambda self, clips: colour_calls.append(1) or device_colour(self, clips))
    config = tiny_config(tmp_path, tiny_data)
    cfg = load_config(config, ["epochs=1", "eva_inter=false", f"augment_on_device={str(augment_on_device).lower()}"])
    trainer = Trainer(cfg, CPU)
    trainer.train()
    trainer.close()
    assert len(seen) == 6 and len(colour_calls) == (6 if augment_on_device else 0)  # 6 iterations
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    for clips, out in seen:
        assert clips.dtype == torch.uint8 and clips.shape == (2, 3, 8, 32, 32)
        torch.testing.assert_close(out, (clips.float() / 255 - mean) / std)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_data):
    tmp_path = tmp_path_factory.mktemp("ddp")
    config = tiny_config(tmp_path, tiny_data)
    result = launch(2, config)
    return tmp_path, config, result


def test_two_process_training_writes_checkpoints_logs_and_accuracy(two_process_run):
    tmp_path, _, result = two_process_run
    out = tmp_path / "out"
    for name in ("current.pth", "ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "config.json", "log.txt",
                 "val_accuracy.json"):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    checkpoint = torch.load(out / "current.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["num_classes"] == 3 and len(checkpoint["rng"]) == 2
    history = json.loads((out / "val_accuracy.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0]["num_videos"] == 6
    # 6 videos of 3 classes: top-1 counts sixths, top-3 (named so, not top-5) covers every class
    assert history[-1]["top1"] in [pytest.approx(100 * k / 6) for k in range(7)] and history[-1]["top3"] == 100
    assert "top5" not in history[-1]
    assert json.loads((out / "config.json").read_text())["clip_length"] == 8
    events = EventAccumulator(str(out))
    events.Reload()
    assert {"train/loss", "train/lr", "train/clips_per_s", "val/top1", "val/top3"} <= set(events.Tags()["scalars"])
    log = (out / "log.txt").read_text()
    assert "2 process(es)" in log and "clips/s" in log and "eta" in log


def test_eval_only_three_crops_sharded_equals_single_process(two_process_run):
    tmp_path, config, _ = two_process_run
    checkpoint = str(tmp_path / "out" / "current.pth")
    outputs = {}
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        launch(nproc, config, "--eval_only", checkpoint, "--opts", f"output_dir={out}", "eva_num_clips=2",
               "eva_num_crop=3", "eva_crop_size=32", launcher="torch.distributed.run")  # torchrun
        outputs[nproc] = (json.loads((out / "eval_only_accuracy.json").read_text()),
                          torch.load(out / "eval_only_scores.pt", weights_only=True))
    summary, scores = outputs[2]
    assert (summary["num_clips"], summary["num_crops"], summary["num_videos"]) == (2, 3, 6)
    assert scores["scores"].shape == (6, 3) and torch.allclose(scores["scores"].sum(1), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(outputs[1][1]["scores"], scores["scores"], atol=1e-6)
    assert outputs[1][0]["top1"] == summary["top1"]
    # Square 32-pixel frames and 8-frame videos: all 6 views equal the single between-epoch view, so the
    # sharded validation after the last epoch scored the model that was saved.
    history = json.loads((tmp_path / "out" / "val_accuracy.json").read_text())
    assert history[-1]["top1"] == summary["top1"]
    assert (tmp_path / "eval2" / "eval_only_config.json").is_file() and not (tmp_path / "eval2" / "config.json").exists()


def test_run_inputs_are_checked_before_any_work(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    check_run_inputs(load_config(config))
    check_run_inputs(load_config(config, ["eva_model=x.pth"]), eval_checkpoint="")
    for overrides, eval_checkpoint, message in [
            (["eva_list_file="], None, "eva_inter is true but eva_list_file is empty"),
            (["list_file="], None, "list_file is empty"),
            (["eva_list_file="], "x.pth", "eva_list_file is empty"),
            ([], "", "--eval_only needs a checkpoint: pass a path or set eva_model")]:
        with pytest.raises(ConfigError, match=message):
            check_run_inputs(load_config(config, overrides), eval_checkpoint)
    check_run_inputs(load_config(config, ["eva_list_file=", "eva_inter=false"]))
    # train_val_3d checks them before it starts a process group, and before it makes output_dir
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "train_val_3d.py", f"--config_file={config}", "--eval_only", "--opts",
                             f"output_dir={tmp_path / 'untouched'}"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--eval_only needs a checkpoint" in result.stderr
    assert not (tmp_path / "untouched").exists()


def test_configuration_errors_stop_training_before_any_work(tmp_path, tiny_data):
    config = tiny_config(tmp_path, tiny_data)
    trainer = Trainer(load_config(config, ["eva_list_file="]), CPU)
    with pytest.raises(ConfigError, match="eva_list_file is empty"):
        trainer.train()
    with pytest.raises(ConfigError, match="eva_list_file is empty: evaluation"):
        trainer.evaluate_checkpoint("x.pth")
    trainer.close()
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        trainer = Trainer(load_config(config, [f"resume={tmp_path / 'absent.pth'}", f"output_dir={tmp_path / 'e'}"]),
                          CPU)
        trainer.train()
    trainer.close()
