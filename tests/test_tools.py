"""Tools: predict, visualize and plot_log on a checkpoint trained here."""
import csv
import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from helpers import user_error
from sifa.apis import inference_recognizer, init_recognizer
from sifa.config import load_config
from sifa.data import synthetic
from sifa.data.storage import storage_of, write_frame_folder, write_lmdb, write_video_file
from sifa.data.transforms import EvalClipTransform
from sifa.engine.distributed import DistContext
from sifa.engine.trainer import Trainer
from sifa.errors import CheckpointMismatchError, InputError
from sifa.models import get_model_by_name
from sifa.ops import previous_frame, reference
from sifa.tools import plot_log, predict, visualize

pytestmark = pytest.mark.slow  # a network trained here, then predicted and visualized

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NUM_CLASSES = 6
CROP = 64
CLIP_LENGTH = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run of c2d_sifa_resnet50 (8 frames, 64 px, 6 classes) on a tiny synthetic set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tools")
    data = synthetic.generate(str(root / "data"), num_classes=NUM_CLASSES, videos_per_class=2,
                              val_videos_per_class=1, frames=CLIP_LENGTH, size=CROP, seed=0)
    config = {"dataset": {"format": "FRAME", "root_path": data["root_path"], "list_file": data["train_list"],
                          "eva_list_file": data["val_list"], "class_name_file": data["class_names"],
                          "num_classes": NUM_CLASSES, "crop_size": CROP, "eva_crop_size": CROP, "eva_num_crop": 3,
                          "num_workers": 0, "no_horizontal_flip": True},
              "optimizer": {"base_learning_rate": 0.02, "warmup_epoch": 1, "epochs": 2, "clip_gradient": 5.0},
              "sampler": {"clip_length": CLIP_LENGTH, "batch_size": 4, "num_clips": 1, "eva_num_clips": 2},
              "network": {"net_name": "c2d_sifa_resnet50", "dropout_ratio": 0.2},
              "logging": {"output_dir": str(root / "out"), "print_freq": 1, "save_freq": 1}}
    config_file = root / "tiny.yml"
    config_file.write_text(yaml.safe_dump(config))
    trainer = Trainer(load_config(config_file), CPU)
    trainer.train()
    trainer.close()
    torch.set_num_threads(threads)
    return {"root": root, "data": data, "config": config_file, "checkpoint": str(root / "out" / "current.pth"),
            "output_dir": str(root / "out")}


def trained_model(run):
    model = get_model_by_name("c2d_sifa_resnet50", num_classes=NUM_CLASSES, clip_length=CLIP_LENGTH)
    model.load_state_dict(torch.load(run["checkpoint"], weights_only=True)["model"])
    return model.eval()


@pytest.fixture(scope="module")
def wide_video(run):
    """A 16-frame 64x96 video file: 2 clips x 3 distinct crops at 64 px."""
    rng = np.random.default_rng(7)
    frames = [cv2.resize(f, (96, 64), interpolation=cv2.INTER_AREA) for f in synthetic.render_video(2, 16, 64, rng)]
    path = str(run["root"] / "wide video.avi")
    write_video_file(path, frames)
    return path


def independent_scores(model, video_path):
    """Softmax of both heads averaged over 2 clips x 3 crops, placed by the test-clip formula (docs/design.md §7.2)."""
    capture = cv2.VideoCapture(video_path)
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    capture.release()
    duration, extent, num_clips = len(decoded), CLIP_LENGTH, 2
    transform = EvalClipTransform(CROP, 3)
    probabilities = []
    for clip_index in range(num_clips):
        offset = (duration - extent) * clip_index // num_clips
        frames = decoded[offset:offset + CLIP_LENGTH]
        for crop_index in range(3):
            with torch.no_grad():
                heads = model(transform(frames, crop_index).unsqueeze(0))
            probabilities.append(torch.stack([h.softmax(1)[0] for h in heads]).mean(0))
    return torch.stack(probabilities).mean(0).double()


