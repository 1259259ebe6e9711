"""Video files: both decoders give the same frames, seeks land where a sequential decode does, a test
sample decodes each frame once for all its views, and short or lying files are handled."""
import os
import random

import numpy as np
import pytest
import torch

from sifa.config import load_config
from sifa.errors import ConfigError
from sifa.data import BadSampleError, VideoDataset, VideoRecord
from sifa.data import video_io
from sifa.data.storage import count_video_frames, make_reader, write_video_file
from sifa.data.transforms import EvalClipTransform, TrainClipTransform
from sifa.data.video_io import FrameReadError, VideoEndedError, VideoWriter, read_video_frames

av = pytest.importorskip("av", reason="PyAV (requirements-extra.txt) encodes the H.264 test videos")

NUM_FRAMES = 90
GOP = 10


# torchcodec needs FFmpeg's shared libraries, which this package cannot install: its cases are skipped without.
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not video_io.backend_available(b), reason="torchcodec or FFmpeg's libraries "
                                                     "missing")) for b in video_io.VIDEO_BACKENDS]


def numbered_frames(count, height=96, width=128, seed=0):
    """Smooth frames that differ from one another by far more than codec noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        frames.append(np.stack([127 + 100 * np.sin(xx / 9.0 + yy / 13.0 + p) for p in phase], -1).astype(np.uint8))
    return frames


def write(path, frames, backend="pyav", keyframe_interval=GOP):
    height, width = frames[0].shape[:2]
    with VideoWriter(str(path), 25, width, height, backend, keyframe_interval if backend == "pyav" else None) as w:
        for frame in frames:
            w.write(frame)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """H.264 with B-frames and a keyframe every GOP frames, MPEG-4 Part 2 (OpenCV) and MJPEG AVI."""
    root = tmp_path_factory.mktemp("videos")
    frames = numbered_frames(NUM_FRAMES)
    paths = {"h264": write(root / "h264.mp4", frames), "mpeg4": write(root / "mpeg4.mp4", frames, "opencv")}
    write_video_file(str(root / "mjpeg.avi"), frames[:30])
    paths["mjpeg"] = str(root / "mjpeg.avi")
    return frames, paths


def sequential(path, backend):
    """Every frame, decoded in order with no seek."""
    return list(video_io.decode_all(path, backend))


@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mjpeg"])
def test_backends_decode_identical_frames(videos, kind):
    originals, paths = videos
    by_opencv, by_pyav = sequential(paths[kind], "opencv"), sequential(paths[kind], "pyav")
    assert len(by_opencv) == len(by_pyav) == (30 if kind == "mjpeg" else NUM_FRAMES)
    assert all(np.array_equal(a, b) for a, b in zip(by_opencv, by_pyav))
    # and they are the frames that were written, in order (lossy codecs: close, far from the neighbours)
    errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(by_opencv, originals)]
    assert max(errors) < 8 and np.abs(by_opencv[5].astype(int) - originals[6]).mean() > 20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mjpeg"])
def test_random_reads_equal_the_sequential_decode(videos, kind, backend):
    path = videos[1][kind]
    reference = sequential(path, backend)
    rng = random.Random(kind + backend)
    for _ in range(6):
        ids = [rng.randint(1, len(reference)) for _ in range(rng.randint(1, 7))]  # unordered, with repeats
        got = read_video_frames(path, ids, backend)
        assert all(np.array_equal(g, reference[i - 1]) for g, i in zip(got, ids)), ids


@pytest.mark.skipif(not video_io.backend_available("torchcodec"), reason="torchcodec or FFmpeg's libraries missing")
@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mjpeg"])
def test_torchcodec_decodes_the_frames_pyav_does(videos, kind):
    by_pyav, by_torchcodec = (sequential(videos[1][kind], backend) for backend in ("pyav", "torchcodec"))
    assert len(by_torchcodec) == len(by_pyav)
    # its own colour conversion: within a level or two of swscale's, far below the gap between frames
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(by_pyav, by_torchcodec)) < 2


class Counting:
    """Counts the frames a stream class decodes through grab()."""

    def __init__(self, monkeypatch, stream_class):
        self.grabs = 0
        grab = stream_class.grab

        def counted(stream):
            self.grabs += 1
            return grab(stream)

        monkeypatch.setattr(stream_class, "grab", counted)


@pytest.mark.parametrize("backend, stream_class", [("opencv", video_io._OpenCVStream),
                                                   ("pyav", video_io._PyAVStream)])
def test_a_late_frame_is_read_from_a_seek_point_not_from_the_start(videos, monkeypatch, backend, stream_class):
    path = videos[1]["h264"]
    reference = sequential(path, backend)
    counter = Counting(monkeypatch, stream_class)
    (frame,) = read_video_frames(path, [85], backend)
    assert np.array_equal(frame, reference[84])
    # PyAV starts at the keyframe before (frame 81); OpenCV decodes from there inside its own seek
    assert counter.grabs <= (GOP if backend == "pyav" else 1)
    counter.grabs = 0
    read_video_frames(path, [2, 4, 6], backend)  # close together: decoded on from the start, no seek
    assert counter.grabs == 6


def test_pyav_indexes_a_file_once_per_process_until_it_changes(tmp_path, monkeypatch):
    frames = numbered_frames(40)
    path = write(tmp_path / "v.mp4", frames)
    video_io._keyframe_index.cache_clear()
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    reads = [[35], [25, 38], [31], [38], [12, 36]]  # each seeks
    for ids in reads:
        read_video_frames(path, ids, "pyav")
    # the index once, then one opening per read (before: two, the index read each time)
    assert video_io._keyframe_index.cache_info().misses == 1 and len(opened) == 1 + len(reads)
    write(path, frames[:20], keyframe_interval=5)  # rewritten: another size, so indexed again
    os.utime(path, ns=(1, 1))
    assert np.array_equal(read_video_frames(path, [17], "pyav")[0], sequential(path, "pyav")[16])
    assert video_io._keyframe_index.cache_info().misses == 2


@pytest.mark.parametrize("backend", ["opencv", "pyav"])
def test_one_decoder_thread_in_a_data_loader_worker(videos, backend):
    def threads(stream):
        if backend == "pyav":
            return stream.stream.thread_count
        import cv2
        return int(stream.capture.get(cv2.CAP_PROP_N_THREADS))

    class Threads(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            stream = video_io.open_video(videos[1]["h264"], backend)
            try:
                return threads(stream)
            finally:
                stream.close()

    (in_worker,) = torch.utils.data.DataLoader(Threads(), batch_size=None, num_workers=1)
    assert in_worker == 1 and Threads()[0] != 1  # FFmpeg's own choice outside workers (2 cores or more)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """An H.264 file cut short: its header still states all frames, fewer decode (as in many Kinetics
    downloads); moov first, so that it opens."""
    root = tmp_path_factory.mktemp("truncated")
    frames = numbered_frames(NUM_FRAMES, seed=1)
    full = root / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.codec_context.gop_size = GOP
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = full.read_bytes()
    cut = root / "cut.mp4"
    cut.write_bytes(data[:len(data) * 6 // 10])
    import cv2
    stated = int(cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT))
    decodable = count_video_frames(str(cut))
    assert stated == NUM_FRAMES and 10 < decodable < NUM_FRAMES  # the premise: the header lies
    return cut, decodable


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_past_the_decodable_end_name_the_file_and_count(truncated, backend):
    cut, decodable = truncated
    assert count_video_frames(str(cut), backend) == decodable
    with pytest.raises(VideoEndedError, match=rf"cut\.mp4': frame {NUM_FRAMES - 5} cannot be decoded .*only "
                                              rf"{decodable} frames") as err:
        read_video_frames(str(cut), [3, NUM_FRAMES - 5], backend)  # the late frame is reached by a seek
    assert err.value.decodable == decodable
    assert len(read_video_frames(str(cut), [1, decodable], backend)) == 2


def test_dataset_samples_a_lying_video_within_the_frames_that_decode(truncated, tmp_path):
    cut, decodable = truncated
    (tmp_path / "list.txt").write_text(f"cut.mp4 {NUM_FRAMES} 3\n")
    dataset = VideoDataset(str(tmp_path / "list.txt"), str(cut.parent), "VIDEO", 8, 4, 1, EvalClipTransform(32, 3),
                           train=False, num_clips=4, num_crops=3)
    with pytest.warns(UserWarning, match=rf"list\.txt, line 1: video 'cut\.mp4': only {decodable} of the "
                                         rf"{NUM_FRAMES} listed frames decode"):
        last_clip = dataset[len(dataset) - 1][0]
    frames = read_video_frames(str(cut), range(1, decodable + 1))
    offset = (decodable - 32) * 3 // 4  # eval_offsets of clip 3 of 4 within the decodable frames
    expected = EvalClipTransform(32, 3)([frames[offset + 4 * j] for j in range(8)], 2)
    assert torch.equal(last_clip, expected)
    train = VideoDataset(str(tmp_path / "list.txt"), str(cut.parent), "VIDEO", 8, 4, 1, TrainClipTransform(32),
                         train=True)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="only") as caught:
        shapes = {train[0][0].shape for _ in range(20)}  # the first clip past the end corrects the count
    assert shapes == {(3, 8, 32, 32)} and sum("only" in str(w.message) for w in caught) == 1
    # a clip longer than the decodable frames: an error naming the list line, the file and both counts
    (tmp_path / "long.txt").write_text(f"cut.mp4 {NUM_FRAMES} 3\n")
    too_long = VideoDataset(str(tmp_path / "long.txt"), str(cut.parent), "VIDEO", 16, 5, 1, EvalClipTransform(32),
                            train=False)
    with pytest.raises(BadSampleError, match=rf"long\.txt, line 1: only {decodable} of the {NUM_FRAMES} listed "
                                             rf"frames decode: video 'cut\.mp4' has {decodable} frames"):
        too_long[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_sample_decodes_each_frame_once_for_all_views(videos, backend):
    path = videos[1]["h264"]
    record = VideoRecord("h264.mp4", NUM_FRAMES, 1)
    transform = EvalClipTransform(48, num_crops=3)
    dataset = VideoDataset([record], os.path.dirname(path), "VIDEO", 8, 3, 1, transform,
                           train=False, num_clips=10, num_crops=3, video_backend=backend)
    reads = []
    read = dataset.read
    dataset.read = lambda video, ids: reads.append(list(ids)) or read(video, ids)
    views = [dataset[i] for i in range(len(dataset))]
    assert len(reads) == 1 and reads[0] == sorted(set(reads[0]))  # one read, each frame once
    decoded = sequential(path, backend)
    for index, (clip, label, video) in enumerate(views):
        clip_index, crop_index = divmod(index, 3)
        offset = (NUM_FRAMES - 24) * clip_index // 10
        expected = transform([decoded[offset + 3 * j] for j in range(8)], crop_index)
        assert torch.equal(clip, expected) and (label, video) == (1, 0)


def test_av1_reads_with_pyav_whatever_opencv_decodes(tmp_path):
    """PyAV reads AV1; earlier OpenCV wheels opened it but decoded no frame (5.1 decodes it): where
    OpenCV does decode it, both backends give the same frame."""
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build has no AV1 encoder")
    frames = numbered_frames(12, height=128, width=128)
    path = str(tmp_path / "av1.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libsvtav1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert count_video_frames(path, "pyav") == 12
    (frame,) = make_reader("VIDEO", "pyav")(path, [7])
    assert np.abs(frame.astype(int) - frames[6]).mean() < 6
    if count_video_frames(path, "opencv") > 0:
        assert count_video_frames(path, "opencv") == 12
        (opencv_frame,) = make_reader("VIDEO", "opencv")(path, [7])
        np.testing.assert_array_equal(opencv_frame, frame)


def test_backend_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg'"):
        make_reader("VIDEO", "ffmpeg")
    with pytest.raises(ConfigError, match="video_backend"):
        _config_with(tmp_path, "ffmpeg")
    assert _config_with(tmp_path, "pyav").video_backend == "pyav"
    with pytest.raises(FrameReadError, match="absent.mp4': file not found"):
        read_video_frames(str(tmp_path / "absent.mp4"), [1], "pyav")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(FrameReadError, match="garbage.mp4': PyAV cannot open it"):
        read_video_frames(str(tmp_path / "garbage.mp4"), [1], "pyav")


def _config_with(tmp_path, backend):
    path = tmp_path / "experiment.yml"
    path.write_text("net_name: c2d_sifa_resnet50\n")
    return load_config(str(path), [f"video_backend={backend}"])
