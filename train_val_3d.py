"""Train and evaluate a video network (docs/training.md): the original's entry point, kept; the code is
`sifa/tools/train.py` (also `python -m sifa.tools.train`).

    python -m torch.distributed.launch --nproc_per_node=K train_val_3d.py --config_file=X.yml
    torchrun --nproc_per_node=K train_val_3d.py --config_file=X.yml
    python train_val_3d.py --config_file=X.yml [--eval_only [CHECKPOINT]] [--opts key=value ...]
"""
from sifa.tools.train import main

if __name__ == "__main__":
    main()