# ----------------------------------------------------------------------------------------------- predict
def test_predict_matches_the_models_own_forward_over_all_views(run, wide_video, capsys):
    (result,) = predict.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                              "--input", wide_video])
    ranking = result["classes"]
    expected = independent_scores(trained_model(run), wide_video)
    order = torch.argsort(expected, descending=True)[:5]
    assert [entry["label"] for entry in ranking] == order.tolist()
    assert [entry["probability"] for entry in ranking] == pytest.approx(expected[order].tolist(), abs=1e-5)
    assert 0 < sum(entry["probability"] for entry in ranking) < 1  # 6 classes: the 6th has the rest
    names = open(run["data"]["class_names"]).read().split()
    assert [entry["name"] for entry in ranking] == [names[i] for i in order]
    printed = capsys.readouterr().out.splitlines()
    assert "6 view(s)" in printed[0] and printed[1] == f"{wide_video}:" and len(printed) == 7
    assert printed[2].startswith(f"1. {names[order[0]]}")


def test_predict_on_a_frame_folder_without_class_names(run):
    model = init_recognizer(run["config"], run["checkpoint"], opts=["class_name_file=", "eva_num_crop=1",
                                                                    "eva_num_clips=1"])
    video = os.path.join(run["data"]["root_path"], "moving_left", "val_0000")
    ranking = inference_recognizer(model, video)
    assert [entry["name"] for entry in ranking] == [str(entry["label"]) for entry in ranking]
    frames = [cv2.cvtColor(cv2.imread(os.path.join(video, f"{i:05d}.jpg")), cv2.COLOR_BGR2RGB) for i in range(1, 9)]
    with torch.no_grad():
        heads = trained_model(run)(EvalClipTransform(CROP)(frames).unsqueeze(0))
    expected = torch.stack([h.softmax(1)[0] for h in heads]).mean(0)
    assert ranking[0]["label"] == int(expected.argmax())
    assert ranking[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_predict_on_a_folder_of_inputs_writes_one_csv(run, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    videos = [os.path.join(run["data"]["root_path"], name, "val_0000") for name in ("moving_left", "moving_up")]
    for index, video in enumerate(videos):
        os.symlink(video, folder / f"video{index}")
    (folder / "zz_garbage.mp4").write_bytes(b"not a video at all")
    opts = ["eva_num_crop=1", "eva_num_clips=1"]
    results = predict.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                            "--input", str(folder), "--top_k", "2", "--out", str(tmp_path / "all.csv"),
                            "--opts", *opts])
    with open(tmp_path / "all.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["input"] for row in rows] == [str(folder / "video0"), str(folder / "video1"),
                                              str(folder / "zz_garbage.mp4")]
    model = init_recognizer(run["config"], run["checkpoint"], opts=opts)
    for row, video in zip(rows, videos):
        expected = inference_recognizer(model, video, top_k=2)
        assert [int(row["label_1"]), int(row["label_2"])] == [entry["label"] for entry in expected]
        assert float(row["probability_1"]) == pytest.approx(expected[0]["probability"], abs=1e-12)
        assert row["error"] == ""
    assert "zz_garbage.mp4" in rows[2]["error"] and rows[2]["label_1"] == "" and "error" in results[2]


def test_predict_reports_unreadable_inputs_by_path(run, tmp_path, capsys):
    model = init_recognizer(run["config"], run["checkpoint"])
    missing = str(tmp_path / "no such video.mp4")
    with pytest.raises(InputError, match="no such video.mp4"):
        inference_recognizer(model, missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="garbage.mp4"):
        inference_recognizer(model, str(garbage))
    (tmp_path / "empty_folder").mkdir()
    with user_error(capsys, "empty_folder"):
        predict.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                      "--input", str(tmp_path / "empty_folder")])
    with user_error(capsys, "no frame rate of its own"):
        predict.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"], "--window", "1",
                      "--input", os.path.join(run["data"]["root_path"], "moving_left", "val_0000")])


