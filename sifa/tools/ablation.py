"""The ablation study of docs/reproduction.md: C2D, TSM and four SIFA designs, trained with one recipe
(settings/ablation.yml, or --recipe) on synthetic motion videos of each regime, several seeds each.

    python -m sifa.tools.ablation --out output/ablation            # the full study
    python -m sifa.tools.ablation --out output/ablation_quick --quick
    python -m sifa.tools.ablation --out output/ablation_inflated --net timm/test_resnet --sifa_stages 1 2 \
        --size 64 --frames 4 --epochs 10 --videos_per_class 80 --val_videos_per_class 20 --seeds 5 \
        --recipe settings/ablation_inflated.yml                     # the second study, on an inflated ResNet

Every run goes through `python -m sifa.tools.train` (a subprocess, 1 or 2 processes, with this copy of
the package on its path). After each run
<out>/results.json is rewritten; a study started again with the same --out skips the runs listed
there. Then <out>/results.md (the last evaluation of each run, mean ± 95 % confidence interval over
seeds; paired tests of PAIRS; the mean after each epoch), results_summary.json (the same numbers),
results.png (the last evaluation) and results_curves.png (the mean after each epoch, 95 % CI band)
summarise them, rewritten after every run. The control
"c2d_shuffled_frames" trains C2D on videos whose frames are randomly permuted (training and
validation): it should stay at chance.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..checkpoint_file import atomic_write_text
from ..data.synthetic import REGIMES, generate
from ..errors import InputError, exit_on_user_error
from ..user_files import check_output_folder
from .stats import mean_ci, paired_t, sign_test, wilcoxon_signed_rank

RECIPE = os.path.join("settings", "ablation.yml")  # the default --recipe, relative to the working directory
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 4  # the four directions of travel
# variant -> (network overrides, frames shuffled)
VARIANTS: Dict[str, tuple] = {
    "c2d": ({"net_name": "c2d_resnet50"}, False),
    "tsm": ({"net_name": "c2d_tsm_resnet50"}, False),
    "sifa_fixed_window": ({"net_name": "c2d_sifa_resnet50", "offset_mode": "zero"}, False),
    "sifa_plain_guide": ({"net_name": "c2d_sifa_resnet50", "offset_guide": "plain"}, False),
    "sifa": ({"net_name": "c2d_sifa_resnet50"}, False),
    "sifa_zero_init": ({"net_name": "c2d_sifa_resnet50", "offset_init": "zero"}, False),
    "c2d_shuffled_frames": ({"net_name": "c2d_resnet50"}, True),
}
# The same study on an inflated 2-D network (--net timm/<name>, docs/reproduction.md's second study):
# variant -> (overrides on top of net_name and sifa_stages, frames shuffled). C2D here is order-blind
# (no temporal convolution): the frames go through the 2-D network as a batch and their logits are averaged.
INFLATED_VARIANTS: Dict[str, tuple] = {
    "c2d": ({"sifa_stages": []}, False),
    "tsm": ({"sifa_stages": [], "temporal_shift": "residual"}, False),
    "sifa_fixed_window": ({"offset_mode": "zero"}, False),
    "sifa_plain_guide": ({"offset_guide": "plain"}, False),
    "sifa": ({}, False),
    "sifa_zero_init": ({"offset_init": "zero"}, False),
    "c2d_shuffled_frames": ({"sifa_stages": []}, True),
}
QUICK_VARIANTS = ("c2d", "sifa")
RESNET50 = "resnet50"  # --net of the first study: the c2d_*_resnet50 networks of VARIANTS
# The paired comparisons of results.md: (a, b) compares a - b over the seeds; the first is the study's question.
PAIRS = (("sifa", "sifa_fixed_window"), ("sifa_zero_init", "sifa_fixed_window"), ("sifa", "sifa_plain_guide"),
         ("sifa_fixed_window", "c2d"))


@dataclass(frozen=True)
class Budget:
    """What every run gets, whatever the variant."""
    epochs: int = 4
    videos_per_class: int = 48  # 12 steps of 16 clips an epoch: the 42 runs took 82 min on 2 cores
    val_videos_per_class: int = 15
    size: int = 64
    frames: int = 8
    nproc: int = 2
    net: str = RESNET50  # or timm/<name>: that 2-D network inflated (INFLATED_VARIANTS)
    sifa_stages: Tuple[int, ...] = (2, 3)  # the inflated network's stages that SIFA layers follow
    iter_size: int = 1  # gradient accumulation: batch_size x nproc x iter_size clips a step
    jobs: int = 1  # runs at once (each on one thread when > 1)


def network_overrides(variant: str, budget: Budget) -> Dict[str, object]:
    """The network's keys of one variant: VARIANTS' for ResNet-50, else the inflated ``budget.net``'s."""
    if budget.net == RESNET50:
        return dict(VARIANTS[variant][0])
    return {"net_name": budget.net, "sifa_stages": list(budget.sifa_stages), **INFLATED_VARIANTS[variant][0]}


