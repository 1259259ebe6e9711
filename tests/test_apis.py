"""sifa.apis: the Python inference API, scored as --eval_only scores, on every input form; the per-class
report of --eval_only; batch and windowed prediction through the predict tool."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import yaml

from sifa.apis import inference_recognizer, inference_windows, init_recognizer, preprocess, video_scores
from sifa.config import load_config
from sifa.data import synthetic
from sifa.data.storage import read_frame_folder, storage_of, write_frame_folder, write_video_file
from sifa.data.video_io import decode_all
from sifa.engine.evaluate import EvalResult, class_report
from sifa.errors import InputError
from sifa.models.build import build_model
from sifa.tools import predict, train

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def recognizer(tiny_data, tmp_path_factory):
    """A c2d_sifa_resnet50 (8 frames, 32 px, 3 classes) with seeded random weights saved as a bare state dict,
    and its config: 2 clips x 1 centre crop per video."""
    root = tmp_path_factory.mktemp("apis")
    config = {"dataset": {"format": "FRAME", "root_path": tiny_data["root_path"], "list_file": tiny_data["train_list"],
                          "eva_list_file": tiny_data["val_list"], "class_name_file": tiny_data["class_names"],
                          "num_classes": NUM_CLASSES, "crop_size": 32, "eva_crop_size": 32, "eva_num_crop": 1,
                          "num_workers": 0},
              "sampler": {"clip_length": 8, "batch_size": 4, "eva_num_clips": 2},
              "network": {"net_name": "c2d_sifa_resnet50"},
              "logging": {"output_dir": str(root / "out")}}
    config_file = root / "tiny.yml"
    config_file.write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    model = build_model(load_config(config_file), 1)
    weights = root / "weights.pth"
    torch.save(model.state_dict(), weights)
    return {"root": root, "config": str(config_file), "weights": str(weights), "data": tiny_data}


@pytest.fixture(scope="module")
def model(recognizer):
    torch.set_num_threads(2)
    return init_recognizer(recognizer["config"], recognizer["weights"])


def val_videos(data):
    with open(data["val_list"]) as f:
        records = [line.split() for line in f if line.strip()]
    return [(os.path.join(data["root_path"], path), int(label)) for path, _, label in records]


def test_api_scores_equal_eval_only_and_predict_on_a_list(recognizer, model, tmp_path):
    out = recognizer["root"] / "out"
    torch.set_num_threads(2)
    train.main(["--config_file", recognizer["config"], "--eval_only", recognizer["weights"]])
    saved = torch.load(out / "eval_only_scores.pt", weights_only=True)
    videos = val_videos(recognizer["data"])
    assert saved["labels"].tolist() == [label for _, label in videos]
    api = np.stack([video_scores(model, path) for path, _ in videos])
    np.testing.assert_allclose(api, saved["scores"].numpy(), rtol=0, atol=1e-6)
    names = open(recognizer["data"]["class_names"]).read().split()
    ranking = inference_recognizer(model, videos[0][0])
    assert [entry["label"] for entry in ranking] == np.argsort(-api[0], kind="stable").tolist()
    assert [entry["name"] for entry in ranking] == [names[entry["label"]] for entry in ranking]
    assert sum(entry["probability"] for entry in ranking) == pytest.approx(1.0)

    # the predict tool on the list file (its first fields, relative to --root): one JSON of every video
    results = predict.main(["--config_file", recognizer["config"], "--checkpoint", recognizer["weights"],
                            "--list", recognizer["data"]["val_list"], "--root", recognizer["data"]["root_path"],
                            "--top_k", "3", "--out", str(tmp_path / "all.json")])
    written = json.loads((tmp_path / "all.json").read_text())
    assert written == results and [r["input"] for r in written] == [path for path, _ in videos]
    for result, scores in zip(written, saved["scores"].numpy()):
        by_label = {entry["label"]: entry["probability"] for entry in result["classes"]}
        assert by_label == pytest.approx(dict(enumerate(scores)), abs=1e-6)

    # --eval_only's per-class report agrees with its own scores
    report = json.loads((out / "eval_only_per_class.json").read_text())
    predicted = saved["scores"].numpy().argmax(axis=1)
    for true, row in enumerate(report["confusion_matrix"]):
        assert row == [int(((saved["labels"].numpy() == true) & (predicted == p)).sum()) for p in range(NUM_CLASSES)]
    assert os.path.getsize(out / "eval_only_confusion.png") > 2000
    accuracy = json.loads((out / "eval_only_accuracy.json").read_text())
    assert "top3" in accuracy and "top5" not in accuracy  # named by the real k: 3 classes


def test_array_input_equals_file_input_and_preprocess_is_the_networks_input(recognizer, model, tmp_path):
    frames = synthetic.render_video(1, 12, 40, np.random.default_rng(3))
    video = str(tmp_path / "clip.avi")
    write_video_file(video, frames)
    decoded = np.stack(list(decode_all(video)))
    assert decoded.shape == (12, 40, 40, 3)
    np.testing.assert_array_equal(video_scores(model, decoded), video_scores(model, video))
    folder = str(tmp_path / "frames")
    write_frame_folder(folder, frames)
    from_folder = np.stack(read_frame_folder(folder, range(1, 13)))
    np.testing.assert_array_equal(video_scores(model, from_folder), video_scores(model, folder))

    batch = preprocess(decoded, model.cfg)
    assert batch.shape == (2, 3, 8, 32, 32) and batch.dtype == torch.float32  # 2 clips x 1 crop
    with torch.no_grad():
        heads = model(batch)
    expected = torch.stack([head.softmax(1) for head in heads]).mean(0).mean(0).double().numpy()
    np.testing.assert_allclose(video_scores(model, decoded), expected, rtol=0, atol=1e-6)

    with pytest.raises(InputError, match=r"T x H x W x 3 uint8.*\(12, 40, 40\) of uint8"):
        video_scores(model, decoded[..., 0])


def test_class_report_on_a_known_confusion():
    # 4 classes; class 3 has no video. Top-1 predictions: 0 0 1 | 1 2 | 2
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    scores = np.full((6, 4), 0.1)
    scores[np.arange(6), predicted] = 0.7
    report = class_report(EvalResult(top1=0.0, topk=0.0, scores=scores, labels=labels), ["a", "b", "c", "d"])
    assert report["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert [c["num_videos"] for c in report["per_class"]] == [3, 2, 1, 0]
    assert [c["top1"] for c in report["per_class"]] == [pytest.approx(200 / 3), 50.0, 100.0, None]
    assert [c["name"] for c in report["per_class"]] == ["a", "b", "c", "d"]


def test_windowed_predict_on_a_long_video(recognizer, model, tmp_path):
    # 4 s at 25 fps whose motion changes halfway: moving left for 2 s, then moving right
    rng = np.random.default_rng(5)
    frames = synthetic.render_video(0, 50, 32, rng) + synthetic.render_video(1, 50, 32, rng)
    video = str(tmp_path / "long.avi")
    write_video_file(video, frames, fps=25.0)
    annotated = str(tmp_path / "annotated.mp4")
    results = predict.main(["--config_file", recognizer["config"], "--checkpoint", recognizer["weights"],
                            "--input", video, "--window", "2", "--stride", "1", "--annotate", annotated,
                            "--out", str(tmp_path / "windows.csv"), "--opts", "eva_num_clips=1", "eva_num_crop=1"])
    (result,) = results
    assert result["fps"] == 25.0
    windows = result["windows"]
    assert [(w["start"], w["end"], w["first_frame"], w["num_frames"]) for w in windows] == \
        [(0.0, 2.0, 0, 50), (1.0, 3.0, 25, 50), (2.0, 4.0, 50, 50)]
    decoded = np.stack(list(decode_all(video)))
    single = init_recognizer(recognizer["config"], recognizer["weights"], opts=["eva_num_clips=1", "eva_num_crop=1"])
    for window in windows:
        cut = decoded[window["first_frame"]:window["first_frame"] + window["num_frames"]]
        expected = inference_recognizer(single, cut, top_k=5)
        assert [c["label"] for c in window["classes"]] == [c["label"] for c in expected]
        assert [c["probability"] for c in window["classes"]] == pytest.approx([c["probability"] for c in expected],
                                                                               abs=1e-12)
    with open(tmp_path / "windows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["start"]), float(r["end"])) for r in rows] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)]
    assert [r["name_1"] for r in rows] == [w["classes"][0]["name"] for w in windows]
    assert storage_of(annotated) == ("VIDEO", 100)
    # the API: a decoded array needs its frame rate; 1.5 s windows every 1.5 s of 100 frames: 2 windows of 38
    with pytest.raises(InputError, match="no frame rate"):
        inference_windows(single, decoded, 1.5, 1.5)
    assert [(w["first_frame"], w["num_frames"]) for w in inference_windows(single, decoded, 1.5, 1.5, fps=25)] == \
        [(0, 38), (38, 38)]
