"""inflate_2d: timm's and torchvision's 2-D networks as C2D video networks with SIFA layers between stages,
and the same through a configuration (net_name: timm/<name>)."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

from sifa.layers import SIFA, sifa_layers
from sifa.models import get_model_by_name, inflate_2d

NUM_CLASSES, FRAMES, SIZE = 5, 4, 32


def frame_average(net2d, video):
    """The 2-D network's logits of every frame of N×3×T×H×W clips, averaged over the frames."""
    N, _, T = video.shape[:3]
    frames = video.permute(0, 2, 1, 3, 4).reshape(N * T, *video.shape[1:2], *video.shape[3:])
    return net2d(frames).view(N, T, -1).mean(dim=1)


BACKBONES = {
    "timm resnet18": (lambda: timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES), [2, "layer3"],
                      ["layer2", "layer3"]),
    "timm convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=NUM_CLASSES),
                           [1, 2], ["stages.1", "stages.2"]),
    "timm efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=NUM_CLASSES),
                             ["blocks.2", 3], ["blocks.2", "blocks.4"]),
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES), [2, 3],
                             ["layer2", "layer3"]),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_inflated_network_starts_as_the_frame_averaged_2d_network_and_learns_offsets(backbone):
    make, stages, stage_modules = BACKBONES[backbone]
    torch.manual_seed(0)
    net2d = make()
    reference = copy.deepcopy(net2d).eval()
    net = inflate_2d(net2d, FRAMES, stages)
    assert net.sifa_stages == stage_modules
    layers = sifa_layers(net)
    assert len(layers) == 2 and all(isinstance(layer, SIFA) for layer in layers.values())
    # the 2-D network's own state-dict keys stay, under backbone.
    assert {"backbone." + key for key in reference.state_dict()} <= set(net.state_dict())
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        (logits,) = net.eval()(video)
        assert logits.shape == (2, NUM_CLASSES)
        torch.testing.assert_close(logits, frame_average(reference, video), rtol=0, atol=0)
    video = video[:1]
    # one training step switches the SIFA branches on; then every conv_offset gets a gradient
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(video)[0], torch.tensor([1])).backward()
        optimizer.step()
    for name, layer in layers.items():
        assert layer.conv_offset.weight.grad.abs().sum() > 0, name
    with torch.no_grad():
        assert not torch.allclose(net.eval()(video)[0], frame_average(reference, video))


def test_plain_c2d_and_a_new_classifier():
    torch.manual_seed(0)
    net2d = timm.create_model("resnet18", pretrained=False)
    net = inflate_2d(net2d, FRAMES, [], num_classes=3).eval()
    assert sifa_layers(net) == {} and net2d.fc.out_features == 3
    video = torch.randn(1, 3, 6, SIZE, SIZE)  # no SIFA layer: any number of frames
    with torch.no_grad():
        torch.testing.assert_close(net(video)[0], frame_average(net2d.eval(), video))
        features = net.forward_features(video)
        assert [tuple(f.shape) for f in features] == [(1, 512, 6, 1, 1)]
        torch.testing.assert_close(net.forward_head(features)[0], net(video)[0])


def test_bad_stages_name_the_stages_there_are():
    with pytest.raises(ValueError, match=r"sifa_stages: 'layer5' is not a stage of the network; its stages: "
                                         r"0 \(act1\), 1 \(layer1\), 2 \(layer2\), 3 \(layer3\), 4 \(layer4\)"):
        inflate_2d(timm.create_model("resnet18", pretrained=False), FRAMES, ["layer5"])
    with pytest.raises(ValueError, match=r"stage act1 \(ReLU\) is not a sequence of blocks"):
        inflate_2d(timm.create_model("resnet18", pretrained=False), FRAMES, [0])
    with pytest.raises(ValueError, match="names a stage twice"):
        inflate_2d(timm.create_model("resnet18", pretrained=False), FRAMES, [2, "layer2"])


