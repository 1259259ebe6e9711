"""Multi-view evaluation, sharded over all ranks (docs/training.md, "Evaluation").

Every rank scores a strided share of the (video, clip, crop) views; the scores are gathered and
each video's softmax scores are averaged over its views and over both heads of a dual-head
network. The number of videos comes from the list file; videos that skip_bad_samples left out are
not scored (EvalResult.skipped names them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data import BadSampleError, VideoDataset, collate_samples
from .distributed import DistContext, all_gather_objects


TOP_K = 5  # the second accuracy reported: top-5, or top-C of C < 5 classes (top-5 of fewer would always be 100)


@dataclass
class EvalResult:
    top1: float  # percent
    topk: float  # percent, top-k with k = self.k
    scores: np.ndarray  # scored videos x num_classes, averaged softmax
    labels: np.ndarray  # scored videos
    skipped: List[str] = field(default_factory=list)  # the videos left out (skip_bad_samples), one message each

    @property
    def k(self) -> int:
        return min(TOP_K, self.scores.shape[1])

    @property
    def accuracies(self) -> Dict[str, float]:
        """``{"top1": X, "topK": Y}``, named by the real K: the keys of the JSON results and TensorBoard tags."""
        return {"top1": self.top1, f"top{self.k}": self.topk}

    def summary(self) -> str:
        return " ".join(f"{name} {value:.2f}" for name, value in self.accuracies.items())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def class_report(result: EvalResult, class_names: Optional[List[str]]) -> Dict[str, object]:
    """Per class: its videos, top-1 accuracy (percent; None for a class without videos) and the confusion
    matrix of the top-1 predictions (row = true class, column = predicted)."""
    num_classes = result.scores.shape[1]
    names = class_names or [str(i) for i in range(num_classes)]
    matrix = confusion_matrix(result.labels, result.scores.argmax(axis=1), num_classes)
    videos = matrix.sum(axis=1)
    return {"class_names": names,
            "per_class": [{"label": i, "name": names[i], "num_videos": int(videos[i]),
                           "top1": float(100.0 * matrix[i, i] / videos[i]) if videos[i] else None}
                          for i in range(num_classes)],
            "confusion_matrix": matrix.tolist()}


def plot_confusion(report: Dict[str, object], path: str, title: str) -> None:
    """The confusion matrix as a PNG: each row normalised by its videos (colour), counts written in the cells
    when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(report["confusion_matrix"], dtype=np.float64)
    names = report["class_names"]
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(max(4.0, 0.35 * len(names) + 2), 40.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class's videos")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize=8 if len(names) <= 50 else 4)
    ax.set_yticks(ticks, names, fontsize=8 if len(names) <= 50 else 4)
    if len(names) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def view_probabilities(outputs: List[torch.Tensor]) -> torch.Tensor:
    """The mean of the softmaxes of the network's heads."""
    return torch.stack([o.float().softmax(dim=1) for o in outputs]).mean(dim=0)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean() * 100.0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: VideoDataset, batch_size: int, num_workers: int,
             num_classes: int, ctx: DistContext, amp_dtype: torch.dtype | None = None,
             description: str = "evaluation", show_progress: bool = True) -> EvalResult:
    """`model` is the bare network (not DDP-wrapped): ranks may run different numbers of batches.
    With ``show_progress``, rank 0 shows its progress (tqdm, on stderr) under ``description``."""
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    # A private generator keeps evaluation from consuming the global RNG (resumed runs stay identical).
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=ctx.device.type == "cuda", generator=torch.Generator(),
                        collate_fn=collate_samples)
    video_indices: List[np.ndarray] = []
    probabilities: List[np.ndarray] = []
    skipped: Dict[int, str] = {}  # video index -> why it was left out
    for clips, _, videos, skipped_views in tqdm(loader, desc=description, unit="batch", leave=False,
                                                disable=not (ctx.is_main and show_progress)):
        skipped.update(skipped_views)
        if clips is None:
            continue
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(clips.to(ctx.device, non_blocking=True))
        probabilities.append(view_probabilities(outputs).double().cpu().numpy())
        video_indices.append(videos.numpy())
    local = (np.concatenate(video_indices) if video_indices else np.zeros(0, np.int64),
             np.concatenate(probabilities) if probabilities else np.zeros((0, num_classes)), skipped)
    totals = np.zeros((dataset.num_videos, num_classes))
    counts = np.zeros(dataset.num_videos, np.int64)
    for videos, probs, rank_skipped in all_gather_objects(ctx, local):
        np.add.at(totals, videos, probs)
        np.add.at(counts, videos, 1)
        skipped.update(rank_skipped)
    model.train(was_training)
    # A video with one unreadable view is left out whole: its other views alone would score it differently.
    scored = np.ones(dataset.num_videos, bool)
    scored[list(skipped)] = False
    if not scored.any():
        raise BadSampleError(f"no video could be read (skip_bad_samples left out all {dataset.num_videos}), "
                             f"e.g. {next(iter(skipped.values()))}")
    if not (counts[scored] == dataset.views_per_video).all():
        raise RuntimeError(f"evaluation gathered {counts[scored].sum()} views of the videos read, expected "
                           f"{scored.sum() * dataset.views_per_video}")
    scores = totals[scored] / counts[scored, None]
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        raise FloatingPointError(f"the network's scores are NaN or infinite for {int((~finite).sum())} of "
                                 f"{len(scores)} videos, so no accuracy is reported: its weights are not finite "
                                 f"or it overflows")
    labels = dataset.labels()[scored]
    return EvalResult(top1=topk_accuracy(scores, labels, 1), topk=topk_accuracy(scores, labels, TOP_K),
                      scores=scores, labels=labels, skipped=[skipped[i] for i in sorted(skipped)])
