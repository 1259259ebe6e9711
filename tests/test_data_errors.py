"""Data errors that name the problem, and skip_bad_samples."""
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import run_command, tiny_config, train
from sifa.checkpoint_file import load_checkpoint
from sifa.config import load_config
from sifa.data import (BadSampleError, ListFileError, VideoDataset, collate_samples, read_class_names,
                       read_list_file, synthetic)
from sifa.data.build import prepare_synthetic_data
from sifa.data.storage import frame_file_name, storage_of, write_frame_folder, write_lmdb
from sifa.data.transforms import EvalClipTransform, TrainClipTransform
from sifa.engine.distributed import DistContext
from sifa.engine.evaluate import evaluate
from sifa.errors import ConfigError, InputError
from sifa.tools import prepare


def frames(count, height=24, width=32):
    return [np.full((height, width, 3), 10 * i, np.uint8) for i in range(count)]


@pytest.fixture
def frame_set(tmp_path):
    """Three FRAME videos of 8 frames listed in list.txt; the second's frame 3 is of another size."""
    root = tmp_path / "frames"
    for name in ("a", "b", "c"):
        write_frame_folder(str(root / name), frames(8))
    write_frame_folder(str(tmp_path / "wide"), frames(8, width=40))
    shutil.copy(tmp_path / "wide" / frame_file_name(3), root / "b" / frame_file_name(3))
    (tmp_path / "list.txt").write_text("a 8 0\nb 8 1\nc 8 2\n")
    return tmp_path


# ---------------------------------------------------------------------------------------- list files
def test_a_latin1_or_binary_list_file_names_the_file_and_line(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a 8 0\ncaf\u00e9/clip 8 1\n".encode("latin-1"))
    with pytest.raises(ListFileError, match=r"latin1\.txt, line 2: byte 0xe9 is not UTF-8 text; a list file must "
                                            r"be UTF-8"):
        read_list_file(latin1)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ListFileError, match=r"binary\.txt, line 1: byte 0x89"):
        read_list_file(binary)
    with pytest.raises(ListFileError, match=r"latin1\.txt, line 2: .*a class-name file must be UTF-8"):
        read_class_names(latin1, 2)
    bom_latin1 = tmp_path / "bom_latin1.txt"
    bom_latin1.write_bytes(b"\xef\xbb\xbfa 8 0\nb 8 1\ncaf\xe9 8 2\n")
    with pytest.raises(ListFileError, match=r"bom_latin1\.txt, line 3: byte 0xe9"):
        read_list_file(bom_latin1)


def test_a_byte_order_mark_is_not_part_of_the_first_path_or_class_name(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffabseiling/clip 8 0\nb 8 1\n".encode("utf-8"))
    assert [r.path for r in read_list_file(path)] == ["abseiling/clip", "b"]
    names = tmp_path / "classes.txt"
    names.write_bytes("\ufeffabseiling\nair_drumming\n".encode("utf-8"))
    assert read_class_names(names, 2) == ["abseiling", "air_drumming"]


# -------------------------------------------------------------------------------------- bad samples
def test_a_frame_of_another_size_names_the_list_line_video_and_frame(frame_set):
    dataset = VideoDataset(str(frame_set / "list.txt"), str(frame_set / "frames"), "FRAME", 8, 1, 1,
                           EvalClipTransform(16), train=False)
    expected = (rf"list\.txt, line 2: video '.*frames/b': frame 3 \(00003\.jpg\) is 40x24 pixels, frame 1 32x24: "
                rf"all frames of a video must have one size")
    with pytest.raises(BadSampleError, match=expected):
        dataset[1]
    # From a data-loader worker the error keeps its type and its one line (not the worker's traceback).
    loader = DataLoader(dataset, batch_size=3, num_workers=1)
    with pytest.raises(BadSampleError) as err:
        next(iter(loader))
    assert "\n" not in str(err.value) and str(err.value).startswith(str(frame_set / "list.txt") + ", line 2: ")


def test_skip_bad_samples_replaces_in_training_and_leaves_out_in_evaluation(frame_set):
    os.remove(frame_set / "frames" / "c" / frame_file_name(5))
    train_set = VideoDataset(str(frame_set / "list.txt"), str(frame_set / "frames"), "FRAME", 8, 1, 1,
                             TrainClipTransform(16), train=True, skip_bad_samples=True)
    torch.manual_seed(0)
    clip, label, video, skipped = train_set[1]
    assert video == 0 and label == 0 and clip.shape == (3, 8, 16, 16)  # the one readable video
    assert [index for index, _ in skipped][0] == 1 and all(index in (1, 2) for index, _ in skipped)
    assert "list.txt, line 2: video" in skipped[0][1]
    assert any("line 3: video" in message and "frame file '00005.jpg' not found" in message
               for _, message in train_set[2][3])

    eval_set = VideoDataset(str(frame_set / "list.txt"), str(frame_set / "frames"), "FRAME", 8, 1, 1,
                            EvalClipTransform(16), train=False, num_clips=2, skip_bad_samples=True)
    clips, labels, videos, skipped = collate_samples([eval_set[i] for i in range(len(eval_set))])
    assert videos.tolist() == [0, 0] and clips.shape == (2, 3, 8, 16, 16)
    assert sorted({index for index, _ in skipped}) == [1, 2]

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 16 * 16, 3))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = evaluate(OneHead(model), eval_set, 2, 0, 3, ctx)
    assert result.labels.tolist() == [0] and result.scores.shape == (1, 3)
    assert len(result.skipped) == 2 and "line 2" in result.skipped[0] and "line 3" in result.skipped[1]