def test_predict_names_the_keys_of_a_checkpoint_that_does_not_fit(run, tmp_path, capsys):
    video = os.path.join(run["data"]["root_path"], "moving_left", "val_0000")
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight \(6, 2048\) vs \(5, 2048\)"):
        init_recognizer(run["config"], run["checkpoint"], opts=["num_classes=5", "class_name_file="])
    state = torch.load(run["checkpoint"], weights_only=True)["model"]
    del state["layer2.1.conv_offset.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with user_error(capsys, r"missing keys: layer2\.1\.conv_offset\.weight.*unexpected keys: extra\.weight"):
        predict.main(["--config_file", str(run["config"]), "--checkpoint", str(tmp_path / "broken.pth"),
                      "--input", video])
    with open(run["checkpoint"], "rb") as f:
        (tmp_path / "truncated.pth").write_bytes(f.read(1000))
    for tool, extra in ((predict, []), (visualize, ["--out", str(tmp_path / "vis")])):
        with user_error(capsys, f"error: {tmp_path / 'truncated.pth'} is truncated or damaged"):
            tool.main(["--config_file", str(run["config"]), "--checkpoint", str(tmp_path / "truncated.pth"),
                       "--input", video, *extra])


def test_input_storage_is_detected_and_counted(tmp_path):
    frames = synthetic.render_video(0, 5, 32, np.random.default_rng(0))
    write_frame_folder(str(tmp_path / "frames"), frames)
    write_lmdb(str(tmp_path / "lmdb"), frames)
    write_video_file(str(tmp_path / "clip.avi"), frames)
    assert storage_of(str(tmp_path / "frames")) == ("FRAME", 5)
    assert storage_of(str(tmp_path / "lmdb")) == ("LMDB", 5)
    assert storage_of(str(tmp_path / "clip.avi")) == ("VIDEO", 5)
    assert all(predict.is_one_video(str(tmp_path / name)) for name in ("frames", "lmdb", "clip.avi"))
    assert not predict.is_one_video(str(tmp_path))


# --------------------------------------------------------------------------------------------- visualize
def test_visualize_marks_the_offsets_the_model_computes(run, tmp_path):
    video = os.path.join(run["data"]["root_path"], "rotating_clockwise", "val_0000")
    out = tmp_path / "vis"
    written = visualize.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                              "--input", video, "--out", str(out), "--block", "layer2.1", "--points", "3"])
    assert written == [str(out / "layer2.1_t0.png")]
    assert (out / "layer2.1_t0.png").stat().st_size > 1000 and (out / "clip.gif").stat().st_size > 1000
    record = json.loads((out / "layer2.1_t0.json").read_text())
    assert (record["stride"], record["feature_size"], record["query_frame"], record["key_frame"]) == (8, [8, 8], 0, 1)
    assert len(record["points"]) == 3 and all(len(p["taps"]) == 9 for p in record["points"])

    # Hook-free recomputation from the block input (captured by the test's own hook) on the first view.
    model = trained_model(run)
    block = model.layer2[1]
    captured = {}
    handle = block.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    frames = [cv2.cvtColor(cv2.imread(os.path.join(video, f"{i:05d}.jpg")), cv2.COLOR_BGR2RGB) for i in range(1, 9)]
    with torch.no_grad():
        model(EvalClipTransform(CROP, 3)(frames, 0).unsqueeze(0))
        handle.remove()
        f = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(captured["x"]))))))
        guide = torch.sigmoid(f - previous_frame(f)) * f + f
        offset = block.conv_offset(guide)
        scores = reference.defcor(f, offset, block.def_cor.weight, padding=1)
    point = record["points"][1]
    h, w = point["query"]["feature"]
    for tap in point["taps"]:
        k, i, j = tap["tap"], tap["row"], tap["col"]
        # Frame 0 attends to frame 1: offsets and scores of frame t+1 = 1.
        y = h - 1 + i + float(offset[0, 2 * k, 1, h, w])
        x = w - 1 + j + float(offset[0, 2 * k + 1, 1, h, w])
        assert tap["image"] == pytest.approx([(y + 0.5) * 8 - 0.5, (x + 0.5) * 8 - 0.5], abs=1e-4)
        assert tap["score"] == pytest.approx(float(scores[0, k, 1, h, w]), rel=1e-4, abs=1e-6)
    assert point["query"]["image"] == [(h + 0.5) * 8 - 0.5, (w + 0.5) * 8 - 0.5]
    # The offsets are not all zero, so the check above tells deformed from regular positions.
    assert offset[0, :, 1].abs().max() > 1e-3


