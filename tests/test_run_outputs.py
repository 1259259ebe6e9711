"""What a run leaves for its user: the log, evaluation progress and the checkpoints kept."""
import json
import os

import pytest
import torch
import yaml

from helpers import REPO_ROOT
from sifa.checkpoint_file import load_checkpoint
from sifa.config import load_config
from sifa.data import synthetic
from sifa.engine.distributed import DistContext
from sifa.engine.trainer import Trainer
from sifa.models.build import build_model, load_network, load_pretrained
from sifa.tools import export_weights

pytestmark = pytest.mark.slow  # a 3-epoch training run and its evaluations

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three epochs of a tiny 3-class run, validated every epoch, in this process."""
    torch.set_num_threads(1)
    tmp_path = tmp_path_factory.mktemp("run")
    data = synthetic.generate(str(tmp_path / "data"), num_classes=3, videos_per_class=2, val_videos_per_class=1,
                              frames=8, size=32, seed=0)
    cfg = {"dataset": {"format": "FRAME", "root_path": data["root_path"], "list_file": data["train_list"],
                       "eva_list_file": data["val_list"], "num_classes": 3, "crop_size": 32,
                       "eva_crop_size": 32, "num_workers": 0},
           "optimizer": {"base_learning_rate": 0.02, "warmup_epoch": 0, "epochs": 3},
           "sampler": {"clip_length": 8, "batch_size": 2, "num_clips": 1},
           "network": {"net_name": "c2d_sifa_resnet50"},
           "logging": {"output_dir": str(tmp_path / "out"), "print_freq": 1, "save_freq": 1, "keep_last": 2}}
    config = tmp_path / "tiny.yml"
    config.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(config), CPU)
    trainer.train()
    trainer.close()
    return {"config": config, "out": tmp_path / "out"}


def test_log_starts_with_the_merged_config_and_names_what_it_reports(run):
    log = (run["out"] / "log.txt").read_text()
    first_entry = log.split("\n[")[0]
    assert "merged" in first_entry and "base_learning_rate: 0.02" in first_entry and "clip_length: 8" in first_entry
    assert "sum of the cross-entropies of the network's 2 heads" in log
    assert "rank-0 running mean" in log and "epoch mean loss over all ranks" in log
    # 3 classes: top-3, not a top-5 that is always 100
    assert "val top1" in log and " top3 " in log and "top5" not in log
    last_epoch = json.loads((run["out"] / "val_accuracy.json").read_text())[-1]
    assert {"top1", "top3"} <= set(last_epoch) and "top5" not in last_epoch
    assert "checkpoints kept: current.pth" in log and "the newest 2 (keep_last)" in log


def test_evaluation_shows_progress_on_rank_0(run, capfd):
    from sifa.engine.evaluate import evaluate
    from sifa.data.build import build_eval_dataset
    from sifa.models.build import build_model

    cfg = load_config(run["config"])
    model = build_model(cfg, cfg.eva_num_segments)
    evaluate(model, build_eval_dataset(cfg, final=True), 2, 0, 3, CPU, description="checking progress")
    assert "checking progress" in capfd.readouterr().err


def test_keep_last_keeps_the_newest_epoch_checkpoints_and_current(run):
    names = sorted(os.listdir(run["out"]))
    assert [n for n in names if n.startswith("ckpt_epoch_")] == [
        "ckpt_epoch_2.pth", "ckpt_epoch_2.pth.sha256", "ckpt_epoch_3.pth", "ckpt_epoch_3.pth.sha256"]
    assert "current.pth" in names
    # every epoch trained: the kept epochs' weights differ
    second, third = (load_checkpoint(str(run["out"] / f"ckpt_epoch_{e}.pth"))["model"] for e in (2, 3))
    assert not torch.equal(second["fc.weight"], third["fc.weight"])


def test_best_holds_the_weights_of_the_first_epoch_with_the_highest_validation_top1(run):
    history = json.loads((run["out"] / "val_accuracy.json").read_text())
    best_top1 = max(entry["top1"] for entry in history)
    best_epoch = next(entry["epoch"] for entry in history if entry["top1"] == best_top1)
    best = load_checkpoint(str(run["out"] / "best.pth"))
    assert (best["epoch"], best["top1"]) == (best_epoch, best_top1)
    assert "optimizer" not in best and best["config"]["num_classes"] == 3
    if best_epoch >= 2:  # its epoch checkpoint is still kept: same weights
        epoch_weights = load_checkpoint(str(run["out"] / f"ckpt_epoch_{best_epoch}.pth"))["model"]
        assert all(torch.equal(value, epoch_weights[key]) for key, value in best["model"].items())


@pytest.mark.parametrize("out_name", ["weights.pth", "weights.safetensors"])
def test_exported_weights_are_smaller_and_load_for_evaluation_and_as_pretrained_model(run, tmp_path, capsys,
                                                                                      out_name):
    current = str(run["out"] / "current.pth")
    out = export_weights.main(["--checkpoint", current, "--out", str(tmp_path / out_name)])
    assert "MiB" in capsys.readouterr().out
    with open(out, "rb") as f:  # the format the name asks for: a zip archive, or safetensors' JSON header
        head = f.read(9)
    assert head.startswith(b"PK") if out_name.endswith(".pth") else head[8:9] == b"{"
    assert os.path.getsize(out) < 0.7 * os.path.getsize(current)
    exported, trained = load_checkpoint(out), load_checkpoint(current)
    assert set(exported) == {"model", "epoch", "config"} and exported["epoch"] == 3
    cfg = load_config(run["config"])
    evaluated = load_network(cfg, out, torch.device("cpu"))  # what --eval_only and predict call
    assert all(torch.equal(value, trained["model"][key]) for key, value in evaluated.state_dict().items())
    cfg.pretrained_model = out
    model = build_model(cfg, cfg.num_segments)
    load_pretrained(model, cfg)
    assert torch.equal(model.state_dict()["fc.weight"], trained["model"]["fc.weight"])


@pytest.mark.parametrize("net_name, expected", [
    ("c2d_sifa_resnet50", "https://download.pytorch.org/models/resnet50-19c8e357.pth"),
    ("c2d_sifa_swin_vit_b_p4_w7", "swin_base_patch4_window7_224.pth"),
])
def test_missing_pretrained_file_names_the_file_expected_and_where_it_is_published(tmp_path, net_name, expected):
    from sifa.models.registry import list_models
    from sifa.errors import CheckpointError

    assert net_name in list_models()
    cfg = load_config(REPO_ROOT / "settings/synthetic_demo.yml",
                      [f"net_name={net_name}", f"pretrained_model={tmp_path / 'missing.pth'}", "transfer_weights=true"]
                      + (["crop_size=224", "eva_crop_size=224"] if "swin" in net_name else []))
    with pytest.raises(CheckpointError, match="pretrained_model not found") as caught:
        load_pretrained(torch.nn.Linear(1, 1), cfg)
    assert str(tmp_path / "missing.pth") in str(caught.value) and expected in str(caught.value)


def test_eval_only_result_is_plotted_at_the_epoch_of_its_checkpoint(run, tmp_path):
    from sifa.tools import plot_log

    cfg = load_config(run["config"])
    trainer = Trainer(cfg, CPU, eval_only=True)
    trainer.evaluate_checkpoint(str(run["out"] / "ckpt_epoch_2.pth"))
    trainer.close()
    assert json.loads((run["out"] / "eval_only_accuracy.json").read_text())["epoch"] == 2
    series = plot_log.read_scalars(str(run["out"]))
    assert series["eval_only/top1"][0] == [2] and series["val/top1"][0] == [1, 2, 3]
    plotted = plot_log.plot_curves(series, str(tmp_path / "curves.png"))
    assert "eval_only/top1" in plotted and os.path.getsize(tmp_path / "curves.png") > 5000


def test_pretrained_checkpoint_of_another_clip_length_suggests_remove_defcor_weight(run, tmp_path):
    from sifa.errors import CheckpointMismatchError

    cfg = load_config(run["config"], ["clip_length=16", f"pretrained_model={run['out'] / 'best.pth'}"])
    with pytest.raises(CheckpointMismatchError, match="remove_defcor_weight=true"):
        load_pretrained(build_model(cfg, cfg.num_segments), cfg)
    cfg.remove_defcor_weight = True
    load_pretrained(build_model(cfg, cfg.num_segments), cfg)


def test_eval_only_of_exported_safetensors_scores_as_the_training_checkpoint(run, tmp_path):
    weights = export_weights.main(["--checkpoint", str(run["out"] / "ckpt_epoch_3.pth")])
    assert weights == str(run["out"] / "ckpt_epoch_3.safetensors")  # the default name
    cfg = load_config(run["config"], [f"output_dir={tmp_path}"])
    scores = []
    for path in (str(run["out"] / "ckpt_epoch_3.pth"), weights):
        trainer = Trainer(cfg, CPU, eval_only=True)
        trainer.evaluate_checkpoint(path)
        trainer.close()
        scores.append(json.loads((tmp_path / "eval_only_accuracy.json").read_text()))
    assert scores[1]["epoch"] == scores[0]["epoch"] == 3
    assert (scores[1]["top1"], scores[1]["top3"]) == (scores[0]["top1"], scores[0]["top3"])  # a 3-class run
    os.remove(weights)
    os.remove(weights + ".sha256")
