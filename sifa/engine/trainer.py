"""The training loop and the evaluation runs of `train_val_3d.py` (docs/training.md)."""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import math
import os
import time
import warnings
from types import SimpleNamespace
from typing import Any, List, Mapping, Optional, Tuple

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from ..config import ConfigError, check_run_inputs, config_to_dict, save_config_json
from ..data import BadSampleError, VideoDataset, collate_samples, read_class_names
from ..data.build import build_eval_dataset, build_train_dataset, prepare_synthetic_data
from ..data.transforms import DeviceColourAugment, normalize_clips
from ..models.build import build_model, freeze_bn, load_network, load_pretrained
from ..checkpoint_file import atomic_write_text, load_checkpoint, non_finite_entries, remove_leftover_tmp
from ..errors import CheckpointError, NonFiniteLossError
from ..models.weights import load_weights
from .checkpoint import (BEST, CURRENT, capture_rng_state, kept_checkpoints, newest_intact_epoch_checkpoint,
                         remove_checkpoint, remove_old_epoch_checkpoints, restore_epoch_checkpoint,
                         restore_rng_state, resume_path, run_checkpoints, save_checkpoint, save_weights)
from .distributed import DistContext, all_gather_objects, barrier, broadcast_buffers, mean_over_ranks, wrap_ddp
from .evaluate import EvalResult, class_report, evaluate, plot_confusion
from .optim import build_optimizer, build_scheduler, effective_batch_and_lr
from .runtime import amp_dtype, seed_everything, setup_logger

CONFIG_JSON = "config.json"
EVAL_ONLY_CONFIG_JSON = "eval_only_config.json"
VAL_JSON = "val_accuracy.json"
EVAL_ONLY_JSON = "eval_only_accuracy.json"
EVAL_ONLY_SCORES = "eval_only_scores.pt"
EVAL_ONLY_CLASSES_JSON = "eval_only_per_class.json"  # per-class accuracy and the confusion matrix
EVAL_ONLY_CONFUSION_PNG = "eval_only_confusion.png"
SKIPPED_JSON = "skipped_samples.json"  # per epoch, the samples skip_bad_samples replaced or left out
SKIP_HINT = "; with skip_bad_samples: true such samples are replaced (training) or left out (evaluation)"
EPOCH_UNKNOWN = -1  # the TensorBoard step of an --eval_only result whose checkpoint does not say its epoch
SHOWN_ENTRIES = 4  # non-finite checkpoint entries named in a message before "(and N more)"


def classification_loss(outputs: List[torch.Tensor], labels: torch.Tensor, criterion: torch.nn.Module) -> torch.Tensor:
    """Sum of the cross-entropies of the network's heads (main + dual for SIFA-Net)."""
    return sum(criterion(head.float(), labels) for head in outputs)


