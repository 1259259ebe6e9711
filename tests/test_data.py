"""Data: list files, clip sampling (docs/design.md §7.2), storage formats, transforms, Dataset, synthetic set."""
import os
from typing import List

import numpy as np
import pytest
import torch

from sifa.data import (ClipTooShortError, FrameReadError, ListFileError, VideoDataset, VideoRecord, clip_frame_ids,
                       read_class_names, read_list_file, eval_offsets, train_offsets)
from sifa.data import synthetic
from sifa.data.storage import (frame_file_name, lmdb_key, make_reader, write_frame_folder, write_lmdb,
                               write_video_file)
from sifa.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalClipTransform, TrainClipTransform, lay_out,
                                  normalize_clips)


# ------------------------------------------------------------------------------------------ list files
def test_list_file_paths_with_spaces_and_blank_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("abseiling/clip one 300 0\n\nfolder/b  12  5\n")
    records = read_list_file(path)
    assert [(r.path, r.num_frames, r.label, r.line) for r in records] == [
        ("abseiling/clip one", 300, 0, 1), ("folder/b", 12, 5, 3)]


@pytest.mark.parametrize("line", ["video_only", "video 12", "video twelve 3", "video 12 x", "video 0 1",
                                  "video 10 -1"])
def test_malformed_line_names_file_and_line(tmp_path, line):
    path = tmp_path / "list.txt"
    path.write_text(f"good 10 1\n{line}\n")
    with pytest.raises(ListFileError) as err:
        read_list_file(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_label_beyond_num_classes_and_missing_or_empty_list(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a 10 4\n")
    with pytest.raises(ListFileError, match="line 1: label 4 outside"):
        read_list_file(path, num_classes=4)
    with pytest.raises(ListFileError, match="not found"):
        read_list_file(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ListFileError, match="empty"):
        read_list_file(tmp_path / "empty.txt")


def test_class_names(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("a\nb\n")
    assert read_class_names(path, 2) == ["a", "b"]
    with pytest.raises(ListFileError, match="expected num_classes = 3"):
        read_class_names(path, 3)


# -------------------------------------------------------------------------------------------- sampling
def _draws(n, **kw):
    generator = torch.Generator().manual_seed(0)
    return np.array([train_offsets(generator=generator, **kw) for _ in range(n)])


def test_train_offsets_first_case_cover_each_segment():
    # duration 100, 3 segments: A = 33; clip 8 x step 2: E = 16 -> offset_s = randint(0, 17) + 33 s
    draws = _draws(600, duration=100, clip_length=8, num_steps=2, num_segments=3)
    for s in range(3):
        assert set(draws[:, s]) == set(range(33 * s, 33 * s + 18))


def test_train_offsets_second_case():
    # duration 40: A = 13 < E = 16 <= 40; (40 - 16) / 3 = 8 -> offset_s = randint(0, 8) + 8 s
    draws = _draws(600, duration=40, clip_length=8, num_steps=2, num_segments=3)
    for s in range(3):
        assert set(draws[:, s]) == set(range(8 * s, 8 * s + 9))
    # duration 42, 4 segments, E = 16: (42 - 16) / 4 = 6.5 -> randint(0, 6) + floor(26 s / 4) = 0, 6, 13, 19
    draws = _draws(600, duration=42, clip_length=4, num_steps=4, num_segments=4)
    for s, base in enumerate([0, 6, 13, 19]):
        assert set(draws[:, s]) == set(range(base, base + 7))


def test_test_offsets_both_cases():
    # A = 33, A - E = 17, 4 clips: floor(17 i / 4) = 0, 4, 8, 12
    assert [eval_offsets(100, 8, 2, 3, i, 4) for i in range(4)] == [
        [0, 33, 66], [4, 37, 70], [8, 41, 74], [12, 45, 78]]
    # second case: range 8 per segment, floor(8 i / 4) = 0, 2, 4, 6 on top of 0, 8, 16
    assert [eval_offsets(40, 8, 2, 3, i, 4) for i in range(4)] == [
        [0, 8, 16], [2, 10, 18], [4, 12, 20], [6, 14, 22]]
    # a single clip starts at the segment start
    assert eval_offsets(64, 16, 4, 1, 0, 1) == [0]


def test_frame_ids_and_extent():
    assert clip_frame_ids([4, 37], clip_length=3, num_steps=2, duration=100) == [5, 7, 9, 38, 40, 42]
    # the largest offset keeps the whole clip inside the video
    draws = _draws(300, duration=40, clip_length=8, num_steps=2, num_segments=3)
    assert max(clip_frame_ids([int(draws.max())], 8, 2, 40)) <= 40


def test_too_short_video_errors_or_loop_pads():
    with pytest.raises(ClipTooShortError, match="video 'dir/v1' has 5 frames"):
        train_offsets(5, 4, 2, 1, video="dir/v1")
    with pytest.raises(ClipTooShortError, match="loop_pad"):
        eval_offsets(5, 4, 2, 1, 0, 1, video="dir/v1")
    assert train_offsets(5, 4, 2, 2, loop_pad=True) == [0, 0]
    # 0, 2, 4, 6 wrap modulo 5 -> ids 1, 3, 5, 2
    assert clip_frame_ids(eval_offsets(5, 4, 2, 1, 0, 1, loop_pad=True), 4, 2, 5) == [1, 3, 5, 2]


# --------------------------------------------------------------------------------------------- storage
def smooth_frames(count=9, height=48, width=64, seed=0):
    """Smooth, distinct frames: JPEG keeps them close, and swapping two frames is far off."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        channels = [127 + 100 * np.sin(xx / 10.0 + yy / 14.0 + phase[c] + i) for c in range(3)]
        frames.append(np.stack(channels, -1).astype(np.uint8))
    return frames


WRITERS = {"FRAME": (write_frame_folder, "v one"), "LMDB": (write_lmdb, "v one"),
           "VIDEO": (write_video_file, "v one.avi")}


@pytest.mark.parametrize("storage_format", sorted(WRITERS))
def test_storage_round_trip(tmp_path, storage_format):
    frames = smooth_frames()
    writer, name = WRITERS[storage_format]
    writer(str(tmp_path / name), frames)
    ids = [2, 5, 9, 1]
    read = make_reader(storage_format)(str(tmp_path / name), ids)
    for frame_id, image in zip(ids, read):
        assert image.shape == frames[0].shape and image.dtype == np.uint8
        error = np.abs(image.astype(int) - frames[frame_id - 1].astype(int)).mean()
        assert error < 6, (frame_id, error)
        wrong = np.abs(image.astype(int) - frames[frame_id % len(frames)].astype(int)).mean()
        assert wrong > 20  # the comparison can tell frames apart


def test_frame_folder_names_and_lmdb_keys(tmp_path):
    write_frame_folder(str(tmp_path / "v"), smooth_frames(2))
    assert sorted(os.listdir(tmp_path / "v")) == ["00001.jpg", "00002.jpg"] == [frame_file_name(1), frame_file_name(2)]
    assert lmdb_key(7) == "000007.jpg"


def test_storage_errors_name_video_and_file(tmp_path):
    frames = smooth_frames(3)
    folder = str(tmp_path / "folder")
    write_frame_folder(folder, frames)
    with pytest.raises(FrameReadError, match=r"folder.*'00004\.jpg' not found"):
        make_reader("FRAME")(folder, [4])
    with open(os.path.join(folder, "00002.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(FrameReadError, match=r"folder.*cannot decode image '00002\.jpg'"):
        make_reader("FRAME")(folder, [2])
    env = str(tmp_path / "env")
    write_lmdb(env, frames)
    with pytest.raises(FrameReadError, match=r"env.*LMDB key '000004\.jpg' not found"):
        make_reader("LMDB")(env, [1, 4])
    with pytest.raises(FrameReadError, match="LMDB environment not found"):
        make_reader("LMDB")(str(tmp_path / "absent"), [1])
    video = str(tmp_path / "clip.avi")
    write_video_file(video, frames)
    with pytest.raises(FrameReadError, match=r"clip\.avi.*frame 5 cannot be decoded.*only 3 frames"):
        make_reader("VIDEO")(video, [1, 5])
    with pytest.raises(FrameReadError, match="file not found"):
        make_reader("VIDEO")(str(tmp_path / "absent.avi"), [1])
    (tmp_path / "garbage.avi").write_bytes(b"\x00" * 100)
    with pytest.raises(FrameReadError, match="garbage.avi"):
        make_reader("VIDEO")(str(tmp_path / "garbage.avi"), [1])
    with pytest.raises(ValueError, match="unknown storage format"):
        make_reader("HDF5")


# ------------------------------------------------------------------------------------------ transforms
def test_train_transforms_keep_frames_aligned():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for rand_augment in (False, True):
        transform = TrainClipTransform(32, rand_augment=rand_augment, ra_n=2, ra_m=27)
        for seed in range(15):
            torch.manual_seed(seed)
            clip = transform([frame] * 6)
            assert clip.shape == (3, 6, 32, 32) and clip.dtype == torch.uint8
            assert torch.equal(clip, clip[:, :1].expand_as(clip)), (rand_augment, seed)
    stacked = TrainClipTransform(32, time_dim="C")([frame] * 6)
    assert stacked.shape == (18, 32, 32) and torch.equal(stacked[:3], stacked[3:6])


def test_train_transform_is_random_per_clip_and_flip_can_be_disabled():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    transform = TrainClipTransform(32)
    assert not torch.equal(transform([frame] * 2), transform([frame] * 2))
    # only a flip: with no_horizontal_flip and a full-size crop of a left-right gradient, right stays brighter
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    no_flip = TrainClipTransform(32, no_horizontal_flip=True)
    no_flip.SCALE = no_flip.RATIO = (1.0, 1.0)
    for seed in range(20):
        torch.manual_seed(seed)
        gray = no_flip([ramp]).float().mean(dim=(0, 1, 2))
        assert gray[-4:].mean() > gray[:4].mean()


@pytest.mark.parametrize("time_dim", ["T", "C"])
def test_train_transform_lays_out_the_crop_and_flips_it(time_dim):
    """Without the colour steps: the crop (a full-height square here), flipped or not, in lay_out's layout."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(4)]
    crop = lay_out(torch.from_numpy(np.stack(frames)[:, :, 8:48]).permute(0, 3, 1, 2), time_dim)
    transform = TrainClipTransform(40, time_dim=time_dim)
    transform.SCALE = transform.RATIO = (1.0, 1.0)  # the largest centred square: columns 8-47
    transform._colour = lambda clip: clip
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        clip = transform(frames)
        flips.add(torch.equal(clip, crop.flip(-1)))
        assert torch.equal(clip, crop) or torch.equal(clip, crop.flip(-1))
    assert flips == {True, False}


class OpenCVThreads(torch.utils.data.Dataset):
    """One item: OpenCV's thread count after a train transform ran in the loader's worker."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        import cv2

        TrainClipTransform(16)([np.zeros((20, 24, 3), np.uint8)] * 2)
        return cv2.getNumThreads()


def test_train_transform_runs_opencv_on_one_thread_in_a_data_loader_worker():
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        # the parent's thread pool running when the worker forks: a worker that then changed the
        # thread count itself would wait forever (the loader's timeout turns that into a failure)
        cv2.GaussianBlur(np.zeros((1024, 1024), np.uint8), (5, 5), 1.0)
        for context in ("fork", "spawn"):
            (in_worker,) = torch.utils.data.DataLoader(OpenCVThreads(), batch_size=None, num_workers=1, timeout=60,
                                                       multiprocessing_context=context)
            assert in_worker == 1, context
        assert cv2.getNumThreads() == 2  # the parent's own count is back after the fork
    finally:
        cv2.setNumThreads(before)


def _smooth_colour_clip(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """T x size x size x 3 uint8 frames of smooth random colours, each shifted a little."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.stack([np.roll(base, t, axis=1) for t in range(frames)])


@pytest.mark.parametrize("step", ["brightness", "contrast", "saturation", "hue", "grayscale", "blur"])
def test_opencv_colour_steps_are_torchvision_within_levels(step):
    from torchvision.transforms.v2 import functional as F
    from sifa.data.transforms import _OpenCVColourJitter

    clip = _smooth_colour_clip(4, 96)
    tensor = torch.from_numpy(clip).permute(0, 3, 1, 2)
    colour = _OpenCVColourJitter()
    cases = {"brightness": [(f, F.adjust_brightness) for f in (0.6, 0.93, 1.4)],
             "contrast": [(f, F.adjust_contrast) for f in (0.6, 1.4)],
             "saturation": [(f, F.adjust_saturation) for f in (0.6, 1.4)],
             "hue": [(f, F.adjust_hue) for f in (-0.1, -0.03, 0.05, 0.1)],
             "grayscale": [(None, lambda image, _: F.rgb_to_grayscale(image, 3))],
             "blur": [(s, lambda image, s: F.gaussian_blur(image, [13, 13], [s, s])) for s in (0.1, 0.8, 2.0)]}
    # brightness: the same lookup; luma rounds where torchvision truncates (half a level on average, less
    # after blending); blur: fixed point; hue: 8-bit HSV
    max_levels, mean_levels = {"brightness": (0, 0), "grayscale": (1, 0.6), "hue": (12, 1.0)}.get(step, (1, 0.3))
    for factor, reference in cases[step]:
        method = getattr(colour, step)
        mine = method(clip.copy()) if factor is None else method(clip.copy(), factor)
        expected = reference(tensor, factor).permute(0, 2, 3, 1).numpy()
        levels = np.abs(mine.astype(int) - expected.astype(int))
        assert levels.max() <= max_levels and levels.mean() <= mean_levels, (step, factor, levels.max(), levels.mean())
        if step == "hue":
            assert np.percentile(levels, 99) <= 6


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical distributions."""
    points = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(np.sort(a), points, side="right") / len(a)
                        - np.searchsorted(np.sort(b), points, side="right") / len(b)).max())


def _clip_statistics(clip: torch.Tensor) -> List[float]:
    """Brightness, contrast, colourfulness, two hue balances, sharpness and left-right balance of a
    3 x T x H x W uint8 clip."""
    x = clip.double() / 255
    spread = x.amax(dim=0) - x.amin(dim=0)
    ramp = torch.linspace(-1, 1, x.shape[-1], dtype=torch.float64)
    return [x.mean().item(), x.std().item(), spread.mean().item(), (x[0] - x[2]).mean().item(),
            (x[1] - x[0]).mean().item(), (x[..., 1:] - x[..., :-1]).abs().mean().item(),
            (x.mean(dim=(0, 1, 2)) * ramp).mean().item()]


def test_train_transform_has_the_distribution_of_torchvision_recipe():
    """The OpenCV colour path against the original's torchvision pipeline, over many random clips: the
    distributions of per-clip brightness, contrast, colourfulness, hue, sharpness and left-right balance
    agree (two-sample KS test at the 0.1 % level)."""
    from torchvision.transforms import v2
    from sifa.data.transforms import BLUR_KERNEL, BLUR_SIGMA

    original = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
                           v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
                           v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)], p=0.5),
                           v2.RandomHorizontalFlip(p=0.5)])
    frames = list(_smooth_colour_clip(2, 64, seed=3))

    mine, theirs = [], []
    ours = TrainClipTransform(32)
    for seed in range(600):
        torch.manual_seed(seed)
        mine.append(_clip_statistics(ours(frames)))
        torch.manual_seed(10_000 + seed)
        theirs.append(_clip_statistics(original(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)).transpose(0, 1)))
    mine, theirs = np.array(mine), np.array(theirs)
    critical = 1.95 * np.sqrt(2 / 600)  # alpha 0.001
    for column in range(mine.shape[1]):
        assert _ks_statistic(mine[:, column], theirs[:, column]) < critical, column
    # and the test can tell: without the colour jitter, colourfulness and hue statistics leave the distribution
    assert max(_ks_statistic(np.array([_clip_statistics(original.transforms[0](torch.from_numpy(np.stack(frames))
                                                                        .permute(0, 3, 1, 2)).transpose(0, 1))
                                       for _ in range(300)])[:, c], theirs[:, c]) for c in range(7)) > critical


@pytest.mark.parametrize("time_dim", ["T", "C"])
def test_colour_on_the_device_has_the_per_clip_distribution_of_the_workers(time_dim):
    """augment_on_device: the workers' clips come without colour steps (the crop only) and DeviceColourAugment
    draws them per clip of the batch; the per-clip statistics match the workers' own colour path (KS, 0.1 %)."""
    from sifa.data.transforms import DeviceColourAugment

    frames = list(_smooth_colour_clip(2, 32, seed=5))
    plain = TrainClipTransform(32, no_horizontal_flip=True, time_dim=time_dim, colour=False)
    coloured = TrainClipTransform(32, no_horizontal_flip=True, time_dim=time_dim)
    for transform in (plain, coloured):
        transform.SCALE = transform.RATIO = (1.0, 1.0)  # the whole frame: only the colour steps are random
    crop = lay_out(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), time_dim)
    assert torch.equal(plain(frames), crop)
    as_cthw = (lambda c: c) if time_dim == "T" else (lambda c: c.unflatten(0, (-1, 3)).transpose(0, 1))
    torch.manual_seed(0)
    batch = DeviceColourAugment(time_dim)(torch.stack([plain(frames) for _ in range(500)]))
    on_device = np.array([_clip_statistics(as_cthw(c)) for c in batch])
    assert len({tuple(row) for row in on_device}) > 300  # drawn per clip, not per batch
    in_workers = []
    for seed in range(500):
        torch.manual_seed(1000 + seed)
        in_workers.append(_clip_statistics(as_cthw(coloured(frames))))
    in_workers = np.array(in_workers)
    critical = 1.95 * np.sqrt(2 / 500)
    for column in range(6):  # the left-right balance is the flip's, off here
        assert _ks_statistic(on_device[:, column], in_workers[:, column]) < critical, column


def test_normalize_clips_is_the_evaluation_normalisation():
    from torchvision.transforms import v2

    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference(c.transpose(0, 1)).transpose(0, 1) for c in clips])
    assert torch.equal(normalize_clips(clips), expected)
    stacked = clips.transpose(1, 2).reshape(2, 12, 8, 8)  # time_dim 'C': T x C frames along channels
    assert torch.equal(normalize_clips(stacked, "C"), expected.transpose(1, 2).reshape(2, 12, 8, 8))
    with pytest.raises(TypeError, match="uint8"):
        normalize_clips(expected)