def test_registry_builds_timm_networks_by_name():
    torch.manual_seed(0)
    net = get_model_by_name("timm/resnet18", num_classes=NUM_CLASSES, clip_length=FRAMES, sifa_stages=[3],
                            offset_mode="zero")
    assert net.name == "timm/resnet18" and net.sifa_stages == ["layer3"]
    (layer,) = sifa_layers(net).values()
    assert layer.offset_mode == "zero" and layer.def_cor.weight.shape == (256, FRAMES, 3, 3)
    with pytest.raises(ValueError, match="unknown network 'resnet18'; known: .*timm/<name>"):
        get_model_by_name("resnet18")


def test_complexity_takes_the_sifa_stages(capsys):
    from sifa.tools import complexity

    complexity.main(["--net_name", "timm/resnet18", "--sifa_stages", "2", "layer3", "--clip_length", "4",
                     "--crop_size", "32", "--num_classes", "3"])
    model = get_model_by_name("timm/resnet18", num_classes=3, clip_length=4, sifa_stages=[2, 3])
    out = capsys.readouterr().out
    assert f"({sum(p.numel() for p in model.parameters())};" in out
    assert f"GFLOPs per view: {complexity.count_flops(model.eval(), torch.randn(1, 3, 4, 32, 32)) / 1e9:.2f}" in out