def _write_json(path: str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


class Trainer:
    def __init__(self, cfg: SimpleNamespace, ctx: DistContext, eval_only: bool = False):
        self.cfg = cfg
        self.ctx = ctx
        os.makedirs(cfg.output_dir, exist_ok=True)
        barrier(ctx)
        self.logger = setup_logger(cfg.output_dir, ctx)
        if not eval_only:
            self._claim_output_dir()
        self.logger.info(f"configuration ({cfg.config_file} merged over its base and the defaults):\n"
                         + yaml.safe_dump(config_to_dict(cfg), sort_keys=True).rstrip())
        self.validation_seconds = 0.0  # of the last validation: the training ETA includes those to come
        self.loss_described = False
        if ctx.is_main:
            # An evaluation in a training folder must not replace the training's configuration.
            save_config_json(cfg, os.path.join(cfg.output_dir, EVAL_ONLY_CONFIG_JSON if eval_only else CONFIG_JSON))
        seed_everything(cfg.seed + ctx.rank)
        self.amp_dtype = amp_dtype(cfg, ctx.device)
        self.writer = SummaryWriter(log_dir=cfg.output_dir) if ctx.is_main else None
        if ctx.is_main:
            tic = time.time()
            if prepare_synthetic_data(cfg):
                self.logger.info(f"generated the synthetic data set in {cfg.synthetic_dir} ({time.time() - tic:.1f}s)")
        barrier(ctx)
        self.class_names = read_class_names(cfg.class_name_file, cfg.num_classes) if cfg.class_name_file else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _claim_output_dir(self) -> None:
        """A training run that does not resume replaces an earlier run's checkpoints in its output folder (and
        its validation results, which would mix with its own) only when `overwrite` says so."""
        cfg = self.cfg
        if cfg.resume:
            return
        earlier = run_checkpoints(cfg.output_dir)
        if earlier and not cfg.overwrite:
            raise ConfigError(f"{cfg.output_dir} holds the checkpoints of an earlier run ({', '.join(earlier)}), "
                              f"which resume: false would overwrite: set resume=true to continue that run, or "
                              f"overwrite=true to train from scratch and replace them (or choose another output_dir)")
        barrier(self.ctx)  # every rank has looked before rank 0 removes
        if self.ctx.is_main and earlier:
            for name in earlier:
                remove_checkpoint(os.path.join(cfg.output_dir, name))
            # TensorBoard would draw the earlier run's curves over the new ones, step for step.
            events = glob.glob(os.path.join(glob.escape(cfg.output_dir), "events.out.tfevents.*"))
            for path in [os.path.join(cfg.output_dir, name) for name in (VAL_JSON, SKIPPED_JSON)] + events:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            self.logger.info(f"overwrite: true: removed the earlier run's {', '.join(earlier)}, validation "
                             f"results and {len(events)} TensorBoard event file(s) from {cfg.output_dir}")

    # ----------------------------------------------------------------------------- evaluation only
    def evaluate_checkpoint(self, path: str) -> EvalResult:
        cfg, ctx = self.cfg, self.ctx
        check_run_inputs(cfg, eval_checkpoint=path)
        path = path or cfg.eva_model
        dataset = build_eval_dataset(cfg, final=True)
        model = load_network(cfg, path, ctx.device)
        # The epoch the checkpoint was saved after: plot_log draws the result there, apart from training's.
        trained_epoch = load_checkpoint(path).get("epoch") if ctx.is_main else None
        self.logger.info(f"evaluating {path}: {dataset.num_videos} videos x {cfg.eva_num_clips} clips x "
                         f"{cfg.eva_num_crop} crops at {cfg.eva_crop_size}px on {ctx.world_size} process(es)")
        tic = time.time()
        try:
            result = evaluate(model, dataset, cfg.batch_size, cfg.num_workers, cfg.num_classes, ctx, self.amp_dtype,
                              description=f"evaluating {os.path.basename(path)}")
        except FloatingPointError as e:
            raise FloatingPointError(f"{path}: {e}") from None
        except BadSampleError as e:
            raise BadSampleError(f"evaluating {path}: {e}{SKIP_HINT}") from None
        for message in result.skipped:
            self.logger.warning(f"left out (skip_bad_samples): {message}")
        self.logger.info(f"eval {result.summary()} ({time.time() - tic:.1f}s)")
        if ctx.is_main:
            _write_json(os.path.join(cfg.output_dir, EVAL_ONLY_JSON), {
                "checkpoint": path, "epoch": trained_epoch, **result.accuracies,
                "num_videos": len(result.labels), "skipped_samples": result.skipped,
                "num_clips": cfg.eva_num_clips, "num_crops": cfg.eva_num_crop, "crop_size": cfg.eva_crop_size})
            torch.save({"scores": torch.from_numpy(result.scores), "labels": torch.from_numpy(result.labels),
                        "class_names": self.class_names}, os.path.join(cfg.output_dir, EVAL_ONLY_SCORES))
            step = int(trained_epoch) if trained_epoch is not None else EPOCH_UNKNOWN
            for name, value in result.accuracies.items():
                self.writer.add_scalar(f"eval_only/{name}", value, step)
            report = class_report(result, self.class_names)
            _write_json(os.path.join(cfg.output_dir, EVAL_ONLY_CLASSES_JSON), {"checkpoint": path, **report})
            plot_confusion(report, os.path.join(cfg.output_dir, EVAL_ONLY_CONFUSION_PNG),
                           f"{os.path.basename(path)}: top-1 confusion ({len(result.labels)} videos)")
        return result

    # ------------------------------------------------------------------------------------ training
    def train(self) -> Optional[EvalResult]:
        cfg, ctx, logger = self.cfg, self.ctx, self.logger
        check_run_inputs(cfg)
        train_set = build_train_dataset(cfg)
        val_set = build_eval_dataset(cfg, final=False) if cfg.eva_inter else None
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=cfg.seed)
        loader_generator = torch.Generator()
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=ctx.device.type == "cuda", drop_last=True, generator=loader_generator,
                            collate_fn=collate_samples)
        iters_per_epoch = len(loader)
        if iters_per_epoch == 0:
            raise ConfigError(f"{cfg.config_file}: key 'batch_size' ({cfg.batch_size}) is larger than the "
                              f"{len(sampler)} training videos each of {ctx.world_size} process(es) gets (list_file "
                              f"has {train_set.num_videos}): not one batch is filled; lower batch_size")
        if cfg.iter_size > iters_per_epoch:
            # Gradients of a trailing incomplete accumulation are dropped: the optimizer would never step.
            raise ConfigError(f"{cfg.config_file}: key 'iter_size' ({cfg.iter_size}) exceeds the {iters_per_epoch} "
                              f"iterations per epoch ({train_set.num_videos} videos / batch_size {cfg.batch_size} / "
                              f"{ctx.world_size} process(es)): the optimizer would never step; lower iter_size")
        logger.info(f"{train_set.num_videos} training videos, {iters_per_epoch} iterations per epoch, "
                    f"{ctx.world_size} process(es) on {ctx.device}, mixed precision: {self.amp_dtype}")

        model = build_model(cfg, cfg.num_segments, ctx.device)
        if cfg.pretrained_model:
            load_pretrained(model, cfg)
        frozen_norms = freeze_bn(model) if cfg.frozen_bn else []
        model.to(ctx.device)
        effective_batch, lr = effective_batch_and_lr(cfg, ctx.world_size)
        scaling = f" (base_learning_rate {cfg.base_learning_rate:g} x {effective_batch}/reference_batch " \
                  f"{cfg.reference_batch}: auto_scale_lr)" if cfg.auto_scale_lr else ""
        logger.info(f"effective batch {effective_batch} clips per optimizer step (batch_size {cfg.batch_size} x "
                    f"{ctx.world_size} process(es) x iter_size {cfg.iter_size}), lr {lr:g}{scaling}")
        logger.info(kept_checkpoints(cfg.save_freq, cfg.keep_last))
        optim_cfg = SimpleNamespace(**{**vars(cfg), "base_learning_rate": lr})
        optimizer = build_optimizer(model.parameters(), optim_cfg)
        scheduler = build_scheduler(optimizer, optim_cfg, iters_per_epoch)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1 if cfg.label_smooth else 0.0)

        start_epoch = 1
        if ctx.is_main:
            for name in remove_leftover_tmp(cfg.output_dir):
                logger.info(f"removed {os.path.join(cfg.output_dir, name)}, left by an interrupted save")
        barrier(ctx)  # every rank reads the checkpoint after its pending checksum, if any, is completed
        checkpoint_path = resume_path(cfg.resume, cfg.output_dir)
        current = os.path.join(cfg.output_dir, CURRENT)
        if cfg.resume is True and not os.path.isfile(checkpoint_path):
            checkpoint_path = newest_intact_epoch_checkpoint(cfg.output_dir)
            logger.info(f"resume: true, but there is no {current}: resuming from the newest intact epoch checkpoint "
                        f"{checkpoint_path}" if checkpoint_path else
                        f"resume: true, but there is no {current} yet: starting from scratch")
        validation_due = False
        if checkpoint_path:
            start_epoch, validation_due = self._resume(checkpoint_path, model, optimizer, scheduler, scaler, lr,
                                                       iters_per_epoch)
            if ctx.is_main and os.path.realpath(checkpoint_path) == os.path.realpath(current):
                self._restore_epoch_checkpoint(start_epoch - 1)
        ddp = wrap_ddp(ctx, model) if ctx.distributed else None

        result = None
        if validation_due and val_set is not None and not self._validated(start_epoch - 1):
            logger.info(f"the validation of epoch {start_epoch - 1} did not finish before {checkpoint_path} was "
                        f"resumed: it runs now")
            result = self._validate(start_epoch - 1, model, val_set)
        for epoch in range(start_epoch, cfg.epochs + 1):
            sampler.set_epoch(epoch)
            # Data-loader workers draw their seeds from this generator: a function of the epoch only.
            loader_generator.manual_seed((cfg.seed * 100003 + epoch) * 1009 + ctx.rank)
            tic = time.time()
            loss = self._train_epoch(epoch, loader, ddp or model, model, frozen_norms, optimizer, scheduler,
                                     scaler, criterion)
            logger.info(f"epoch {epoch} done in {time.time() - tic:.1f}s, epoch mean loss over all ranks {loss:.4f}")
            if self.writer is not None:
                self.writer.add_scalar("train/epoch_loss", loss, epoch)
            # Saved before validation, which then cannot lose the epoch; validation draws no random numbers.
            rng_states = all_gather_objects(ctx, capture_rng_state())
            self._check_finite(epoch, model, optimizer)
            validation_due = val_set is not None and (epoch % cfg.eva_inter_freq == 0 or epoch == cfg.epochs)
            if ctx.is_main:
                path = save_checkpoint(cfg.output_dir, epoch, cfg.save_freq, model, optimizer, scheduler, scaler,
                                       rng_states, config_to_dict(cfg), validation_due)
                logger.info(f"saved {path}")
                for removed in remove_old_epoch_checkpoints(cfg.output_dir, cfg.keep_last):
                    logger.info(f"removed {removed} (keep_last: {cfg.keep_last})")
            barrier(ctx)
            if validation_due:
                broadcast_buffers(ctx, model)
                result = self._validate(epoch, model, val_set)
        return result

    def _validations_left(self, epoch: int) -> int:
        """Validations from ``epoch`` (after its training) to the end of training."""
        if not self.cfg.eva_inter:
            return 0
        epochs, freq = self.cfg.epochs, self.cfg.eva_inter_freq
        return sum(1 for e in range(epoch, epochs + 1) if e % freq == 0 or e == epochs)

    def _check_finite(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Stops training before an epoch whose weights, statistics or optimizer state hold a NaN or an infinity
        is saved (a finite loss does not show diverged BatchNorm statistics); rank 0's state decides, as it is
        the one saved."""
        found = non_finite_entries({"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"]}) \
            if self.ctx.is_main else None
        found = all_gather_objects(self.ctx, found)[0]
        if found:
            more = f" (and {len(found) - SHOWN_ENTRIES} more)" if len(found) > SHOWN_ENTRIES else ""
            raise NonFiniteLossError(f"training diverged: after epoch {epoch}, {', '.join(found[:SHOWN_ENTRIES])}"
                                     f"{more} hold NaN or infinite values; stopped without saving this epoch, "
                                     f"{self._last_checkpoint()}; lower base_learning_rate or set clip_gradient")

    def _restore_epoch_checkpoint(self, epoch: int) -> None:
        path = restore_epoch_checkpoint(self.cfg.output_dir, epoch, self.cfg.save_freq)
        if path:
            self.logger.info(f"recreated {path} from {CURRENT} (its copy did not finish: save_freq "
                             f"{self.cfg.save_freq} keeps it)")
            for removed in remove_old_epoch_checkpoints(self.cfg.output_dir, self.cfg.keep_last):
                self.logger.info(f"removed {removed} (keep_last: {self.cfg.keep_last})")

    def _validated(self, epoch: int) -> bool:
        """Whether the output folder's VAL_JSON holds a result of ``epoch``; rank 0's file decides."""
        path = os.path.join(self.cfg.output_dir, VAL_JSON)
        found = None
        if self.ctx.is_main:
            found = False
            if os.path.isfile(path):
                with open(path, "r", encoding="utf-8") as f:
                    found = any(entry["epoch"] == epoch for entry in json.load(f))
        return all_gather_objects(self.ctx, found)[0]

    def _resume(self, path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, lr: float, iters_per_epoch: int) -> Tuple[int, bool]:
        """Load the checkpoint ``path``; returns the epoch to train next and whether the validation of the epoch
        before it was due after the save."""
        cfg, ctx = self.cfg, self.ctx
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as e:
            intact = newest_intact_epoch_checkpoint(os.path.dirname(path) or ".") \
                if os.path.basename(path) == CURRENT else None
            hint = f"; the newest intact epoch checkpoint is {intact}: resume from it with resume={intact}" \
                if intact else ""
            raise type(e)(f"cannot resume: {e}{hint}") from None  # the same kind (not found, damaged)
        missing = [key for key in ("model", "optimizer", "scheduler", "epoch") if key not in checkpoint]
        if missing:
            raise CheckpointError(f"cannot resume from {path}: it is not a training checkpoint (no "
                                  f"{', '.join(missing)}), e.g. bare network weights; to start from them set "
                                  f"pretrained_model instead")
        if int(checkpoint["epoch"]) > cfg.epochs:
            raise CheckpointError(f"cannot resume from {path}: it was saved after epoch {checkpoint['epoch']}, "
                                  f"beyond epochs = {cfg.epochs}; raise epochs to train on")
        load_weights(model, checkpoint, strict=True, source=f"checkpoint {path}")
        optimizer_state, scheduler_state = self._optimizer_and_scheduler_states(path, checkpoint)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        epoch = int(checkpoint["epoch"])
        self._apply_configuration(path, optimizer, scheduler, lr, epoch, iters_per_epoch)
        if checkpoint.get("scaler") is not None and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint.get("rng") or []
        if len(rng) == ctx.world_size:
            restore_rng_state(rng[ctx.rank])
        else:
            self.logger.warning(f"{path} holds RNG states of {len(rng)} process(es), this run has {ctx.world_size}: "
                                f"random draws will differ from an uninterrupted run")
        self.logger.info(f"resumed from {path} (epoch {epoch})")
        if epoch == cfg.epochs:
            self.logger.info(f"the checkpoint is of the last epoch ({cfg.epochs}): nothing left to train")
        return epoch + 1, bool(checkpoint.get("validation_due"))

    def _optimizer_and_scheduler_states(self, path: str, checkpoint: Mapping[str, Any]) -> Tuple[Any, Any]:
        """The optimizer's and the scheduler's entries of a checkpoint; `reverse` reads checkpoints that stored
        them under each other's key, and a `reverse` that does not fit the file is named."""
        holds_optimizer = {key: isinstance(checkpoint[key], Mapping) and "param_groups" in checkpoint[key]
                           for key in ("optimizer", "scheduler")}
        if self.cfg.reverse and holds_optimizer["optimizer"]:
            raise CheckpointError(f"cannot resume from {path}: reverse is true, but it holds its optimizer state "
                                  f"under 'optimizer', as usual: set reverse=false")
        if not self.cfg.reverse and holds_optimizer["scheduler"]:
            raise CheckpointError(f"cannot resume from {path}: it holds its optimizer state under 'scheduler' and "
                                  f"its scheduler's under 'optimizer' (as some of the original's checkpoints do): "
                                  f"set reverse=true")
        optimizer_key, scheduler_key = ("scheduler", "optimizer") if self.cfg.reverse else ("optimizer", "scheduler")
        if not holds_optimizer[optimizer_key]:
            raise CheckpointError(f"cannot resume from {path}: its '{optimizer_key}' entry holds no optimizer state "
                                  f"(no param_groups)")
        return checkpoint[optimizer_key], checkpoint[scheduler_key]

    def _apply_configuration(self, path: str, optimizer: torch.optim.Optimizer, scheduler: Any, lr: float,
                             epoch: int, iters_per_epoch: int) -> None:
        """Training resumed from ``path`` (saved after ``epoch``) goes on with this configuration's learning rate,
        weight decay and momentum, at the place of the schedule that ``epoch`` reaches with this run's iterations
        per epoch (another batch size or process count changes them); each difference is logged."""
        cfg = self.cfg
        position = epoch * iters_per_epoch
        saved = optimizer.param_groups[0]
        for name, saved_value, value in (("learning rate (after warm-up)", scheduler.base_lrs[0], lr),
                                         ("weight_decay", saved["weight_decay"], cfg.weight_decay),
                                         ("momentum", saved["momentum"], cfg.momentum),
                                         ("nesterov", saved["nesterov"], cfg.nesterov)):
            if saved_value != value:
                self.logger.info(f"resume: {name} {value} (this configuration), not {saved_value} ({path})")
        if scheduler.last_epoch != position:
            self.logger.info(f"resume: the schedule goes on from iteration {position} (epoch {epoch} x "
                             f"{iters_per_epoch} iterations), not {scheduler.last_epoch} ({path}): the iterations "
                             f"per epoch changed with the batch size or the process count")
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        scheduler.last_epoch = position
        # What LambdaLR's step sets, from the configuration's values: unchanged ones give the same bits.
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group.update(initial_lr=lr, lr=lr * factor(position), weight_decay=cfg.weight_decay,
                         momentum=cfg.momentum, nesterov=cfg.nesterov)

    def _train_epoch(self, epoch: int, loader: DataLoader, network: torch.nn.Module, model: torch.nn.Module,
                     frozen_norms: List[torch.nn.Module], optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, criterion: torch.nn.Module) -> float:
        cfg, ctx, logger = self.cfg, self.ctx, self.logger
        network.train()
        for module in frozen_norms:
            module.eval()
        trainable = [p for p in model.parameters() if p.requires_grad]
        iters = len(loader)
        # Gradients of a trailing incomplete accumulation group are dropped, as in the original.
        optimizer.zero_grad(set_to_none=True)
        loss_sum, batch_time_sum, data_time_sum = 0.0, 0.0, 0.0
        grad_norm = math.nan  # of the last optimizer step (none yet in this epoch)
        skipped: List[str] = []  # (skip_bad_samples) the samples replaced on this rank
        colour_augment = DeviceColourAugment(cfg.time_dim) if (cfg.augment_on_device and cfg.colour_augment
                                                               and not cfg.rand_augment) else None
        end = time.time()
        for idx, (clips, labels, _, skipped_in_batch) in enumerate(self._training_batches(epoch, loader)):
            skipped += [message for _, message in skipped_in_batch]
            data_time = time.time() - end
            # uint8 from the workers: normalized here, after the (4x smaller) copy to the device.
            clips = clips.to(ctx.device, non_blocking=True)
            if colour_augment is not None:
                clips = colour_augment(clips)
            clips = normalize_clips(clips, cfg.time_dim)
            labels = labels.to(ctx.device, non_blocking=True)
            step = (idx + 1) % cfg.iter_size == 0
            # Accumulation iterations skip DDP's gradient all-reduce; the stepping one syncs the sum.
            sync = network.no_sync() if isinstance(network, DistributedDataParallel) and not step \
                else contextlib.nullcontext()
            with sync:
                with torch.autocast(ctx.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    outputs = network(clips)
                loss = classification_loss(outputs, labels, criterion)
                scaler.scale(loss * (cfg.loss_weight / cfg.iter_size)).backward()
            if not self.loss_described and len(outputs) > 1:
                logger.info(f"loss: the sum of the cross-entropies of the network's {len(outputs)} heads (SIFA-Net: "
                            f"main + dual), so about {len(outputs)}x a single head's; evaluation averages their softmaxes")
                self.loss_described = True
            # Checked before the step can spread it into the weights. Under fp16 the loss is computed in
            # float32: gradients that overflow only make the GradScaler skip the step, which is no error.
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"training diverged: the loss is {loss_value} at epoch {epoch}, iteration "
                                         f"{idx + 1}/{iters} (rank {ctx.rank}); stopped without saving this epoch, "
                                         f"{self._last_checkpoint()}; lower base_learning_rate or set clip_gradient")
            if step:
                scaler.unscale_(optimizer)
                # The norm before clipping, as the original logs it: a diverging run shows here first.
                if cfg.clip_gradient > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_gradient).item()
                else:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in trainable if p.grad is not None]).item()
                if self.writer is not None:
                    self.writer.add_scalar("train/grad_norm", grad_norm, (epoch - 1) * iters + idx)
                # A finite loss can have infinite gradients; under fp16 the GradScaler skips such a step.
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    raise NonFiniteLossError(f"training diverged: the gradient norm is {grad_norm} at epoch {epoch}, "
                                             f"iteration {idx + 1}/{iters}; stopped without saving this epoch, "
                                             f"{self._last_checkpoint()}; lower base_learning_rate or set "
                                             f"clip_gradient")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():
                # The schedule advances on accumulation iterations without an optimizer step too (as in
                # the original); PyTorch would flag that as a misordered call.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()

            loss_sum += loss_value
            batch_time = time.time() - end
            batch_time_sum += batch_time
            data_time_sum += data_time
            end = time.time()
            if idx % cfg.print_freq == 0 or idx == iters - 1:
                done = idx + 1
                mean_batch = batch_time_sum / done
                clips_per_s = cfg.batch_size * ctx.world_size / mean_batch
                remaining = (iters - done) + (cfg.epochs - epoch) * iters
                eta = datetime.timedelta(seconds=int(remaining * mean_batch
                                                     + self._validations_left(epoch) * self.validation_seconds))
                logger.info(f"epoch [{epoch}/{cfg.epochs}] iter [{done}/{iters}] eta {eta} "
                            f"loss {loss_value:.4f} (rank-0 running mean {loss_sum / done:.4f}) lr {lr:.6f} "
                            f"grad norm {grad_norm:.3f} "
                            f"data {data_time_sum / done:.3f}s batch {mean_batch:.3f}s {clips_per_s:.1f} clips/s")
                if self.writer is not None:
                    global_step = (epoch - 1) * iters + idx
                    self.writer.add_scalar("train/loss", loss_value, global_step)
                    self.writer.add_scalar("train/lr", lr, global_step)
                    self.writer.add_scalar("train/clips_per_s", clips_per_s, global_step)
        if cfg.skip_bad_samples:
            replaced = [message for rank_skipped in all_gather_objects(ctx, skipped) for message in rank_skipped]
            self._record_skipped(epoch, "train", replaced, "replaced by another random sample")
        return mean_over_ranks(ctx, loss_sum / iters)

    def _last_checkpoint(self) -> str:
        saved = os.path.join(self.cfg.output_dir, CURRENT)
        return f"the last good checkpoint is {saved}" if os.path.isfile(saved) else "no epoch was saved"

    def _training_batches(self, epoch: int, loader: DataLoader):
        """The loader's batches; an unreadable sample (skip_bad_samples off) stops training with its list line."""
        try:
            yield from loader
        except BadSampleError as e:
            raise BadSampleError(f"epoch {epoch} training: {e}; stopped without saving this epoch, "
                                 f"{self._last_checkpoint()}{SKIP_HINT}") from None

    def _record_skipped(self, epoch: int, phase: str, messages: List[str], action: str) -> None:
        """Logs the samples skip_bad_samples skipped in ``phase`` of ``epoch`` and lists them in SKIPPED_JSON."""
        for message in messages:
            self.logger.warning(f"epoch {epoch} {phase}: {action}: {message}")
        if not self.ctx.is_main:
            return
        path = os.path.join(self.cfg.output_dir, SKIPPED_JSON)
        entries = []
        if os.path.isfile(path):
            with open(path, "r", encoding="utf-8") as f:
                entries = json.load(f)
        # A resumed run repeats the epochs after its checkpoint: training replaces their entries.
        last_kept = epoch - 1 if phase == "train" else epoch
        entries = [entry for entry in entries if entry["epoch"] <= last_kept]
        entry = next((entry for entry in entries if entry["epoch"] == epoch), None)
        if entry is None:
            entry = {"epoch": epoch}
            entries.append(entry)
        entry[phase] = messages
        _write_json(path, entries)

    def _validate(self, epoch: int, model: torch.nn.Module, val_set: VideoDataset) -> EvalResult:
        cfg, ctx = self.cfg, self.ctx
        tic = time.time()
        try:
            result = evaluate(model, val_set, cfg.batch_size, cfg.num_workers, cfg.num_classes, ctx, self.amp_dtype,
                              description=f"epoch {epoch} validation")
        except FloatingPointError as e:
            raise FloatingPointError(f"epoch {epoch} validation: {e}; the epoch is saved in "
                                     f"{os.path.join(cfg.output_dir, CURRENT)}") from None
        except BadSampleError as e:
            raise BadSampleError(f"epoch {epoch} validation: {e}; the epoch is saved in "
                                 f"{os.path.join(cfg.output_dir, CURRENT)}{SKIP_HINT}") from None
        if cfg.skip_bad_samples:
            self._record_skipped(epoch, "validation", result.skipped, "left out")
        self.validation_seconds = time.time() - tic
        self.logger.info(f"epoch {epoch} val {result.summary()} "
                         f"({len(result.labels)} videos x {val_set.views_per_video} views, "
                         f"{self.validation_seconds:.1f}s)")
        if ctx.is_main:
            for name, value in result.accuracies.items():
                self.writer.add_scalar(f"val/{name}", value, epoch)
            self.writer.flush()
            path = os.path.join(cfg.output_dir, VAL_JSON)
            history = []
            if os.path.isfile(path):
                with open(path, "r", encoding="utf-8") as f:
                    history = [entry for entry in json.load(f) if entry["epoch"] < epoch]
            best_before = max((entry["top1"] for entry in history), default=-1.0)
            history.append({"epoch": epoch, **result.accuracies,
                            "num_videos": len(result.labels), "views_per_video": val_set.views_per_video,
                            "skipped_samples": result.skipped})
            _write_json(path, history)
            best = os.path.join(cfg.output_dir, BEST)
            if result.top1 > best_before or not os.path.isfile(best):
                save_weights(best, model.state_dict(), epoch=epoch, top1=result.top1, config=config_to_dict(cfg))
                self.logger.info(f"saved {best} (validation top1 {result.top1:.2f}, epoch {epoch})")
        return result