def test_test_transform_center_crop_normalisation_and_time_dim():
    frame = np.full((48, 64, 3), 255, np.uint8)
    clip = EvalClipTransform(32)([frame] * 4)
    assert clip.shape == (3, 4, 32, 32)
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(clip[:, 0, 0, 0], expected, atol=1e-5)
    stacked = EvalClipTransform(32, time_dim="C")([frame] * 4)
    assert stacked.shape == (12, 32, 32)


def test_three_crops_along_the_long_side():
    # After resizing the shorter side to 20, a 40 x 80 frame is 20 x 40: crops start at x = 0, 10, 20.
    column = np.arange(80, dtype=np.float32)
    frame = np.repeat(np.repeat(column[None, :, None], 40, 0), 3, 2).astype(np.uint8) * 3
    three = EvalClipTransform(20, num_crops=3)
    assert [three.crop_origin(20, 40, i) for i in range(3)] == [(0, 0), (0, 10), (0, 20)]
    assert [three.crop_origin(40, 20, i) for i in range(3)] == [(0, 0), (10, 0), (20, 0)]
    crops = [three([frame], i) for i in range(3)]
    means = [c.mean().item() for c in crops]
    assert means[0] < means[1] < means[2]
    assert torch.equal(crops[1], EvalClipTransform(20)([frame]))


