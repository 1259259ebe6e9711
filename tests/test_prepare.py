"""Data preparation: `trim` cuts annotated clips (Kinetics and plain CSV layouts) from generated videos,
and every command checks its inputs and outputs before decoding."""
import os

import cv2
import numpy as np
import pytest

from helpers import user_error
from sifa.data import VideoDataset, read_class_names, read_list_file
from sifa.data.storage import write_frame_folder
from sifa.data.transforms import EvalClipTransform
from sifa.data.video_io import VideoWriter, decode_all
from sifa.tools.prepare import main

FPS = 10
SECONDS = 8


def frame_at(index, height=60, width=90):
    """A smooth pattern of its own per index: a clip's frames tell where it was cut."""
    phase = np.random.default_rng(index).uniform(0, 2 * np.pi, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([127 + 100 * np.sin(xx / 9.0 + yy / 13.0 + p) for p in phase], -1).astype(np.uint8)


def frame_index(frame):
    """The index of the source frame ``frame`` (possibly resized and re-encoded) shows."""
    height, width = frame.shape[:2]
    errors = [np.abs(cv2.resize(frame_at(i), (width, height), interpolation=cv2.INTER_AREA).astype(int) - frame).mean()
              for i in range(FPS * SECONDS)]
    return int(np.argmin(errors))


def write_source(path, backend="opencv"):
    with VideoWriter(str(path), FPS, 90, 60, backend) as writer:
        for index in range(FPS * SECONDS):
            writer.write(frame_at(index))


@pytest.fixture
def kinetics(tmp_path):
    """Full videos `<src>/<youtube_id>.mp4`, a Kinetics CSV naming them (one missing, one broken)."""
    src = tmp_path / "raw"
    src.mkdir()
    for youtube_id in ("vid_A", "vid-B"):
        write_source(src / f"{youtube_id}.mp4")
    (src / "broken.mp4").write_bytes(b"\x00" * 1000)
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "air drumming,vid_A,2,5,train\n"
        "abseiling,vid-B,0,3,train\n"
        '"passing American football (in game)",vid_A,6,10,train\n'  # past the end: cut at the end
        "abseiling,broken,1,4,train\n"
        "abseiling,absent,1,4,train\n")
    return tmp_path


def trim(root, *extra):
    main(["trim", "--annotations", str(root / "train.csv"), "--src", str(root / "raw"), "--out", str(root / "clips"),
          "--list", str(root / "list.txt"), "--classes", str(root / "classes.txt"), "--workers", "2", *extra])


def test_trim_cuts_kinetics_clips_lists_them_and_reports_failures(kinetics, capsys):
    trim(kinetics, "--short_side", "31")
    names = read_class_names(kinetics / "classes.txt", 3)
    assert names == ["abseiling", "air_drumming", "passing_American_football_(in_game)"]  # the original's names
    records = read_list_file(kinetics / "list.txt", num_classes=3)
    assert [(r.path, r.num_frames, r.label) for r in records] == [
        ("air_drumming/vid_A_000002_000005.mp4", 30, 1),
        ("abseiling/vid-B_000000_000003.mp4", 30, 0),
        ("passing_American_football_(in_game)/vid_A_000006_000010.mp4", 20, 2)]
    first = list(decode_all(str(kinetics / "clips" / records[0].path)))
    assert len(first) == 30 and [frame_index(f) for f in first] == list(range(20, 50))
    # short side 31 -> 31 x 46.5, rounded to even sizes for the codec
    assert first[0].shape == (30, 46, 3)
    report = (kinetics / "list_failed.txt").read_text().splitlines()
    assert len(report) == 2
    assert report[0].startswith(f"{kinetics / 'train.csv'}, line 5: {kinetics / 'raw' / 'broken.mp4'}: ")
    assert "line 6" in report[1] and report[1].endswith("source video not found")
    assert "3 of 5 clips listed" in capsys.readouterr().out
    assert not [p for p in (kinetics / "clips").rglob("*.part.mp4")]
    # the clips are a data set as they are
    dataset = VideoDataset(str(kinetics / "list.txt"), str(kinetics / "clips"), "VIDEO", 4, 2, 1,
                           EvalClipTransform(24), train=False)
    assert dataset[2][0].shape == (3, 4, 24, 24)