def test_visualize_defaults_to_every_sifa_block(run, tmp_path, capsys):
    video = os.path.join(run["data"]["root_path"], "moving_up", "val_0000")
    written = visualize.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                              "--input", video, "--out", str(tmp_path), "--points", "2"])
    # 8 frames: the main branch has 2 feature frames, layer4_dual only 1 (nothing to attend to).
    blocks = ["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5", "layer4.1"]
    assert written == [str(tmp_path / f"{b}_t0.png") for b in blocks]
    assert all(os.path.getsize(p) > 1000 for p in written)
    assert "layer4_dual.1: skipped" in capsys.readouterr().out
    layer4 = json.loads((tmp_path / "layer4.1_t0.json").read_text())
    assert layer4["stride"] == 32 and layer4["feature_size"] == [2, 2] and len(layer4["points"]) == 2
    with user_error(capsys, "layer2.0"):
        visualize.main(["--config_file", str(run["config"]), "--checkpoint", run["checkpoint"],
                        "--input", video, "--out", str(tmp_path), "--block", "layer2.0"])


def test_tap_geometry_helpers():
    assert visualize.block_stride(64, 8) == 8 and visualize.block_stride(112, 4) == 32
    assert visualize.feature_to_image(0, 8) == 3.5 and visualize.feature_to_image(-1.25, 4) == -3.5
    assert visualize.query_pixels(8, 8, 4) == [(2, 2), (2, 6), (6, 2), (6, 6)]
    assert visualize.query_pixels(2, 2, 9) == [(0, 0), (0, 1), (1, 0), (1, 1)]


# ---------------------------------------------------------------------------------------------- plot_log
def test_plot_log_draws_the_run_curves(run, tmp_path, capsys):
    path = plot_log.main(["--output_dir", run["output_dir"], "--out", str(tmp_path / "curves.png")])
    assert os.path.getsize(path) > 5000
    printed = capsys.readouterr().out
    for tag in ("train/loss", "train/lr", "train/epoch_loss", "val/top1", "val/top5"):
        assert tag in printed
    series = plot_log.read_scalars(run["output_dir"])
    assert series["val/top1"][0] == [1, 2] and len(series["train/lr"][0]) == 6  # 2 epochs x 3 iterations
    (tmp_path / "empty").mkdir()
    with user_error(capsys, "no TensorBoard event files"):
        plot_log.main(["--output_dir", str(tmp_path / "empty")])


def test_plot_log_draws_the_top_k_a_run_of_few_classes_logs(tmp_path):
    # a run of 3 classes logs val/top3 (top-5 of 3 classes would always be 100): the accuracy panel shows it
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for epoch, (top1, top3) in enumerate([(40.0, 90.0), (55.0, 100.0)], start=1):
            writer.add_scalar("val/top1", top1, epoch)
            writer.add_scalar("val/top3", top3, epoch)
        writer.add_scalar("eval_only/top3", 95.0, 2)
    plotted = plot_log.plot_curves(plot_log.read_scalars(str(tmp_path)), str(tmp_path / "curves.png"))
    assert plotted == ["eval_only/top3", "val/top1", "val/top3"]
