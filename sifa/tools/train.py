"""Train and evaluate a video network (docs/training.md).

    python -m torch.distributed.launch --nproc_per_node=K train_val_3d.py --config_file=X.yml
    torchrun --nproc_per_node=K -m sifa.tools.train --config_file=X.yml
    python -m sifa.tools.train --config_file=X.yml [--eval_only [CHECKPOINT]] [--opts key=value ...]

`train_val_3d.py` in the repository root runs this module (the original's entry point).
"""
from __future__ import annotations

import argparse
import os
from types import SimpleNamespace
from typing import List, Optional

from ..config import check_run_inputs, load_config
from ..engine.checkpoint import CURRENT
from ..engine.distributed import cleanup, elastic_restart_count, init_distributed, stops_reported_once
from ..engine.guards import OutputDirLock, exit_with_launcher
from ..engine.trainer import Trainer
from ..errors import exit_on_user_error
from ..models import check_model_config


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SIFA training and evaluation")
    parser.add_argument("--config_file", required=True, help="experiment YAML (see sifa/base_config/default.yml)")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="set by torch.distributed.launch; otherwise LOCAL_RANK is read")
    parser.add_argument("--eval_only", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="only evaluate CHECKPOINT (default: eva_model) with the eva_* views")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, values read as YAML")
    return parser.parse_args(argv)


def resume_hint(cfg: SimpleNamespace, eval_only: bool) -> str:
    """Where an interrupted run can go on from."""
    current = os.path.join(cfg.output_dir, CURRENT)
    if eval_only:
        return "the evaluation was stopped; rerun it to evaluate again"
    if os.path.isfile(current):
        return f"training was stopped; rerun with resume=true to continue from {current}"
    return "training was stopped before its first epoch was saved; rerun to start again"


def resume_after_restart(cfg: SimpleNamespace) -> None:
    """A worker group that torchrun restarted (``--max-restarts``) continues from the run's last
    checkpoint, not from what the first start resumed from (or from scratch)."""
    current = os.path.join(cfg.output_dir, CURRENT)
    if os.path.isfile(current):
        cfg.resume = current


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    eval_only = args.eval_only is not None
    # before the process group: fail fast
    check_model_config(cfg)
    check_run_inputs(cfg, eval_checkpoint=args.eval_only)
    exit_with_launcher()
    restart = elastic_restart_count()
    if restart and not eval_only:
        resume_after_restart(cfg)
    ctx = init_distributed(args.local_rank)
    lock = None
    try:
        with stops_reported_once(ctx, lambda: resume_hint(cfg, eval_only)):
            # One training run per output directory; evaluations may run beside it.
            lock = OutputDirLock(cfg.output_dir) if ctx.is_main and not eval_only else None
            trainer = Trainer(cfg, ctx, eval_only=eval_only)
            try:
                if restart:
                    trainer.logger.info(f"restart {restart} of the workers by torchrun (--max-restarts)")
                if eval_only:
                    trainer.evaluate_checkpoint(args.eval_only)
                else:
                    trainer.train()
            finally:
                trainer.close()
    finally:
        cleanup(ctx)
        if lock is not None:
            lock.release()


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    with exit_on_user_error():
        run(args)


if __name__ == "__main__":
    main()