def data_dir(out: str, regime: str, shuffled: bool) -> str:
    return os.path.join(out, "data", regime + ("_shuffled_frames" if shuffled else ""))


def prepare_data(out: str, regime: str, shuffled: bool, budget: Budget) -> Dict[str, str]:
    """The regime's data set under <out>/data, generated once (data seed 0 for every run)."""
    folder = data_dir(out, regime, shuffled)
    paths = {"root_path": os.path.join(folder, "frames"), "train_list": os.path.join(folder, "train_list.txt"),
             "val_list": os.path.join(folder, "val_list.txt"), "class_names": os.path.join(folder, "classes.txt")}
    if not all(os.path.isfile(paths[k]) for k in ("train_list", "val_list", "class_names")):
        paths = generate(folder, NUM_CLASSES, budget.videos_per_class, budget.val_videos_per_class, budget.frames,
                         budget.size, seed=0, regime=regime, shuffle_frames=shuffled)
    return paths


def run_overrides(variant: str, seed: int, data: Dict[str, str], run_dir: str, budget: Budget) -> List[str]:
    """The training's --opts for one run on top of the shared recipe."""
    opts = {**network_overrides(variant, budget), "seed": seed, "epochs": budget.epochs,
            "iter_size": budget.iter_size, "output_dir": run_dir, "num_classes": NUM_CLASSES,
            "crop_size": budget.size, "eva_crop_size": budget.size, "clip_length": budget.frames,
            "root_path": data["root_path"], "list_file": data["train_list"], "eva_list_file": data["val_list"],
            "class_name_file": data["class_names"]}
    return [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in opts.items()]


def train(overrides: Sequence[str], nproc: int, log_path: str, recipe: str, threads: Optional[int] = None) -> None:
    """One training run of ``recipe`` through sifa.tools.train; its output goes to ``log_path``; ``threads``:
    OMP_NUM_THREADS of its processes (None: the launcher's choice)."""
    launcher = [sys.executable, "-m"] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc_per_node={nproc}", "--module"]
    command = launcher + ["sifa.tools.train", f"--config_file={recipe}", "--opts", *overrides]
    path = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    with open(log_path, "w", encoding="utf-8") as log:
        env = dict(os.environ, PYTHONPATH=path, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"training failed (exit {result.returncode}); its output: {log_path}")


