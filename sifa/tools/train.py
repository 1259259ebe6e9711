"""Train and evaluate a video network (docs/training.md).

    python -m torch.distributed.launch --nproc_per_node=K train_val_3d.py --config_file=X.yml
    torchrun --nproc_per_node=K -m sifa.tools.train --config_file=X.yml
    python -m sifa.tools.train --config_file=X.yml [--eval_only [CHECKPOINT]] [--opts key=value ...]

`train_val_3d.py` in the repository root runs this module (the original's entry point).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from ..config import check_run_inputs, load_config
from ..engine.distributed import cleanup, init_distributed
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


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    # before the process group: fail fast
    check_model_config(cfg)
    check_run_inputs(cfg, eval_checkpoint=args.eval_only)
    exit_with_launcher()
    ctx = init_distributed(args.local_rank)
    # One training run per output directory; evaluations may run beside it.
    lock = OutputDirLock(cfg.output_dir) if ctx.is_main and args.eval_only is None else None
    trainer = Trainer(cfg, ctx, eval_only=args.eval_only is not None)
    try:
        if args.eval_only is not None:
            trainer.evaluate_checkpoint(args.eval_only)
        else:
            trainer.train()
    finally:
        trainer.close()
        cleanup(ctx)
        if lock is not None:
            lock.release()


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    with exit_on_user_error():
        run(args)


if __name__ == "__main__":
    main()
