"""Write the network weights of a training checkpoint alone: no optimizer, scheduler or RNG state.

    python -m sifa.tools.export_weights --checkpoint output/run/current.pth   # -> output/run/current.safetensors
    sifa-export-weights --checkpoint output/run/best.pth --out run_weights.safetensors

The file is safetensors (or PyTorch's format when --out ends with .pth): the network's tensors, and in its
metadata the epoch, top1 and the configuration that built the network, so that
`sifa.models.build.network_from_checkpoint` rebuilds the network from the file alone. About half the size
of a training checkpoint, with a SHA-256 beside it. ``--eval_only``, ``sifa.tools.predict`` and
``pretrained_model`` load it as they load a training checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from ..checkpoint_file import SAFETENSORS, load_checkpoint
from ..engine.checkpoint import save_weights
from ..errors import InputError, exit_on_user_error
from ..models.weights import state_dict_of
from ..user_files import check_output_file

logger = logging.getLogger(__name__)

# Plain data kept beside the weights, when the checkpoint has it.
KEPT_INFO = ("epoch", "top1", "config")


def export_weights(checkpoint: str, out: str) -> str:
    content = load_checkpoint(checkpoint)
    info = {key: content[key] for key in KEPT_INFO if isinstance(content.get(key), (int, float, dict))}
    if "config" not in info:
        logger.warning("%s holds no config of this code: %s cannot rebuild its network alone", checkpoint, out)
    return save_weights(out, state_dict_of(content, checkpoint), **info)


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (current.pth, ckpt_epoch_N.pth)")
    parser.add_argument("--out", help="the weights file to write: .safetensors, or .pth for PyTorch's format "
                                      "(default: the checkpoint's path with .safetensors for its suffix)")
    args = parser.parse_args(argv)
    out = args.out or os.path.splitext(args.checkpoint)[0] + SAFETENSORS
    with exit_on_user_error():
        # The same file under another name (a symlinked folder, a hard link) would be replaced too.
        if os.path.exists(out) and os.path.exists(args.checkpoint) and os.path.samefile(out, args.checkpoint):
            raise InputError(f"--out {out} is the file --checkpoint {args.checkpoint} names: writing it would replace "
                             f"the checkpoint")
        check_output_file(out, "--out")
        path = export_weights(args.checkpoint, out)
    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB "
          f"(from {args.checkpoint}: {os.path.getsize(args.checkpoint) / 2**20:.1f} MiB)")
    return path


if __name__ == "__main__":
    main()
