"""Weights files: safetensors with the config in its metadata, timm's pretrained weights by name (offline,
from a cache the test fills), and which epoch checkpoints a run keeps by default."""
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors import safe_open

from helpers import REPO_ROOT
from sifa.checkpoint_file import load_checkpoint, save_checkpoint_file
from sifa.config import config_to_dict, load_config
from sifa.errors import CheckpointError, CheckpointNotFoundError
from sifa.models.build import build_model, load_pretrained, network_from_checkpoint
from sifa.models.transfer import transfer_weights

DEMO = REPO_ROOT / "settings" / "synthetic_demo.yml"


def test_safetensors_round_trip_is_bitwise_with_the_plain_data_in_its_metadata(tmp_path):
    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4, dtype=torch.float64), "b": torch.arange(5, dtype=torch.int64),
             "h": torch.randn(2, 2).half(), "t": torch.randn(4, 4).t()}  # t: not contiguous
    state["alias"] = state["w"][0]  # shares storage with w
    config = {"net_name": "c2d_sifa_resnet50", "sifa_kernel": [1, 3, 3, 3], "offset_mode": None}
    path = str(tmp_path / "w.safetensors")
    save_checkpoint_file({"model": state, "epoch": 7, "top1": 61.25, "config": config}, path)
    # a real safetensors file, the plain data as JSON in its metadata
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(state)
        assert json.loads(f.metadata()["config"]) == config and f.metadata()["epoch"] == "7"
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model", "epoch", "top1", "config"}
    assert (loaded["epoch"], loaded["top1"], loaded["config"]) == (7, 61.25, config)
    for key, value in state.items():
        assert loaded["model"][key].dtype == value.dtype and torch.equal(loaded["model"][key], value), key


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
@pytest.mark.parametrize("name", ["current.pth", "weights.safetensors"])
def test_sha256sum_checks_the_sidecar_in_the_checkpoint_folder_wherever_that_folder_moved(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint_file({"model": {"w": torch.arange(4.0)}, "epoch": 1}, str(run / name))
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    check = subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=moved, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == f"{name}: OK", check
    (moved / name).write_bytes(b"changed")
    assert subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=moved, capture_output=True).returncode == 1


def test_damaged_safetensors_file_is_one_checkpoint_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint_file({"model": {"w": torch.ones(100)}}, str(path))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the tensor data: only the SHA-256 tells
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_checkpoint(str(path))
    path.write_bytes(b"not a safetensors file at all")
    os.remove(str(path) + ".sha256")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(str(path))


def test_network_is_rebuilt_from_the_weights_file_alone(tmp_path):
    # options away from the defaults, which only the saved config can restore
    cfg = load_config(DEMO, ["net_name=c2d_sifa_resnet50", "num_classes=5", "sifa_kernel=[1,1,3,1]",
                             "offset_mode=zero", "eva_num_segments=1", "clip_length=8"])
    torch.manual_seed(0)
    model = build_model(cfg, cfg.eva_num_segments).eval()
    path = str(tmp_path / "net.safetensors")
    save_checkpoint_file({"model": model.state_dict(), "config": config_to_dict(cfg)}, path)
    rebuilt, rebuilt_cfg = network_from_checkpoint(path)
    assert (rebuilt_cfg.num_classes, rebuilt_cfg.sifa_kernel, rebuilt_cfg.offset_mode) == (5, [1, 1, 3, 1], "zero")
    clip = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        expected, got = model(clip), rebuilt(clip)
    expected, got = (torch.cat(out, 1) if isinstance(out, (tuple, list)) else out for out in (expected, got))
    assert torch.equal(got, expected)


def test_a_file_without_config_cannot_be_rebuilt_and_says_so(tmp_path):
    path = str(tmp_path / "bare.safetensors")
    save_checkpoint_file({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match="holds no config"):
        network_from_checkpoint(path)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: nothing can be downloaded."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _put_in_hub_cache(cache, repo_id, state):
    """``state`` as the hub's model.safetensors of ``repo_id``, in the cache layout huggingface_hub reads."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))


def test_timm_name_loads_its_weights_from_timm_cache_offline_then_transfers(hub_cache):
    import timm

    torch.manual_seed(1)
    imagenet = {k: v.clone() for k, v in timm.create_model("resnet50", pretrained=False).state_dict().items()}
    _put_in_hub_cache(hub_cache, "timm/resnet50.tv_in1k", imagenet)
    cfg = load_config(DEMO, ["net_name=c2d_sifa_resnet50", "pretrained_model=timm:resnet50.tv_in1k",
                             "remove_fc=true"])
    torch.manual_seed(2)
    model = build_model(cfg, cfg.num_segments)
    load_pretrained(model, cfg)
    expected = transfer_weights(cfg.net_name, imagenet)  # the 2-D -> C2D transfer of the very file
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], expected["conv1.weight"])
    assert loaded["conv1.weight"].shape[2] == 4  # the stem inflated to 4 frames
    assert torch.equal(loaded["layer4_dual.2.conv3.weight"], expected["layer4.2.conv3.weight"])
    assert torch.equal(loaded["layer2.1.bn1.running_var"], imagenet["layer2.1.bn1.running_var"])


def test_timm_name_absent_from_the_offline_cache_or_unknown_is_one_clear_error(hub_cache):
    cfg = load_config(DEMO, ["net_name=c2d_sifa_resnet50", "pretrained_model=timm:resnet50.tv_in1k"])
    model = build_model(cfg, cfg.num_segments)
    with pytest.raises(CheckpointNotFoundError, match="timm:resnet50.tv_in1k.*HF_HUB_OFFLINE"):
        load_pretrained(model, cfg)
    cfg.pretrained_model = "timm:resnet50_no_such_model"
    with pytest.raises(Exception, match="has no model 'resnet50_no_such_model'"):
        load_pretrained(model, cfg)


def test_default_keep_last_keeps_the_two_newest_epoch_checkpoints(tmp_path):
    from sifa.engine.checkpoint import remove_old_epoch_checkpoints, save_checkpoint

    cfg = load_config(DEMO)
    assert cfg.keep_last == 2  # the default a user gets
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    for epoch in range(1, 6):
        save_checkpoint(str(tmp_path), epoch, 1, model, optimizer, scheduler, None, [], {})
        remove_old_epoch_checkpoints(str(tmp_path), cfg.keep_last)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_epoch_4.pth", "ckpt_epoch_4.pth.sha256", "ckpt_epoch_5.pth",
                                            "ckpt_epoch_5.pth.sha256", "current.pth", "current.pth.sha256"]
