"""Every network family we ship trains on 2 processes with gradient accumulation (DDP without
find_unused_parameters), and every trainable parameter of each takes a gradient."""
import pytest
import torch
import yaml

from sifa.data import synthetic
from sifa.models import get_model_by_name, load_checkpoint
from test_train import launch, tiny_config

# net name -> (frames per clip, crop size): Swin takes 224² frames only; 4 frames are one Swin clip.
FAMILIES = {
    "c2d_sifa_resnet50": (8, 32),
    "c2d_resnet50": (8, 32),
    "c2d_sifa_swin_vit_s_p4_w7": (8, 224),  # the smallest Swin the registry offers
    "c2d_swin_vit_s_p4_w7": (4, 224),
}


@pytest.mark.parametrize("net_name", FAMILIES)
def test_every_trainable_parameter_takes_a_gradient(net_name):
    torch.manual_seed(0)
    frames, size = FAMILIES[net_name]
    model = get_model_by_name(net_name, num_classes=3, clip_length=frames, sifa_kernel=[3] if "swin" in net_name
                              else [1, 3, 3, 3])
    outputs = model(torch.randn(1, 3, frames, size, size))
    sum(o.sum() for o in outputs).backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []


def test_sifa_swin_freezes_only_the_temporal_path_each_block_skips():
    model = get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", num_classes=3, clip_length=8)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # Swin-S: 24 blocks; the 11 shifted ones (the last stage's 7×7 map allows no shift) skip
    # tda_norm, the 13 others the temporal conv; def_cor's weights are fixed in every block.
    assert sum(n.endswith("tda_norm.weight") or n.endswith("tda_norm.bias") for n in frozen) == 22
    assert sum(n.endswith(".conv.weight") for n in frozen) == 13
    assert sum(n.endswith("def_cor.weight") for n in frozen) == 24
    assert "layers.0.blocks.0.tda_norm.weight" not in frozen and "layers.0.blocks.1.conv.weight" not in frozen
    assert "layers.0.blocks.0.conv.weight" in model.state_dict()  # state dict unchanged


@pytest.fixture(scope="module")
def six_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_families")
    return synthetic.generate(str(root), num_classes=3, videos_per_class=2, val_videos_per_class=1, frames=8,
                              size=32, seed=0)


@pytest.mark.parametrize("net_name", FAMILIES)
def test_two_process_training_with_accumulation(tmp_path, six_videos, net_name):
    frames, size = FAMILIES[net_name]
    # 6 videos / 2 processes / batch 1: 3 iterations, so the step after the first accumulated
    # reduction runs a forward that DDP would refuse had a parameter gone without gradient.
    config = tiny_config(tmp_path, six_videos)
    cfg = yaml.safe_load(config.read_text())
    cfg["dataset"].update(crop_size=size, eva_crop_size=size)
    cfg["optimizer"].update(epochs=1, eva_inter=False)
    cfg["sampler"].update(clip_length=frames, batch_size=1, iter_size=2)
    cfg["network"]["net_name"] = net_name
    cfg["SIFA"] = {"sifa_kernel": [3] if "swin" in net_name else [1, 3, 3, 3]}
    config.write_text(yaml.safe_dump(cfg))
    launch(2, config)
    checkpoint = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    assert checkpoint["epoch"] == 1
