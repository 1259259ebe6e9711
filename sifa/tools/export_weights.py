"""Write the network weights of a training checkpoint alone: no optimizer, scheduler or RNG state.

    python -m sifa.tools.export_weights --checkpoint output/run/current.pth --out run_weights.pth

The file holds ``model`` (the state dict), the epoch and the configuration, about half the size of
the checkpoint, with a SHA-256 beside it. ``--eval_only``, ``sifa.tools.predict`` and
``pretrained_model`` load it as they load a training checkpoint.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from ..checkpoint_file import load_checkpoint
from ..engine.checkpoint import save_weights
from ..errors import InputError, exit_on_user_error
from ..models.weights import state_dict_of

# Plain data kept beside the weights, when the checkpoint has it.
KEPT_INFO = ("epoch", "top1", "config")


def export_weights(checkpoint: str, out: str) -> str:
    content = load_checkpoint(checkpoint)
    info = {key: content[key] for key in KEPT_INFO if key in content}
    return save_weights(out, state_dict_of(content), **info)


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (current.pth, ckpt_epoch_N.pth)")
    parser.add_argument("--out", required=True, help="the weights file to write")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
            raise InputError("--out must differ from --checkpoint")
        path = export_weights(args.checkpoint, args.out)
    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB "
          f"(from {args.checkpoint}: {os.path.getsize(args.checkpoint) / 2**20:.1f} MiB)")
    return path


if __name__ == "__main__":
    main()
