"""Loss, learning-rate and accuracy curves of a training run, from its TensorBoard event files.

    python -m sifa.tools.plot_log --output_dir output/synthetic_demo [--out curves.png]

Reads every event file under the run's output_dir (a resumed run appends new files) and plots
the scalars whose tag names a loss (`train/loss` per iteration, `train/epoch_loss` per epoch),
the learning rate (`train/lr`) and accuracy (`val/top1`, `val/topK` with K = min(5, classes), as
the training named it; `--eval_only` results, `eval_only/*`, as separate stars at the epoch of the
checkpoint they evaluated, labelled so). Writes <output_dir>/curves.png unless --out is given.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from ..errors import InputError, exit_on_user_error  # noqa: E402
from ..user_files import check_output_file  # noqa: E402

# Panel title, x-axis label and the test that puts a scalar tag on the panel.
# Per-iteration and per-epoch losses get panels of their own: their x axes differ.
PANELS = (
    ("loss per iteration", "iteration", lambda tag: tag.endswith("loss") and not tag.endswith("epoch_loss")),
    ("mean loss per epoch", "epoch", lambda tag: tag.endswith("epoch_loss")),
    ("learning rate", "iteration", lambda tag: tag.rsplit("/", 1)[-1] == "lr"),
    ("accuracy (%)", "epoch", lambda tag: re.fullmatch(r"top\d+", tag.rsplit("/", 1)[-1]) is not None),
)
EVAL_ONLY_PREFIX = "eval_only/"
EPOCH_UNKNOWN = -1  # the step sifa.engine.trainer gives an --eval_only result of a checkpoint without an epoch

Series = Dict[str, Tuple[List[int], List[float]]]


def read_scalars(output_dir: str) -> Series:
    """Every scalar tag of the run: (steps, values), sorted by step; a step logged twice keeps its last value."""
    if not os.path.isdir(output_dir):
        raise InputError(f"run folder not found: {output_dir}")
    event_files = sorted(os.path.join(root, f) for root, _, files in os.walk(output_dir)
                         for f in files if "tfevents" in f)
    if not event_files:
        raise InputError(f"no TensorBoard event files under {output_dir}")
    by_step: Dict[str, Dict[int, float]] = {}
    # Files are read in name order (their names begin with the creation time), so a resumed run's
    # values replace those of the interrupted one at the same step.
    for path in event_files:
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            steps = by_step.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                steps[event.step] = event.value
    return {tag: (sorted(steps), [steps[s] for s in sorted(steps)]) for tag, steps in by_step.items()}


def plot_curves(series: Series, path: str, title: str = "") -> List[str]:
    """Write the panels of PANELS side by side to `path`; returns the tags plotted."""
    plotted = []
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.5 * len(PANELS), 4))
    for ax, (name, xlabel, selects) in zip(axes, PANELS):
        tags = sorted(tag for tag in series if selects(tag))
        for tag in tags:
            steps, values = series[tag]
            if tag.startswith(EVAL_ONLY_PREFIX):
                # Evaluations of finished checkpoints, not a curve over training: stars at their checkpoint's epoch.
                epochs = ", ".join("?" if s == EPOCH_UNKNOWN else str(s) for s in steps)
                ax.scatter([max(s, 0) for s in steps], values, marker="*", s=120, zorder=3,
                           label=f"{tag} (--eval_only of the epoch {epochs} checkpoint)")
                continue
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=tag)
        plotted += tags
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if tags:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if not plotted:
        plt.close(fig)
        raise InputError(f"no loss, lr or accuracy scalars among the logged tags {sorted(series)}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return plotted


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="the run's output_dir (holds the event files)")
    parser.add_argument("--out", default=None, help="PNG to write (default: <output_dir>/curves.png)")
    args = parser.parse_args(argv)
    path = args.out or os.path.join(args.output_dir, "curves.png")
    with exit_on_user_error():
        check_output_file(path, "--out")
        plotted = plot_curves(read_scalars(args.output_dir), path, title=args.output_dir)
    print(f"{path}: {', '.join(plotted)}")
    return path


if __name__ == "__main__":
    main()