# -------------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    lines = []
    for index in range(3):
        frames = smooth_frames(count=12, seed=index)
        name = f"class {index}/video {index}"
        write_frame_folder(str(root / "FRAME" / name), frames)
        os.makedirs(root / "LMDB" / f"class {index}", exist_ok=True)
        write_lmdb(str(root / "LMDB" / name), frames)
        os.makedirs(root / "VIDEO" / f"class {index}", exist_ok=True)
        write_video_file(str(root / "VIDEO" / (name + ".avi")), frames)
        lines.append((name, 12, index))
    for storage_format in ("FRAME", "LMDB", "VIDEO"):
        suffix = ".avi" if storage_format == "VIDEO" else ""
        (root / f"{storage_format}.txt").write_text("".join(f"{n}{suffix} {c} {l}\n" for n, c, l in lines))
    return root


def test_dataset_reads_the_same_clip_in_every_format(tiny_set):
    clips = {}
    for storage_format in ("FRAME", "LMDB", "VIDEO"):
        dataset = VideoDataset(str(tiny_set / f"{storage_format}.txt"), str(tiny_set / storage_format),
                               storage_format, clip_length=4, num_steps=2, num_segments=1,
                               transform=EvalClipTransform(24, num_crops=3), train=False, num_clips=2, num_crops=3)
        assert len(dataset) == 3 * 2 * 3 and dataset.num_videos == 3
        clip, label, video = dataset[2 * 6 + 3 * 1 + 2]  # video 2, clip 1, crop 2
        assert (label, video) == (2, 2) and clip.shape == (3, 4, 24, 24)
        clips[storage_format] = clip
    assert (clips["FRAME"] - clips["LMDB"]).abs().max() == 0  # same JPEG bytes
    assert (clips["FRAME"] - clips["VIDEO"]).abs().mean() < 0.1