def test_activation_checkpointing_gives_the_plain_gradients():
    torch.manual_seed(0)
    net = get_model_by_name("timm/resnet18", num_classes=NUM_CLASSES, clip_length=FRAMES, sifa_stages=[2])
    for layer in sifa_layers(net).values():  # switch the SIFA branch on
        torch.nn.init.ones_(layer.norm.weight)
    checkpointed = copy.deepcopy(net)
    checkpointed.set_grad_checkpointing()
    video = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    grads = []
    for model in (net, checkpointed):
        model.eval()  # BatchNorm's statistics fixed: both runs see the same network
        model(video)[0].sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("conv_offset" in name for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# ------------------------------------------------------------------------- net_name: timm/<name> from YAML
@pytest.fixture(scope="module")
def timm_run(tmp_path_factory, tiny_data):
    """timm/resnet18 with SIFA after layer2 and layer3, trained 2 epochs on the tiny synthetic set."""
    from helpers import tiny_config, train

    root = tmp_path_factory.mktemp("timm_run")
    config = tiny_config(root, tiny_data, network={"net_name": "timm/resnet18", "dropout_ratio": 0.0},
                         SIFA={"sifa_stages": [2, "layer3"]})
    train(config)
    return {"root": root, "config": str(config), "checkpoint": str(root / "out" / "current.pth"), "data": tiny_data}


@pytest.mark.slow  # a training run, then every tool on its checkpoint
def test_yaml_network_through_eval_predict_export_complexity_and_visualize(timm_run, capsys):
    import os

    from sifa.apis import preprocess
    from sifa.models.build import network_from_checkpoint
    from sifa.tools import complexity, predict, train, visualize

    config, checkpoint = timm_run["config"], timm_run["checkpoint"]
    model, cfg = network_from_checkpoint(checkpoint)
    assert model.name == "timm/resnet18" and model.sifa_stages == ["layer2", "layer3"]
    assert any(layer.norm.weight.abs().sum() > 0 for layer in sifa_layers(model).values())  # trained away from 0

    train.main(["--config_file", config, "--eval_only", checkpoint])
    scores = torch.load(timm_run["root"] / "out" / "eval_only_scores.pt", weights_only=True)
    assert len(scores["labels"]) == 6  # 3 classes × 2 validation videos

    video = os.path.join(timm_run["data"]["root_path"], os.listdir(timm_run["data"]["root_path"])[0], "val_0000")
    (result,) = predict.main(["--config_file", config, "--checkpoint", checkpoint, "--input", video])
    with torch.no_grad():  # the mean softmax over the test views, from the rebuilt network
        expected = model(preprocess(video, cfg))[0].softmax(dim=1).mean(dim=0)
    assert {entry["label"]: entry["probability"] for entry in result["classes"]} == pytest.approx(
        dict(enumerate(expected.tolist())), abs=1e-5)

    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from sifa.tools import export

    difference = export.main(["--config_file", config, "--checkpoint", checkpoint, "--format", "onnx",
                              "--out", str(timm_run["root"] / "net.onnx")])
    assert difference < 1e-4

    capsys.readouterr()
    complexity.main(["--config_file", config])
    assert f"({sum(p.numel() for p in model.parameters())};" in capsys.readouterr().out

    out = timm_run["root"] / "vis"
    written = visualize.main(["--config_file", config, "--checkpoint", checkpoint, "--input", video,
                              "--out", str(out), "--points", "2", "--clip_to_image"])
    # 8 frames, one feature frame each: 7 frame pairs per layer
    assert written == [str(out / f"backbone.{stage}.2.sifa_t{t}.png") for stage in ("layer2", "layer3")
                       for t in range(7)]
    assert all(os.path.getsize(path) > 1000 for path in written)


def test_config_errors_name_the_key(tmp_path):
    import yaml

    from sifa.config import load_config
    from sifa.errors import ConfigError
    from sifa.models import check_model_config

    setting = tmp_path / "timm.yml"
    setting.write_text(yaml.safe_dump({"network": {"net_name": "timm/resnet18"},
                                       "dataset": {"crop_size": 64, "eva_crop_size": 64}}))
    with pytest.raises(ConfigError, match=r"key 'sifa_stages' must list the stages of timm/resnet18 that SIFA layers "
                                          r"follow \(\[\] for the plain C2D network\), by index or name: 0 \(act1\)"):
        check_model_config(load_config(setting))
    with pytest.raises(ConfigError, match=r"key 'sifa_stages' 7 is not a stage of the network"):
        check_model_config(load_config(setting, ["sifa_stages=[7]"]))
    with pytest.raises(ConfigError, match=r"key 'net_name' names 'no_such_net', which timm .* lacks"):
        check_model_config(load_config(setting, ["net_name=timm/no_such_net", "sifa_stages=[]"]))
    with pytest.raises(ConfigError, match=r"key 'sifa_stages' is \[2\], but only timm/<name> take it; net_name is "
                                          r"'c2d_sifa_resnet50'"):
        check_model_config(load_config(setting, ["net_name=c2d_sifa_resnet50", "sifa_stages=[2]"]))
    with pytest.raises(ConfigError, match=r"key 'sifa_kernel' must list 1 kernel size\(s\) for timm/resnet18"):
        check_model_config(load_config(setting, ["sifa_stages=[2]", "sifa_kernel=[3, 3]"]))
    check_model_config(load_config(setting, ["sifa_stages=[2, layer3]", "offset_guide=plain"]))


def test_imagenet_weights_of_the_2d_network_load_from_a_local_file(tmp_path):
    from types import SimpleNamespace

    from sifa.models.build import load_pretrained

    torch.manual_seed(1)
    weights = timm.create_model("resnet18", pretrained=False).state_dict()  # stands for resnet18.a1_in1k's file
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    net = get_model_by_name("timm/resnet18", num_classes=3, clip_length=FRAMES, sifa_stages=[3])
    cfg = SimpleNamespace(pretrained_model=str(path), transfer_weights=True, remove_fc=True,
                          remove_defcor_weight=False, net_name="timm/resnet18")
    load_pretrained(net, cfg)
    state = net.state_dict()
    assert all(torch.equal(state["backbone." + key], value) for key, value in weights.items()
               if not key.startswith("fc."))
    assert state["backbone.fc.weight"].shape == (3, 512)  # the new classifier, not ImageNet's


@pytest.mark.slow  # 2 processes launched
def test_two_process_training_with_accumulation(tmp_path, tiny_data):
    """DDP without find_unused_parameters: every parameter of the inflated network takes a gradient at every
    step (conv_offset's is zero at the first, behind the zero branch norm, but not missing)."""
    from helpers import launch, tiny_config

    from sifa.checkpoint_file import load_checkpoint

    config = tiny_config(tmp_path, tiny_data, network={"net_name": "timm/resnet18", "dropout_ratio": 0.0},
                         SIFA={"sifa_stages": [2, 3]})
    launch(2, config, "--opts", "epochs=1", "eva_inter=false", "batch_size=1", "iter_size=2")
    checkpoint = load_checkpoint(str(tmp_path / "out" / "current.pth"))
    assert checkpoint["epoch"] == 1
    assert checkpoint["model"]["backbone.layer3.2.sifa.norm.weight"].abs().sum() > 0  # the branch trained
