"""What a run leaves for its user: the log, evaluation progress and the checkpoints kept."""
import pytest
import torch
import yaml

from sifa.config import load_config
from sifa.data import synthetic
from sifa.engine.distributed import DistContext
from sifa.engine.trainer import Trainer

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
           "logging": {"output_dir": str(tmp_path / "out"), "print_freq": 1, "save_freq": 1}}
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


def test_evaluation_shows_progress_on_rank_0(run, capfd):
    from sifa.engine.evaluate import evaluate
    from sifa.data.build import build_eval_dataset
    from sifa.models.build import build_model

    cfg = load_config(run["config"])
    model = build_model(cfg, cfg.eva_num_segments)
    evaluate(model, build_eval_dataset(cfg, final=True), 2, 0, 3, CPU, description="checking progress")
    assert "checking progress" in capfd.readouterr().err