def test_dataset_train_items_and_too_short_videos(tiny_set):
    dataset = VideoDataset(str(tiny_set / "FRAME.txt"), str(tiny_set / "FRAME"), "FRAME", 4, 2, 1,
                           TrainClipTransform(16), train=True, num_clips=5, num_crops=3)
    assert len(dataset) == 3
    clip, label, video = dataset[1]
    assert clip.shape == (3, 4, 16, 16) and (label, video) == (1, 1)
    with pytest.raises(ClipTooShortError, match=r"FRAME\.txt, line 1: video 'class 0/video 0' has 12 frames"):
        VideoDataset(str(tiny_set / "FRAME.txt"), str(tiny_set / "FRAME"), "FRAME", 8, 2, 1,
                     TrainClipTransform(16), train=True)
    padded = VideoDataset(str(tiny_set / "FRAME.txt"), str(tiny_set / "FRAME"), "FRAME", 8, 2, 1,
                          EvalClipTransform(16), train=False, loop_pad=True)
    assert padded[0][0].shape == (3, 8, 16, 16)


def test_dataset_of_records_equals_that_of_their_list_file(tiny_set):
    records = read_list_file(tiny_set / "FRAME.txt")
    given = [VideoRecord(r.path, r.num_frames, r.label) for r in records]
    from_file, from_records = (VideoDataset(videos, str(tiny_set / "FRAME"), "FRAME", 4, 2, 1, EvalClipTransform(16),
                                            train=False) for videos in (str(tiny_set / "FRAME.txt"), given))
    assert torch.equal(from_file[1][0], from_records[1][0]) and from_records.labels().tolist() == [0, 1, 2]
    with pytest.raises(ClipTooShortError, match=r"^video 'class 0/video 0' has 12 frames"):
        VideoDataset(given, str(tiny_set / "FRAME"), "FRAME", 8, 2, 1, EvalClipTransform(16), train=False)


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_set_is_deterministic_and_in_list_format(tmp_path):
    first = synthetic.generate(str(tmp_path / "a"), 3, 2, 1, frames=8, size=32, seed=5)
    synthetic.generate(str(tmp_path / "b"), 3, 2, 1, frames=8, size=32, seed=5)
    synthetic.generate(str(tmp_path / "c"), 3, 2, 1, frames=8, size=32, seed=6)
    records = read_list_file(first["train_list"], num_classes=3)
    assert len(records) == 6 and len(read_list_file(first["val_list"])) == 3
    assert read_class_names(first["class_names"], 3) == synthetic.CLASS_NAMES[:3]
    path = os.path.join(records[0].path, "00008.jpg")
    read = lambda d: (tmp_path / d / "frames" / path).read_bytes()
    assert read("a") == read("b") and read("a") != read("c")