def run_one(out: str, variant: str, regime: str, seed: int, budget: Budget, recipe: str) -> dict:
    """Train one variant on one regime with one seed; the result entry of results.json."""
    data = prepare_data(out, regime, VARIANTS[variant][1], budget)
    run_dir = os.path.join(out, "runs", variant, regime, f"seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt: start it over
    os.makedirs(run_dir)
    tic = time.time()
    train(run_overrides(variant, seed, data, run_dir, budget), budget.nproc, os.path.join(run_dir, "stdout.txt"),
          recipe, threads=1 if budget.jobs > 1 else None)
    with open(os.path.join(run_dir, "val_accuracy.json"), encoding="utf-8") as f:
        history = json.load(f)
    # the study keeps accuracies and logs; two ResNet-50 checkpoints per run would fill the disk
    for name in os.listdir(run_dir):
        if name.endswith((".pth", ".pth.sha256")):
            os.remove(os.path.join(run_dir, name))
    return {"variant": variant, "regime": regime, "seed": seed, "epochs": budget.epochs,
            "val_top1": [{"epoch": e["epoch"], "top1": e["top1"]} for e in history],
            "wall_time_s": round(time.time() - tic, 1), "budget": asdict(budget)}


def load_results(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_results(path: str, results: List[dict]) -> None:
    atomic_write_text(path, json.dumps(results, indent=2))  # an interrupted write leaves the previous list intact


def final_top1(entry: dict) -> float:
    return entry["val_top1"][-1]["top1"]


def histories(results: List[dict]) -> Dict[tuple, List[List[float]]]:
    """(variant, regime) -> the top-1 after each evaluation of each seed's run, in seed order."""
    table: Dict[tuple, List[List[float]]] = {}
    for entry in sorted(results, key=lambda e: e["seed"]):
        table.setdefault((entry["variant"], entry["regime"]), []).append([e["top1"] for e in entry["val_top1"]])
    return table


def summarise(results: List[dict]) -> Dict[tuple, List[float]]:
    """(variant, regime) -> final top-1 of each seed, in seed order."""
    return {key: [history[-1] for history in runs] for key, runs in histories(results).items()}


def _present(table: Dict[tuple, object]) -> Tuple[List[str], List[str]]:
    """The variants and the regimes that ``table``'s keys hold, in the study's order."""
    return ([v for v in VARIANTS if any(key[0] == v for key in table)],
            [r for r in REGIMES if any(key[1] == r for key in table)])


def _sd(values: List[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_ci(values: List[float]) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.1f} ± {half:.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown_table(results: List[dict]) -> str:
    """Final validation top-1 (%), mean ± half-width of its 95 % confidence interval (t over the seeds),
    the seeds' values in brackets."""
    table = summarise(results)
    variants, regimes = _present(table)
    lines = ["| variant | " + " | ".join(f"{r} motion" for r in regimes) + " |",
             "|---|" + "---|" * len(regimes)]
    for variant in variants:
        cells = []
        for regime in regimes:
            values = table.get((variant, regime))
            cells.append(f"{_mean_ci(values)} ({', '.join(f'{v:.1f}' for v in values)})" if values else "—")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_by_seed(results: List[dict], a: str, b: str, regime: str) -> Tuple[List[int], List[float], List[float]]:
    """The seeds both ``a`` and ``b`` ran on ``regime``, and their final top-1 in seed order (a pair shares its
    seed: the same data order and, where the networks agree, the same initial weights)."""
    final = {(e["variant"], e["seed"]): final_top1(e) for e in results if e["regime"] == regime}
    seeds = sorted(s for (v, s) in final if v == a and (b, s) in final)
    return seeds, [final[(a, s)] for s in seeds], [final[(b, s)] for s in seeds]


def comparisons(results: List[dict]) -> List[dict]:
    """Every pair of PAIRS with ≥ 2 common seeds, per regime: the paired t-test, the exact Wilcoxon
    signed-rank test and the sign test of a - b."""
    rows = []
    for regime in REGIMES:
        for a, b in PAIRS:
            seeds, xs, ys = paired_by_seed(results, a, b, regime)
            if len(seeds) < 2:
                continue
            rows.append({"regime": regime, "a": a, "b": b, "seeds": seeds, "t_test": paired_t(xs, ys),
                         "wilcoxon": wilcoxon_signed_rank(xs, ys), "sign": sign_test(xs, ys)})
    return rows


def markdown_comparisons(results: List[dict]) -> str:
    """The paired tests of :func:`comparisons`, one row each."""
    rows = comparisons(results)
    if not rows:
        return ""
    lines = ["Paired comparisons of the last-epoch top-1 (a − b over the seeds both ran; two-sided p-values: "
             "paired t-test, exact Wilcoxon signed-rank, exact sign test)", "",
             "| regime | a − b | seeds | mean diff ± 95 % CI | t (df) | p (t) | p (Wilcoxon) | wins/losses "
             "| p (sign) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t, w, s = row["t_test"], row["wilcoxon"], row["sign"]
        lines.append(f"| {row['regime']} | {row['a']} − {row['b']} | {len(row['seeds'])} | {t['mean_diff']:+.1f} ± "
                     f"{t['ci95']:.1f} | {t['t']:.2f} ({t['df']}) | {t['p']:.3f} | {w['p']:.3f} | "
                     f"{s['wins']}/{s['losses']} | {s['p']:.3f} |")
    return "\n".join(lines) + "\n"


def markdown_curves(results: List[dict]) -> str:
    """Validation top-1 (%) after each epoch, mean over seeds: a table per regime, with the change over the
    last two epochs (a flat curve changes little)."""
    curves = histories(results)
    variants, regimes = _present(curves)
    sections = []
    for regime in regimes:
        epochs = max(len(c) for key, runs in curves.items() if key[1] == regime for c in runs)
        lines = [f"**{regime} motion**, mean top-1 after each epoch", "",
                 "| variant | " + " | ".join(f"epoch {e + 1}" for e in range(epochs))
                 + " | change over the last 2 epochs |",
                 "|---|" + "---|" * (epochs + 1)]
        for variant in variants:
            runs = curves.get((variant, regime))
            if runs:
                means = [statistics.mean(c[e] for c in runs if len(c) > e) for e in range(epochs)]
                change = f"{means[-1] - means[-3]:+.1f}" if epochs >= 3 else "—"
                lines.append(f"| {variant} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {change} |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def results_json_summary(results: List[dict]) -> dict:
    """results.md's numbers, for a program: per (variant, regime) the seeds' final top-1, mean and CI."""
    summary = {}
    for (variant, regime), values in summarise(results).items():
        mean, half = mean_ci(values)
        summary[f"{variant}/{regime}"] = {"values": values, "mean": mean,
                                          "ci95": None if len(values) < 2 else half}
    return {"final_top1": summary, "comparisons": comparisons(results)}


def plot(results: List[dict], path: str) -> None:
    """One panel per regime: a bar per variant (mean, 95 % CI as error bar), each seed a dot; and beside it
    ``<path stem>_curves.png``: the mean top-1 after each epoch with its 95 % CI band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(results)
    variants, regimes = _present(table)
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.5 * len(regimes), 4), sharey=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for i, variant in enumerate(variants):
            values = table.get((variant, regime), [])
            if not values:
                continue
            mean, half = mean_ci(values)
            ax.bar(i, mean, yerr=half if len(values) > 1 else 0.0, color="0.8", edgecolor="0.3", capsize=4)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.axhline(100.0 / NUM_CLASSES, color="red", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right")
        ax.set_title(f"{regime} motion")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("validation top-1 (%), last epoch\nmean, 95 % CI, seeds")
    axes[0][0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

    curves = histories(results)
    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 4), sharey=True, squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for variant in variants:
            runs = [c for c in curves.get((variant, regime), [])]
            if not runs:
                continue
            epochs = min(len(c) for c in runs)
            stats_ = [mean_ci([c[e] for c in runs]) for e in range(epochs)]
            x = list(range(1, epochs + 1))
            means = [m for m, _ in stats_]
            line, = ax.plot(x, means, marker="o", markersize=3, label=variant)
            if len(runs) > 1:
                ax.fill_between(x, [m - h for m, h in stats_], [m + h for m, h in stats_], color=line.get_color(),
                                alpha=0.15)
        ax.axhline(100.0 / NUM_CLASSES, color="red", linestyle="--", linewidth=1)
        ax.set_title(f"{regime} motion")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("validation top-1 (%), mean and 95 % CI")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.splitext(path)[0] + "_curves.png", dpi=120)
    plt.close(fig)


def write_summary(out: str, results: List[dict]) -> None:
    """<out>/results.md, results_summary.json, results.png and results_curves.png from ``results``."""
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table(results) + "\n" + markdown_comparisons(results) + "\n" + markdown_curves(results))
    atomic_write_text(os.path.join(out, "results_summary.json"), json.dumps(results_json_summary(results), indent=2))
    plot(results, os.path.join(out, "results.png"))


def study(out: str, variants: Sequence[str], regimes: Sequence[str], seeds: Sequence[int],
          budget: Budget, recipe: str = RECIPE) -> List[dict]:
    """Run every (variant, regime, seed) not yet in <out>/results.json, then write the table and plot."""
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    results = load_results(results_path)
    done = {(e["variant"], e["regime"], e["seed"]) for e in results}
    pending = []
    for seed in seeds:  # seed by seed: a study cut short has every variant and regime at the seeds it ran
        for regime in regimes:
            for variant in variants:
                if (variant, regime, seed) in done:
                    print(f"skip {variant} / {regime} / seed {seed}: in {results_path}", flush=True)
                else:
                    pending.append((variant, regime, seed))
    for variant, regime, _ in pending:  # the data sets first: parallel runs must not generate them twice
        prepare_data(out, regime, VARIANTS[variant][1], budget)
    lock = threading.Lock()

    def one(job: Tuple[str, str, int]) -> None:
        variant, regime, seed = job
        print(f"run {variant} / {regime} / seed {seed} ...", flush=True)
        entry = run_one(out, variant, regime, seed, budget, recipe)
        print(f"  {variant} / {regime} / seed {seed}: top-1 {final_top1(entry):.2f} % in {entry['wall_time_s']:.0f} s",
              flush=True)
        with lock:
            results.append(entry)
            save_results(results_path, results)
            write_summary(out, results)  # the tables and plots so far, after every run

    if budget.jobs == 1:
        for job in pending:
            one(job)
    else:
        with ThreadPoolExecutor(budget.jobs) as pool:
            for future in [pool.submit(one, job) for job in pending]:
                future.result()
    write_summary(out, results)
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    defaults = Budget()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of results.json, results.md, results.png, data, runs")
    parser.add_argument("--recipe", default=RECIPE, help="the settings file every run shares (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one seed, slow motion, {' vs '.join(QUICK_VARIANTS)} only (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 of the full study")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--videos_per_class", type=int, default=defaults.videos_per_class)
    parser.add_argument("--val_videos_per_class", type=int, default=defaults.val_videos_per_class)
    parser.add_argument("--size", type=int, default=defaults.size, help="frame height and width (≥ 32)")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="frames per video and clip")
    parser.add_argument("--nproc", type=int, choices=(1, 2), default=defaults.nproc, help="training processes")
    parser.add_argument("--net", default=defaults.net,
                        help=f"{RESNET50} (the c2d_*_resnet50 networks, default) or timm/<name>: that 2-D network "
                             f"inflated, e.g. timm/resnet10t")
    parser.add_argument("--sifa_stages", type=int, nargs="+", default=list(defaults.sifa_stages),
                        help="with --net timm/<name>: the stages (feature indices) SIFA layers follow "
                             "(default: %(default)s)")
    parser.add_argument("--iter_size", type=int, default=defaults.iter_size,
                        help="gradient accumulation steps (--nproc 1 --iter_size 2: the 16 clips a step of 2 × 8)")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help="runs at once, each on one thread (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.net != RESNET50 and not args.net.startswith("timm/"):
        parser.error(f"--net must be {RESNET50} or timm/<name>, got {args.net!r}")
    budget = Budget(args.epochs, args.videos_per_class, args.val_videos_per_class, args.size, args.frames,
                    args.nproc, args.net, tuple(args.sifa_stages), args.iter_size, args.jobs)
    if args.quick:
        variants, regimes, seeds = QUICK_VARIANTS, ("slow",), (0,)
    else:
        variants, regimes, seeds = args.variants, args.regimes, range(args.seeds)
    with exit_on_user_error():
        if not os.path.isfile(args.recipe):
            raise InputError(f"--recipe {args.recipe} not found (run from the repository root, or pass --recipe)")
        check_output_folder(args.out, "--out")
        results = study(args.out, variants, regimes, seeds, budget, args.recipe)
    print(markdown_table(results), end="")


if __name__ == "__main__":
    main()