class OneHead(torch.nn.Module):
    """A one-head network as the evaluation calls it: a list of logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, clips):
        return [self.model(clips)]


# ---------------------------------------------------------------------------------- training runs
@pytest.fixture
def damaged_data(tmp_path):
    """The tiny synthetic set with training video 2 missing a frame and validation video 1 a frame of
    another size."""
    data = synthetic.generate(str(tmp_path / "synthetic"), num_classes=3, videos_per_class=4,
                              val_videos_per_class=2, frames=8, size=32, seed=0)
    lines = {name: read_list_file(data[key]) for name, key in (("train", "train_list"), ("val", "val_list"))}
    train_video = os.path.join(data["root_path"], lines["train"][1].path)
    os.remove(os.path.join(train_video, frame_file_name(4)))
    val_video = os.path.join(data["root_path"], lines["val"][0].path)
    write_frame_folder(str(tmp_path / "wide"), frames(8, height=32, width=48))
    shutil.copy(tmp_path / "wide" / frame_file_name(6), os.path.join(val_video, frame_file_name(6)))
    data.update(train_video=train_video, val_video=val_video)
    return data


@pytest.mark.slow  # a training launch
def test_a_too_short_training_video_is_one_line_and_exit_status_2(tmp_path, tiny_data):
    # raised while the training set is built, before any process group or epoch
    result = run_command(tiny_config(tmp_path, tiny_data), "clip_length=16")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.fullmatch(r"error: .*train_list\.txt, line 1: video '.*' has 8 frames, fewer than clip_length x "
                        r"num_steps = 16; set loop_pad: true to wrap such videos around",
                        result.stderr.strip().splitlines()[-1]), result.stderr[-3000:]


@pytest.mark.slow  # a training run
def test_an_unreadable_validation_video_stops_after_the_epoch_is_saved(tmp_path, damaged_data):
    write_frame_folder(damaged_data["train_video"], frames(8, height=32, width=32))  # training reads all
    # train_val_3d.py with a data-loader worker: one line, exit status 2, although the error is raised again
    # in the main process with the worker's traceback.
    result = run_command(tiny_config(tmp_path, damaged_data), "epochs=1", "iter_size=1", "num_workers=1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(r"error: epoch 1 validation: .*val_list\.txt, line 1: video '.*': frame 6 \(00006\.jpg\) is "
                        r"48x32 pixels, frame 1 32x32: all frames of a video must have one size; the epoch is saved "
                        r"in .*current\.pth; with skip_bad_samples: true .*", result.stderr.strip().splitlines()[-1])
    assert "Traceback" not in result.stderr
    assert load_checkpoint(str(tmp_path / "out" / "current.pth"))["epoch"] == 1


@pytest.mark.slow  # a training run
def test_skip_bad_samples_trains_on_and_lists_the_skipped_files(tmp_path, damaged_data):
    config = tiny_config(tmp_path, damaged_data)
    with pytest.raises(BadSampleError, match=r"epoch 1 training: .*train_list\.txt, line 2: video .*frame file "
                                             r"'00004\.jpg' not found; stopped without saving this epoch, no epoch "
                                             r"was saved; with skip_bad_samples"):
        train(config, "epochs=1", "iter_size=1")

    result = train(config, "epochs=1", "iter_size=1", "skip_bad_samples=true")
    assert result.labels.shape == (5,)  # 6 validation videos, one left out
    out = tmp_path / "out"
    [entry] = json.loads((out / "skipped_samples.json").read_text())
    assert entry["epoch"] == 1
    assert entry["train"] and all("train_list.txt, line 2: " in m and "'00004.jpg' not found" in m
                                  for m in entry["train"])
    [left_out] = entry["validation"]
    assert "val_list.txt, line 1: " in left_out and "frame 6 (00006.jpg) is 48x32" in left_out
    [validation] = json.loads((out / "val_accuracy.json").read_text())
    assert validation["num_videos"] == 5 and validation["skipped_samples"] == [left_out]
    log = (out / "log.txt").read_text()
    assert f"epoch 1 validation: left out: {left_out}" in log
    assert "epoch 1 train: replaced by another random sample: " + entry["train"][0] in log


# ---------------------------------------------------------------------------------------- tools
def test_predict_names_a_missing_middle_frame_of_a_frame_folder(tmp_path):
    write_frame_folder(str(tmp_path / "video"), frames(10))
    os.remove(tmp_path / "video" / frame_file_name(4))
    with pytest.raises(InputError, match=r"frame 00004\.jpg is missing, but 6 later frames \(up to 00010\.jpg\) "
                                         r"exist"):
        storage_of(str(tmp_path / "video"))


def test_prepare_warns_of_truncated_videos_and_empty_frame_folders(tmp_path, capsys):
    av = pytest.importorskip("av")
    source = tmp_path / "src" / "waving"
    source.mkdir(parents=True)
    # A header stating 40 frames at the start (faststart), as downloaded videos have, then the file cut short.
    container = av.open(str(source / "whole.mp4"), "w", options={"movflags": "faststart"})
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    noise = np.random.default_rng(0)
    for _ in range(40):
        image = noise.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())
    container.close()
    data = (source / "whole.mp4").read_bytes()
    (source / "cut.mp4").write_bytes(data[:int(len(data) * 0.3)])
    prepare.main(["videos", "--src", str(tmp_path / "src"), "--format", "VIDEO", "--list", str(tmp_path / "list.txt"),
                  "--classes", str(tmp_path / "classes.txt"), "--workers", "1"])
    err = capsys.readouterr().err
    decoded = read_list_file(tmp_path / "list.txt")
    assert {r.path: r.num_frames for r in decoded}["waving/whole.mp4"] == 40
    cut = {r.path: r.num_frames for r in decoded}["waving/cut.mp4"]
    assert 0 < cut < 40
    assert f"warning: {source / 'cut.mp4'}: only {cut} of the 40 frames its header states decode" in err
    assert "whole.mp4" not in err

    write_frame_folder(str(tmp_path / "frames" / "1"), frames(3))
    (tmp_path / "frames" / "2").mkdir()
    (tmp_path / "labels.csv").write_text("1;waving\n2;waving\n")
    prepare.main(["frames", "--src", str(tmp_path / "frames"), "--labels", str(tmp_path / "labels.csv"),
                  "--classes", str(tmp_path / "classes.txt"), "--list", str(tmp_path / "frames.txt")])
    assert f"warning: {tmp_path / 'labels.csv'}, line 2: frame folder {tmp_path / 'frames' / '2'} holds no .jpg " \
           f"frame; left out of the list" in capsys.readouterr().err
    assert (tmp_path / "frames.txt").read_text() == "1 3 0\n"


def test_a_list_path_that_is_a_folder_or_a_huge_frame_count_names_the_file_and_line(tmp_path):
    with pytest.raises(ListFileError, match=rf"cannot read list file {tmp_path}: Is a directory"):
        read_list_file(tmp_path)
    (tmp_path / "list.txt").write_text("a 8 0\nb 99999999999999999999 1\n")
    with pytest.raises(ListFileError, match=r"list\.txt, line 2: number of frames must lie in \[1, 2147483647\], got "
                                            r"99999999999999999999"):
        read_list_file(tmp_path / "list.txt")


def test_a_batch_larger_than_the_training_set_names_batch_size(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"tiny\.yml: key 'batch_size' \(13\) is larger than the 12 training videos "
                                          r"each of 1 process\(es\) gets"):
        train(tiny_config(tmp_path, tiny_data), "batch_size=13")


@pytest.fixture
def damaged_lmdb(tmp_path):
    """Five LMDB videos of 8 frames in list.txt: intact, empty data.mdb, not LMDB, cut short, a damaged page."""
    root = tmp_path / "lmdb"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("intact", "empty", "foreign", "cut", "page"):
        write_lmdb(str(root / name), [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(8)])
    data = {name: root / name / "data.mdb" for name in ("empty", "foreign", "cut", "page")}
    size = data["cut"].stat().st_size
    data["empty"].write_bytes(b"")
    data["foreign"].write_bytes(bytes(size))
    with open(data["cut"], "r+b") as f:
        f.truncate(size // 3)
    with open(data["page"], "r+b") as f:
        f.seek(2 * 4096)  # past the two header pages
        f.write(np.random.default_rng(1).bytes(8 * 4096))
    (tmp_path / "list.txt").write_text("intact 8 0\nempty 8 1\nforeign 8 2\ncut 8 0\npage 8 1\n")
    return tmp_path


def test_damaged_lmdb_environments_name_the_list_line_and_are_skipped(damaged_lmdb):
    # A data.mdb cut short used to kill the process with SIGBUS on the first read past its end.
    dataset = VideoDataset(str(damaged_lmdb / "list.txt"), str(damaged_lmdb / "lmdb"), "LMDB", 8, 1, 1,
                           EvalClipTransform(16), train=False)
    assert dataset[0][0].shape == (3, 8, 16, 16)
    for index, reason in [(1, "not a readable LMDB environment"), (2, "not a readable LMDB environment"),
                          (3, r"data\.mdb is cut short: \d+ bytes, its header counts \d+"),
                          (4, r"LMDB key '000001\.jpg' cannot be read \(.*MDB_")]:
        with pytest.raises(BadSampleError, match=rf"list\.txt, line {index + 1}: video '.*lmdb/.*': {reason}"):
            dataset[index]
    skipping = VideoDataset(str(damaged_lmdb / "list.txt"), str(damaged_lmdb / "lmdb"), "LMDB", 8, 1, 1,
                            EvalClipTransform(16), train=False, skip_bad_samples=True)
    _, _, videos, skipped = collate_samples([skipping[i] for i in range(5)])
    assert videos.tolist() == [0] and sorted(index for index, _ in skipped) == [1, 2, 3, 4]
    with pytest.raises(InputError, match=r"cannot read input: video '.*cut': data\.mdb is cut short"):
        storage_of(str(damaged_lmdb / "lmdb" / "cut"))


def test_a_video_listed_twice_with_different_labels_is_warned_of_naming_the_lines(tmp_path):
    (tmp_path / "list.txt").write_text("a 8 0\nb 8 1\n./a 8 2\nb 8 1\nc 8 0\n")
    with pytest.warns(UserWarning, match=r"list\.txt: 1 video\(s\) listed with different labels: 'a' on lines "
                                         r"1 \(label 0\), 3 \(label 2\)$"):
        assert len(read_list_file(tmp_path / "list.txt")) == 5
    (tmp_path / "list.txt").write_text("a 8 0\nb 8 1\nb 8 1\n")  # the same label twice: no conflict
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_list_file(tmp_path / "list.txt")


def test_a_synthetic_dir_that_cannot_take_files_names_the_key(tmp_path):
    (tmp_path / "a_file").write_text("")
    config = tmp_path / "exp.yml"
    config.write_text(f"synthetic_dir: {tmp_path / 'a_file' / 'data'}\nlist_file: {tmp_path / 'train.txt'}\n"
                      f"num_classes: 3\n")
    with pytest.raises(ConfigError, match=r"exp\.yml: key 'synthetic_dir' .*: cannot write the synthetic data set in "
                                          r"this folder: Not a directory"):
        prepare_synthetic_data(load_config(config))