def test_synthetic_classes_are_defined_by_motion():
    rng = np.random.default_rng(0)
    moves = {label: synthetic._motion(label, 8, 64, 22, rng) for label in range(8)}
    assert np.all(np.diff(moves[0]["x"]) > 0) and np.all(np.diff(moves[1]["x"]) < 0)
    assert np.all(np.diff(moves[2]["y"]) > 0) and np.all(np.diff(moves[3]["y"]) < 0)
    assert np.all(np.diff(moves[4]["angle"]) < 0) and np.all(np.diff(moves[5]["angle"]) > 0)
    assert np.all(np.diff(moves[6]["scale"]) > 0) and np.all(np.diff(moves[7]["scale"]) < 0)
    # The object moves, so the first and last frames differ.
    video = synthetic.render_video(0, 8, 32, np.random.default_rng(3))
    assert len(video) == 8 and video[0].shape == (32, 32, 3) and not np.array_equal(video[0], video[-1])


# ---------------------------------------------------------------------------------------- preparation
@pytest.mark.parametrize("storage_format", ["FRAME", "LMDB", "VIDEO"])
def test_prepare_videos_writes_lists_that_the_dataset_reads(tmp_path, storage_format):
    from argparse import Namespace
    from sifa.data.prepare import prepare_videos
    frames = smooth_frames(count=10)
    for name, count in (("class a", 10), ("b", 9)):
        os.makedirs(tmp_path / "src" / name)
        write_video_file(str(tmp_path / "src" / name / "v 1.avi"), frames[:count])
    out = tmp_path / "src" if storage_format == "VIDEO" else tmp_path / "out"
    prepare_videos(Namespace(src=str(tmp_path / "src"), out=str(out), format=storage_format,
                             list=str(tmp_path / "list.txt"), classes=str(tmp_path / "classes.txt"),
                             short_side=None, keyint=None, workers=1, video_backend="opencv"))
    suffix = ".avi" if storage_format == "VIDEO" else ""
    assert (tmp_path / "list.txt").read_text() == f"b/v 1{suffix} 9 0\nclass a/v 1{suffix} 10 1\n"
    assert read_class_names(tmp_path / "classes.txt", 2) == ["b", "class a"]
    dataset = VideoDataset(str(tmp_path / "list.txt"), str(out), storage_format, 4, 2, 1, EvalClipTransform(16),
                           train=False)
    assert dataset[1][0].shape == (3, 4, 16, 16)
