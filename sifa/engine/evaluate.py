"""Multi-view evaluation, sharded over all ranks (docs/training.md, "Evaluation").

Every rank scores a strided share of the (video, clip, crop) views; the scores are gathered and
each video's softmax scores are averaged over its views and over both heads of a dual-head
network. The number of videos comes from the list file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data import VideoDataset
from .distributed import DistContext, all_gather_objects


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, num_classes))
    scores: np.ndarray  # num_videos x num_classes, averaged softmax
    labels: np.ndarray  # num_videos

    def summary(self) -> str:
        """``top1 X topK Y`` with K = min(5, number of classes): top-5 of fewer classes would always be 100."""
        return f"top1 {self.top1:.2f} top{min(5, self.scores.shape[1])} {self.top5:.2f}"


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
             description: str = "evaluation") -> EvalResult:
    """`model` is the bare network (not DDP-wrapped): ranks may run different numbers of batches.
    Rank 0 shows its progress (tqdm, on stderr) under ``description``."""
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    # A private generator keeps evaluation from consuming the global RNG (resumed runs stay identical).
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=ctx.device.type == "cuda", generator=torch.Generator())
    video_indices: List[np.ndarray] = []
    probabilities: List[np.ndarray] = []
    for clips, _, videos in tqdm(loader, desc=description, unit="batch", disable=not ctx.is_main, leave=False):
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(clips.to(ctx.device, non_blocking=True))
        probabilities.append(view_probabilities(outputs).double().cpu().numpy())
        video_indices.append(videos.numpy())
    local = (np.concatenate(video_indices) if video_indices else np.zeros(0, np.int64),
             np.concatenate(probabilities) if probabilities else np.zeros((0, num_classes)))
    totals = np.zeros((dataset.num_videos, num_classes))
    counts = np.zeros(dataset.num_videos, np.int64)
    for videos, probs in all_gather_objects(ctx, local):
        np.add.at(totals, videos, probs)
        np.add.at(counts, videos, 1)
    if not (counts == dataset.views_per_video).all():
        raise RuntimeError(f"evaluation gathered {counts.sum()} views, expected {len(dataset)}")
    model.train(was_training)
    scores = totals / counts[:, None]
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        raise FloatingPointError(f"the network's scores are NaN or infinite for {int((~finite).sum())} of "
                                 f"{len(scores)} videos, so no accuracy is reported: its weights are not finite "
                                 f"or it overflows")
    labels = dataset.labels()
    return EvalResult(top1=topk_accuracy(scores, labels, 1), top5=topk_accuracy(scores, labels, 5),
                      scores=scores, labels=labels)
