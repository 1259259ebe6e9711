"""Train and evaluate a video network (docs/training.md).

    python -m torch.distributed.launch --nproc_per_node=K train_val_3d.py --config_file=X.yml
    torchrun --nproc_per_node=K train_val_3d.py --config_file=X.yml
    python train_val_3d.py --config_file=X.yml [--eval_only [CHECKPOINT]] [--opts key=value ...]
"""
import argparse
import os
import sys

from sifa.config import ConfigError, check_run_inputs, load_config
from sifa.data import BadSampleError, ListFileError
from sifa.engine.distributed import cleanup, init_distributed
from sifa.engine.guards import OutputDirLock, OutputDirLockedError, exit_with_launcher
from sifa.engine.trainer import Trainer
from sifa.models.weights import CheckpointError

# Errors in what the user gave (configuration, list files, data, checkpoints, paths): their message says it all.
USER_ERRORS = (ConfigError, ListFileError, BadSampleError, CheckpointError, FileNotFoundError, OutputDirLockedError)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SIFA training and evaluation")
    parser.add_argument("--config_file", required=True, help="experiment YAML (see base_config/default.yml)")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="set by torch.distributed.launch; otherwise LOCAL_RANK is read")
    parser.add_argument("--eval_only", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="only evaluate CHECKPOINT (default: eva_model) with the eva_* views")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, values read as YAML")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config_file, args.opts)
    check_run_inputs(cfg, eval_checkpoint=args.eval_only)  # before the process group: fail fast
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


def main() -> None:
    args = parse_args()
    try:
        run(args)
    except USER_ERRORS as e:
        # Every process meets the same error in the same inputs; the launchers set RANK before any process
        # group exists, so rank 0 alone prints it, once, without a traceback (bugs keep theirs).
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
