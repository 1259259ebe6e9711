"""Synthetic motion-classification videos for demos and tests.

Each video shows textured objects over a random textured background. The class is the motion
of the objects (direction of travel, sense of rotation, growth or shrinkage), never its looks, so
no single frame reveals the class and reversing the frame order changes it. Deterministic for a
seed: every video draws from its own generator keyed by (seed, split, label, index).

Motion regimes (REGIMES) set the translation speed and whether travelling objects also deform:
"slow" (the default: 2-3.5 % of the frame per frame, 1.3-2.2 px at 64 px, rigid) and "fast"
(7-9 %, 4.5-5.8 px at 64 px, objects turn and grow or shrink as they travel). ``shuffle_frames``
writes every video's frames in a random order: the control for clues a single frame gives away.

    python -m sifa.data.synthetic --out data/synthetic --num_classes 4 --videos_per_class 40 \
        --val_videos_per_class 10 --frames 8 --size 64 --seed 0 [--regime fast] [--shuffle_frames]

writes FRAME folders under <out>/frames, <out>/train_list.txt, <out>/val_list.txt (the list format
of docs/design.md §7.1, paths relative to <out>/frames) and <out>/classes.txt.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ..checkpoint_file import atomic_write_text
from ..errors import InputError, exit_on_user_error
from ..user_files import check_output_folder
from .storage import write_frame_folder

CLASS_NAMES = ["moving_right", "moving_left", "moving_down", "moving_up",
               "rotating_clockwise", "rotating_counterclockwise", "growing", "shrinking"]
_SPLITS = {"train": 0, "val": 1}
OBJECTS_PER_VIDEO = 3


@dataclass(frozen=True)
class Regime:
    step: Tuple[float, float]  # translation per frame, a fraction of the frame size (uniform in this range)
    deform: bool  # travelling objects also rotate (either sense) and grow or shrink: their looks change


REGIMES = {"slow": Regime(step=(0.02, 0.035), deform=False),
           "fast": Regime(step=(0.07, 0.09), deform=True)}


def _texture(rng: np.random.Generator, size: int, cells: int, contrast: float, mean: float) -> np.ndarray:
    """Smooth random colour field plus fine noise, size x size x 3 float in [0, 255]."""
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field = mean + contrast * (field - 0.5) + 0.08 * rng.standard_normal((size, size, 3)).astype(np.float32)
    return np.clip(field * 255.0, 0, 255)


def _motion(label: int, frames: int, size: int, patch: int, rng: np.random.Generator,
            regime: Regime = REGIMES["slow"]) -> Dict[str, np.ndarray]:
    """Per-frame centre (x, y), rotation angle (degrees, counter-clockwise) and scale."""
    t = np.arange(frames, dtype=np.float32)
    angle = np.full(frames, rng.uniform(0, 360), np.float32)
    scale = np.ones(frames, np.float32)
    margin = patch * 0.5
    if label < 4:
        step = rng.uniform(*regime.step) * size
        travel = step * (frames - 1)
        direction = [(1, 0), (-1, 0), (0, 1), (0, -1)][label]
        start = []
        for d in direction:
            low, high = (margin, size - margin - travel) if d > 0 else (margin + travel, size - margin)
            if d == 0:
                low, high = margin, size - margin
            start.append(rng.uniform(low, max(low, high)))
        x = start[0] + direction[0] * step * t
        y = start[1] + direction[1] * step * t
        if regime.deform:
            # drawn after the path, so the slow regime's videos stay as they were
            angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(8, 15) * t
            scale = (rng.uniform(0.8, 1.25) ** (1.0 / max(frames - 1, 1))) ** t * rng.uniform(0.75, 1.0)
    else:
        x = np.full(frames, rng.uniform(margin, size - margin), np.float32)
        y = np.full(frames, rng.uniform(margin, size - margin), np.float32)
        if label < 6:
            speed = rng.uniform(8, 15)
            # OpenCV angles are counter-clockwise on screen; clockwise turns them down.
            angle = angle + (-speed if label == 4 else speed) * t
        else:
            factor = (1.6 ** (1.0 / max(frames - 1, 1))) ** (t if label == 6 else (frames - 1 - t))
            scale = 0.7 * factor
    return {"x": x, "y": y, "angle": angle, "scale": scale}


def _render_object(rng: np.random.Generator, patch: int) -> Tuple[np.ndarray, np.ndarray]:
    """A textured, asymmetric shape (ellipse with a notch, so that rotation is visible) and its mask."""
    texture = _texture(rng, patch, cells=int(rng.integers(2, 5)), contrast=1.6, mean=0.65)
    mask = np.zeros((patch, patch), np.float32)
    cv2.ellipse(mask, (patch // 2, patch // 2), (patch // 2 - 1, patch // 3), 0, 0, 360, 1.0, -1)
    cv2.circle(mask, (patch - patch // 4, patch // 2), max(1, patch // 6), 0.0, -1)
    return texture, mask


def render_video(label: int, frames: int, size: int, rng: np.random.Generator,
                 regime: str = "slow") -> List[np.ndarray]:
    """Several objects share the class motion, so random crops of a clip still show it."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must lie in [0, {len(CLASS_NAMES)}), got {label}")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {regime!r}")
    # A darker, calmer background than the objects: their motion survives grayscale and blur augmentation.
    background = _texture(rng, size, cells=int(rng.integers(3, 8)), contrast=0.5, mean=0.35)
    patch = int(round(size * 0.3))
    layers = [(*_render_object(rng, patch), _motion(label, frames, size, patch, rng, REGIMES[regime]))
              for _ in range(OBJECTS_PER_VIDEO)]
    video = []
    for i in range(frames):
        frame = background.copy()
        for texture, mask, motion in layers:
            matrix = cv2.getRotationMatrix2D((patch / 2, patch / 2), float(motion["angle"][i]),
                                             float(motion["scale"][i]))
            matrix[:, 2] += (motion["x"][i] - patch / 2, motion["y"][i] - patch / 2)
            obj = cv2.warpAffine(texture, matrix, (size, size), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR)[..., None]
            frame = alpha * obj + (1 - alpha) * frame
        video.append(np.clip(frame, 0, 255).astype(np.uint8))
    return video


