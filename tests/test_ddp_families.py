"""Every network family we ship trains on 2 processes with gradient accumulation (DDP without
find_unused_parameters), and every trainable parameter of each takes a gradient."""
import pytest
import torch
import yaml

from sifa.data import synthetic
from helpers import launch, tiny_config
from sifa.checkpoint_file import load_checkpoint
from sifa.models import get_model_by_name

pytestmark = pytest.mark.slow  # every network family trained on 2 processes

# net name -> (frames per clip, crop size): Swin takes 224² frames only; 4 frames are one Swin clip.
FAMILIES = {
    "c2d_sifa_resnet50": (8, 32),
    "c2d_resnet50": (8, 32),
    "c2d_sifa_swin_vit_t_p4_w7": (8, 224),  # the smallest Swin the registry offers
    "c2d_swin_vit_t_p4_w7": (4, 224),
}


@pytest.mark.parametrize("net_name", FAMILIES)
def test_every_used_parameter_takes_a_gradient(net_name):
    torch.manual_seed(0)
    frames, size = FAMILIES[net_name]
    model = get_model_by_name(net_name, num_classes=3, clip_length=frames, sifa_kernel=[3] if "swin" in net_name
                              else [1, 3, 3, 3])
    outputs = model(torch.randn(1, 3, frames, size, size))
    sum(o.sum() for o in outputs).backward()
    unused = {id(p) for m in model.modules() if hasattr(m, "unused_parameters") for p in m.unused_parameters()}
    assert [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in unused and p.grad is None] == []
    assert [n for n, p in model.named_parameters() if id(p) in unused and p.grad is not None] == []


def test_sifa_swin_declares_unused_only_the_temporal_path_each_block_skips():
    model = get_model_by_name("c2d_sifa_swin_vit_s_p4_w7", num_classes=3, clip_length=8)
    unused = {n for m_name, m in model.named_modules() if hasattr(m, "unused_parameters")
              for n, p in m.named_parameters(prefix=m_name) if any(p is q for q in m.unused_parameters())}
    # Swin-S: 24 blocks; the 11 shifted ones (the last stage's 7×7 map allows no shift) skip
    # tda_norm, the 13 others the temporal conv: 35 parameters, trainable as in the original's listing
    assert len(unused) == 35
    assert sum(n.endswith("tda_norm.weight") or n.endswith("tda_norm.bias") for n in unused) == 22
    assert sum(n.endswith(".conv.weight") for n in unused) == 13
    assert "layers.0.blocks.0.tda_norm.weight" not in unused and "layers.0.blocks.1.conv.weight" not in unused
    assert all(p.requires_grad for n, p in model.named_parameters() if n in unused)


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