def test_trim_skip_existing_keeps_clips_already_cut(kinetics):
    done = kinetics / "clips" / "abseiling" / "vid-B_000000_000003.mp4"
    done.parent.mkdir(parents=True)
    with VideoWriter(str(done), FPS, 90, 60) as writer:  # cut before, differently: 7 frames
        for index in range(7):
            writer.write(frame_at(index))
    (kinetics / "raw" / "vid-B.mp4").unlink()  # it is not cut again: its source may be gone
    trim(kinetics, "--skip_existing")
    listed = {r.path: r.num_frames for r in read_list_file(kinetics / "list.txt")}
    assert listed["abseiling/vid-B_000000_000003.mp4"] == 7 and len(listed) == 3
    trim(kinetics)  # without the flag it would be cut again: its source is gone now
    listed = {r.path for r in read_list_file(kinetics / "list.txt")}
    assert "abseiling/vid-B_000000_000003.mp4" not in listed


def test_trim_plain_layout_with_pyav_writes_h264(tmp_path):
    pytest.importorskip("av", reason="the pyav backend needs PyAV (requirements-extra.txt)")
    (tmp_path / "raw" / "sub").mkdir(parents=True)
    write_source(tmp_path / "raw" / "sub" / "full video.mp4", backend="pyav")
    (tmp_path / "train.csv").write_text("path,start,end,label\nsub/full video.mp4,1.5,2.5,1\n"
                                        "sub/full video.mp4,0,1,0\n")
    trim(tmp_path, "--video_backend", "pyav")
    records = read_list_file(tmp_path / "list.txt")
    assert [(r.path, r.num_frames, r.label) for r in records] == [
        ("1/full video_000001.500_000002.500.mp4", 10, 1), ("0/full video_000000_000001.mp4", 10, 0)]
    import av
    with av.open(str(tmp_path / "clips" / records[0].path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    frames = list(decode_all(str(tmp_path / "clips" / records[0].path), "pyav"))
    assert [frame_index(f) for f in frames] == list(range(15, 25))


def test_trim_checks_outputs_and_annotations_before_decoding(kinetics, monkeypatch, capsys):
    import sifa.data.prepare as prepare
    monkeypatch.setattr(prepare, "read_time_range", lambda *a: pytest.fail("decoded before the checks"))
    with user_error(capsys, r"error: --list .*absent/list.txt: folder .*absent does not exist"):
        main(["trim", "--annotations", str(kinetics / "train.csv"), "--src", str(kinetics / "raw"), "--out",
              str(kinetics / "clips"), "--list", str(kinetics / "absent" / "list.txt"), "--classes",
              str(kinetics / "classes.txt")])
    (kinetics / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,x,5,2,train\n")
    with user_error(capsys, r"bad.csv, line 2: needs 0 <= start < end"):
        main(["trim", "--annotations", str(kinetics / "bad.csv"), "--src", str(kinetics / "raw"), "--out",
              str(kinetics / "clips"), "--list", str(kinetics / "list.txt"), "--classes", str(kinetics / "c.txt")])
    (kinetics / "twice.csv").write_text("path,start,end,label\na.mp4,0,1,x\nb/a.mp4,0,1,x\n")
    with user_error(capsys, r"twice.csv, lines 2 and 3: the same clip"):
        main(["trim", "--annotations", str(kinetics / "twice.csv"), "--src", str(kinetics / "raw"), "--out",
              str(kinetics / "clips"), "--list", str(kinetics / "list.txt"), "--classes", str(kinetics / "c.txt")])


def test_videos_list_check_comes_before_decoding_and_video_format_rules(kinetics, monkeypatch, capsys):
    import sifa.data.prepare as prepare
    (kinetics / "classes" / "a").mkdir(parents=True)
    write_source(kinetics / "classes" / "a" / "v.mp4")
    monkeypatch.setattr(prepare, "decode_all", lambda *a: pytest.fail("decoded before the checks"))
    with user_error(capsys, r"error: --list .*: folder .*missing does not exist"):
        main(["videos", "--src", str(kinetics / "classes"), "--out", str(kinetics / "lmdb"), "--format", "LMDB",
              "--list", str(kinetics / "missing" / "list.txt"), "--classes", str(kinetics / "c.txt")])
    with pytest.raises(SystemExit):
        main(["videos", "--src", str(kinetics / "classes"), "--short_side", "32", "--format", "VIDEO",
              "--list", str(kinetics / "list.txt"), "--classes", str(kinetics / "c.txt")])
    assert "--short_side and --keyint need --out" in capsys.readouterr().err
    monkeypatch.undo()
    main(["videos", "--src", str(kinetics / "classes"), "--format", "VIDEO", "--list", str(kinetics / "list.txt"),
          "--classes", str(kinetics / "c.txt"), "--workers", "1"])
    assert (kinetics / "list.txt").read_text() == f"a/v.mp4 {FPS * SECONDS} 0\n"
    assert "paths relative to " + str(kinetics / "classes") in capsys.readouterr().out


def longest_keyframe_gap(video):
    """The most frames from one keyframe of ``video`` to the next (or to the end)."""
    import av
    with av.open(str(video)) as container:
        flags = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
    starts = [i for i, keyframe in enumerate(flags) if keyframe] + [len(flags)]
    return max(b - a for a, b in zip(starts, starts[1:]))


def test_keyint_sets_the_keyframe_interval_of_trim_and_reencoded_videos(kinetics, capsys):
    pytest.importorskip("av", reason="--keyint needs PyAV (requirements-extra.txt)")
    trim(kinetics, "--video_backend", "pyav", "--keyint", "8")
    clip = kinetics / "clips" / "abseiling" / "vid-B_000000_000003.mp4"
    # x264 adds keyframes at scene cuts (each frame of these is one of its own): a gap, not positions
    assert longest_keyframe_gap(clip) <= 8
    trim(kinetics, "--video_backend", "pyav")
    assert longest_keyframe_gap(clip) > 8  # x264's default: up to 250
    # videos --format VIDEO --out: re-encoded, resized, with the interval; listed relative to --out
    main(["videos", "--src", str(kinetics / "clips"), "--format", "VIDEO", "--out", str(kinetics / "k8"),
          "--short_side", "30", "--keyint", "8", "--video_backend", "pyav", "--list", str(kinetics / "k8.txt"),
          "--classes", str(kinetics / "classes.txt"), "--workers", "1"])
    listed = {r.path: r.num_frames for r in read_list_file(kinetics / "k8.txt")}
    assert listed["abseiling/vid-B_000000_000003.mp4"] == 30
    reencoded = kinetics / "k8" / "abseiling" / "vid-B_000000_000003.mp4"
    assert longest_keyframe_gap(reencoded) <= 8
    frames = list(decode_all(str(reencoded), "pyav"))
    assert frames[0].shape == (30, 44, 3) and [frame_index(f) for f in frames[:3]] == [0, 1, 2]
    for extra, message in ((["--keyint", "8"], "--keyint needs --video_backend pyav"),
                           (["--keyint", "0", "--video_backend", "pyav"], "--keyint must be at least 1")):
        with pytest.raises(SystemExit):
            trim(kinetics, *extra)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["videos", "--src", str(kinetics / "clips"), "--format", "LMDB", "--out", str(kinetics / "l"),
              "--keyint", "8", "--video_backend", "pyav", "--list", str(kinetics / "l.txt"), "--classes",
              str(kinetics / "classes.txt")])
    assert "--keyint applies to videos written" in capsys.readouterr().err


def test_help_keeps_the_examples_line_breaks(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert "--src data/k400/raw \\\n        --out data/k400/train" in usage


def test_documented_trim_names_are_those_written():
    """docs/training.md names the clips trim writes; the plain-layout test above cuts 1.5-2.5 s and 0-1 s."""
    from helpers import REPO_ROOT
    from sifa.data.prepare import _time_text

    docs = (REPO_ROOT / "docs" / "training.md").read_text()
    for start, end in ((1.5, 2.5), (0, 1), (10, 20)):
        assert f"_{_time_text(start)}_{_time_text(end)}.mp4" in docs


def test_frames_command_names_a_missing_folder_and_the_csv_line(tmp_path, capsys):
    write_frame_folder(str(tmp_path / "frames" / "1"), [frame_at(0)] * 3)
    (tmp_path / "labels.csv").write_text("1;pushing\n2;pulling\n")
    (tmp_path / "classes.txt").write_text("pulling\npushing\n")
    args = ["frames", "--src", str(tmp_path / "frames"), "--labels", str(tmp_path / "labels.csv"),
            "--classes", str(tmp_path / "classes.txt")]
    with user_error(capsys, r"labels.csv, line 2: frame folder .*frames/2 not found"):
        main(args + ["--list", str(tmp_path / "list.txt")])
    with user_error(capsys, r"--src .*absent: folder not found"):
        main(["frames", "--src", str(tmp_path / "absent")] + args[3:] + ["--list", str(tmp_path / "list.txt")])
    (tmp_path / "labels.csv").write_text("1;pushing\n")
    main(args + ["--list", str(tmp_path / "list.txt")])
    assert (tmp_path / "list.txt").read_text() == "1 3 1\n"