def generate(out: str, num_classes: int, videos_per_class: int, val_videos_per_class: int, frames: int,
             size: int, seed: int, regime: str = "slow", shuffle_frames: bool = False) -> Dict[str, str]:
    """Write the data set; returns the paths of the frame root, list files and class-name file."""
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise InputError(f"num_classes must lie in [2, {len(CLASS_NAMES)}], got {num_classes}")
    paths = {"root_path": os.path.join(out, "frames"), "train_list": os.path.join(out, "train_list.txt"),
             "val_list": os.path.join(out, "val_list.txt"), "class_names": os.path.join(out, "classes.txt")}
    counts = {"train": videos_per_class, "val": val_videos_per_class}
    for split, count in counts.items():
        lines = []
        for label in range(num_classes):
            for index in range(count):
                rng = np.random.default_rng([seed, _SPLITS[split], label, index])
                relative = os.path.join(CLASS_NAMES[label], f"{split}_{index:04d}")
                video = render_video(label, frames, size, rng, regime)
                if shuffle_frames:
                    video = [video[i] for i in rng.permutation(frames)]
                write_frame_folder(os.path.join(paths["root_path"], relative), video)
                lines.append(f"{relative} {frames} {label}\n")
        # Written last and atomically: an existing list means a complete split.
        list_path = paths[f"{split}_list"]
        atomic_write_text(list_path, "".join(lines))
    with open(paths["class_names"], "w", encoding="utf-8") as f:
        f.writelines(name + "\n" for name in CLASS_NAMES[:num_classes])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_classes", type=int, default=4, help=f"2..{len(CLASS_NAMES)}: {', '.join(CLASS_NAMES)}")
    parser.add_argument("--videos_per_class", type=int, default=40, help="training videos per class")
    parser.add_argument("--val_videos_per_class", type=int, default=10, help="validation videos per class")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regime", choices=sorted(REGIMES), default="slow", help="motion regime (see above)")
    parser.add_argument("--shuffle_frames", action="store_true", help="permute every video's frames at random")
    args = parser.parse_args()
    with exit_on_user_error():
        check_output_folder(args.out, "--out")
        paths = generate(args.out, args.num_classes, args.videos_per_class, args.val_videos_per_class, args.frames,
                         args.size, args.seed, args.regime, args.shuffle_frames)
    print("\n".join(f"{key}: {value}" for key, value in paths.items()))


if __name__ == "__main__":
    main()
