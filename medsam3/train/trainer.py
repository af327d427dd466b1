"""The training loop: LoRA (or full) fine-tuning of SAM3 on COCO concept data, top to bottom.

``train(cfg)`` does, in order: join the process group (torchrun) and pick the device; seed; load
SAM3 and add LoRA; build the train/valid datasets and a resumable, seeded sampler; AdamW and the
warmup + cosine/linear/constant schedule; then per optimizer step: ``gradient_accumulation_steps``
micro-batches (vision once per image, one row per query, geometry CLS, bf16/fp16 autocast as configured), the SAM3
loss normalised by the window's instance count across ranks, gradient clipping, step. Every
``logging_steps`` a JSONL line (+ TensorBoard); every ``eval_steps`` validation (loss, and Dice/IoU
through ``Predictor``); every ``save_steps`` a checkpoint. See ``checkpoint.py`` for the layout.

Every ``training.*`` key takes effect or is reported (``report_config``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..adapters.hub import prepare_hub
from ..adapters.peft_format import save_adapter
from ..config import Config

# From the modules, not the lazy package: `medsam3.data.collate` the module would shadow the function.
from ..data.coco import DatasetError
from ..data.collate import collate
from ..errors import disk_full_errors
from ..model import load_processor
from ..outputs import write_json
from .checkpoint import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    atomic_dir,
    load_trainable,
    load_trainer_state,
    prune_checkpoints,
    remove_stale_tmp,
    resolve_resume,
    save_trainable,
)
from .data_paths import NO_TRAINING_DATA
from .distributed import all_reduce_sum, barrier, init_distributed
from .forward import TrainForward, batch_inputs
from .loss import LossWeights, Sam3Loss
from .runtime import SkipSampler, StopRequest, rng_state, seed_everything, set_rng_state
from .saving import drop_log_lines_after, save_trained, trained_metadata
from .schedule import build_optimizer, build_scheduler, total_optimizer_steps
from .setup import TrainingError, build_datasets, build_model, report_config, split_paths

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
BEST_ADAPTER = "best_lora_weights"
LAST_ADAPTER = "last_lora_weights"


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    best_metric: float | None
    last_eval: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    """Stopped early by Ctrl-C / SIGTERM; the last checkpoint holds the step reached."""


class Trainer:
    """Holds the run's state; ``fit()`` runs it. Built by ``train(cfg)``."""

    def __init__(self, cfg: Config, resume: str | None = None, show_progress: bool = True) -> None:
        self.cfg = cfg
        t = cfg.training
        self.dist, self.device = init_distributed(cfg.hardware.device)
        self.is_main = self.dist.is_main
        self.output_dir = Path(cfg.output.output_dir)
        self.show_progress = show_progress
        # Fail fast on a bad --resume, before loading a multi-GB model.
        resume_dir = resolve_resume(resume, self.output_dir) if resume else None
        if self.is_main:
            remove_stale_tmp(self.output_dir)  # what a killed save left; it holds no finished checkpoint
        self.notes = report_config(cfg, self.device, self.dist)

        # -- precision
        self.amp_dtype = None
        if t.mixed_precision == "bf16":  # CUDA and CPU alike (CPU autocast has bf16; AMX runs it fast)
            self.amp_dtype = torch.bfloat16
        elif self.device.type == "cuda" and t.mixed_precision == "fp16":
            self.amp_dtype = torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

        # -- data, before the model: a wrong folder or annotation file is reported in a moment, not after a
        # multi-GB download and load. The processor (a few small files) gives the input size.
        train_paths = split_paths(cfg, "train")
        if train_paths is None:
            raise TrainingError(NO_TRAINING_DATA)
        try:
            val_paths = split_paths(cfg, "valid")
        except FileNotFoundError as exc:
            val_paths = None
            if self.is_main:
                logger.warning("no validation split (%s); validation and best_lora_weights are skipped", exc)
        local_only = prepare_hub(cfg, "none")  # offline or not, decided once; a missing base named in one line
        self.processor = load_processor(cfg.model, local_files_only=local_only)
        if cfg.model.resolution is None:
            self.resolution = int(self.processor.image_processor.size["height"])
        else:
            self.resolution = cfg.model.resolution
        self.train_set, self.val_set = build_datasets(cfg, train_paths, val_paths, self.resolution)
        if self.is_main:
            logger.info(
                "train: %d images, %d concepts (%s); valid: %s",
                len(self.train_set),
                len(self.train_set.prompts),
                ", ".join(self.train_set.prompts[:10]),
                f"{len(self.val_set)} images" if self.val_set else "none",
            )

        # -- model
        seed_everything(t.seed)
        self.model = build_model(cfg, self.processor, local_only)
        self.model.to(self.device).train()
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        logger.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        self.forward = TrainForward(self.model)
        if self.dist.enabled:
            self.ddp = DistributedDataParallel(
                self.forward,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        else:
            self.ddp = self.forward

        self.sampler = DistributedSampler(
            self.train_set,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=t.seed,
            drop_last=False,
        )
        self.batches_per_epoch = math.ceil(len(self.sampler) / t.batch_size)
        self.total_steps = total_optimizer_steps(t, self.batches_per_epoch)

        # -- optimisation
        self.criterion = Sam3Loss(LossWeights(**vars(cfg.loss)))
        self.optimizer = build_optimizer(self.model.parameters(), t)
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)

        # -- state
        self.global_step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches consumed in the current epoch
        higher = cfg.evaluation.metric in ("dice", "iou")
        self.best_metric: float | None = None
        self._better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
        self.last_eval: dict[str, Any] = {}
        self.concept_thresholds: dict[str, float] = {}  # per concept, from the latest validation
        self._tb = None
        if resume_dir is not None:
            self._resume(resume_dir)

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        t = self.cfg.training
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=t.batch_size,
            sampler=SkipSampler(self.sampler, skip * t.batch_size),
            num_workers=t.num_workers,
            collate_fn=collate,
            pin_memory=self.cfg.hardware.dataloader_pin_memory and self.device.type == "cuda",
            # Own generator: iterating the loader must not consume the global RNG (LoRA dropout uses it),
            # or a resumed run would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(t.seed + epoch),
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with disk_full_errors(self.output_dir / LOG_FILE, "the training log"):
            with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.output_dir / self.cfg.output.logging_dir))
        if self._tb:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record['type']}/{key}", value, record["step"])

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "best_metric": self.best_metric,
            "concept_thresholds": self.concept_thresholds,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "world_size": self.dist.world_size,
        }

    def _resume(self, directory: Path) -> None:
        state = load_trainer_state(directory)
        load_trainable(self.model, directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.global_step, self.epoch, self.batches_done = state["global_step"], state["epoch"], state["batches_done"]
        self.best_metric = state["best_metric"]
        self.concept_thresholds = dict(state.get("concept_thresholds") or {})
        if state.get("world_size", 1) != self.dist.world_size and self.is_main:
            logger.warning(
                "resuming a %d-process run with %d processes: the data order changes",
                state.get("world_size", 1),
                self.dist.world_size,
            )
        if self.is_main:
            drop_log_lines_after(self.output_dir / LOG_FILE, self.global_step)
        if self.is_main:
            logger.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                directory,
                self.global_step,
                self.epoch,
                self.batches_done,
            )

    def _metadata(self, full_model: str | None = None) -> dict[str, Any]:
        meta = trained_metadata(
            self.cfg, self.model, self.train_set.prompts, self.global_step, self.resolution, full_model
        )
        # per concept, chosen on the valid split by the latest validation (train.validate)
        if self.cfg.evaluation.record_concept_thresholds and self.concept_thresholds:
            meta.update(threshold=self.cfg.evaluation.threshold, concept_thresholds=self.concept_thresholds)
        return meta

    def _save_named(self, name: str) -> None:
        with_full_model = (not self.cfg.output.save_lora_only) or self.cfg.training.train_base_model
        save_trained(self.model, self.processor, self.output_dir / name, self._metadata, with_full_model)

    def save_checkpoint(self) -> Path | None:
        path = self.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        if self.is_main:
            with atomic_dir(path) as tmp:
                save_adapter(self.model, tmp, metadata=self._metadata())
                save_trainable(self.model, tmp)
                state = self._trainer_state()
                torch.save(state, tmp / TRAINER_STATE)
                write_json(
                    {k: state[k] for k in ("global_step", "epoch", "batches_done", "best_metric", "world_size")},
                    tmp / "trainer_state.json",
                )
            prune_checkpoints(self.output_dir, self.cfg.training.save_total_limit)
            logger.info("checkpoint -> %s", path)
        barrier()
        return path if self.is_main else None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        from ..inference.predictor import Predictor
        from .validate import evaluate_loss, evaluate_metrics

        if self.val_set is None:
            return {}
        t0 = time.perf_counter()
        self.model.eval()
        try:
            val_loss = evaluate_loss(
                self.forward,
                self.criterion,
                self.val_set,
                self.processor,
                self.device,
                self.dist,
                self.cfg.training.batch_size,
                self.autocast,
            )
            record: dict[str, Any] = {
                "type": "eval",
                "step": self.global_step,
                "epoch": self.epoch,
                "val_loss": val_loss,
            }
            if self.cfg.evaluation.compute_metrics_during_training or self.cfg.evaluation.metric != "loss":
                predictor = Predictor(
                    self.model, self.processor, device=self.device, precision=self.cfg.hardware.precision
                )
                pred_file = None
                if self.cfg.evaluation.save_predictions:
                    pred_file = self.output_dir / f"predictions_step{self.global_step}.json"
                    if self.is_main:
                        self.output_dir.mkdir(parents=True, exist_ok=True)
                record.update(
                    evaluate_metrics(
                        predictor,
                        self.val_set,
                        self.dist,
                        threshold=self.cfg.evaluation.threshold,
                        predictions_file=pred_file,
                    )
                )
        finally:
            self.model.train()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.concept_thresholds = record.get("concept_thresholds") or self.concept_thresholds
        metric_key = {"loss": "val_loss"}.get(self.cfg.evaluation.metric, self.cfg.evaluation.metric)
        value = record.get(metric_key)
        if (
            value is not None
            and not math.isnan(value)
            and (self.best_metric is None or self._better(value, self.best_metric))
        ):
            self.best_metric = value
            record["best"] = True
            if self.is_main:
                self._save_named(BEST_ADAPTER)
                logger.info(
                    "new best %s=%.4f at step %d -> %s",
                    self.cfg.evaluation.metric,
                    value,
                    self.global_step,
                    self.output_dir / BEST_ADAPTER,
                )
        self._log(record)
        self.last_eval = record
        if self.is_main:
            logger.info(
                "eval step %d: val_loss %.4f%s",
                self.global_step,
                val_loss,
                f", dice {record['dice']:.4f}, iou {record['iou']:.4f}" if "dice" in record else "",
            )
        barrier()
        return record

    # ------------------------------------------------------------------ training
    def _windows(self) -> Iterator[list[dict[str, Any]]]:
        """Groups of gradient_accumulation_steps micro-batches, resuming at (epoch, batches_done)."""
        accum = self.cfg.training.gradient_accumulation_steps
        while self.epoch < self.cfg.training.num_epochs or self.cfg.training.max_steps:
            loader = self._loader(self.epoch, self.batches_done)
            window: list[dict[str, Any]] = []
            for batch in loader:
                window.append(batch)
                if len(window) == accum:
                    yield window
                    window = []
            if window:
                yield window
            self.epoch += 1
            self.batches_done = 0

    def accumulate(self, window: list[dict[str, Any]]) -> dict[str, float]:
        """Forward + backward over one accumulation window; gradients are left in ``.grad``."""
        # SAM3 normalises by the number of target instances; over an accumulation window and across ranks
        # the per-micro-batch normaliser is the global count / (micro-batches x ranks), so that the summed,
        # rank-averaged gradient equals that of one big batch.
        counts = torch.tensor(
            [float(sum(q["boxes"].shape[0] for b in window for q in b["queries"])), float(len(window))],
            dtype=torch.float64,
            device=self.device,
        )
        all_reduce_sum(counts)
        num_boxes = max(1.0, float(counts[0] / counts[1]))
        sums: dict[str, float] = {}
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    preds = self.ddp(**batch_inputs(batch, self.processor, self.device))
                losses = self.criterion(preds, batch["queries"], num_boxes=num_boxes)
                self.scaler.scale(losses["total"] / len(window)).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(window)
        return sums

    def _step(self, window: list[dict[str, Any]]) -> dict[str, float]:
        t = self.cfg.training
        sums = self.accumulate(window)
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad.detach() for p in params if p.grad is not None]
        if t.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        sums["grad_norm"] = grad_norm
        if self.global_step % t.logging_steps == t.logging_steps - 1:
            # Measured after clipping (not assumed): what the optimizer actually receives.
            sums["grad_norm_after_clip"] = (
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
            )
        sums["lr"] = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.batches_done += len(window)
        self.global_step += 1
        return sums

    def adapter_checksum(self) -> str:
        """SHA-256 over the trainable tensors (names and bytes): equal on every rank after DDP training."""
        import hashlib

        digest = hashlib.sha256()
        for name, param in sorted(self.model.named_parameters()):
            if param.requires_grad:
                digest.update(name.encode())
                digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    @staticmethod
    def _after_step(record: dict[str, float], pending: dict[str, float], progress) -> None:
        """Fold one step's losses into the running log window; update the progress bar."""
        for k, v in record.items():
            if k in ("lr", "grad_norm_after_clip"):
                pending[k] = v
            else:
                pending[k] = pending.get(k, 0.0) + v
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{record['total']:.4f}", lr=f"{record['lr']:.2e}")

    def _log_train(self, step: int, pending: dict[str, float], n_pending: int, t_log: float) -> None:
        line: dict[str, Any] = {"type": "train", "step": step, "epoch": self.epoch}
        line.update({k: (v if k in ("lr", "grad_norm_after_clip") else v / n_pending) for k, v in pending.items()})
        line["loss"] = line.pop("total")
        line["seconds_per_step"] = round((time.perf_counter() - t_log) / n_pending, 4)
        self._log(line)

    def fit(self) -> TrainResult:
        t = self.cfg.training
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.cfg.to_dict(), self.output_dir / "config.json")
            logger.info(
                "training %d optimizer steps (%d micro-batches/epoch/rank, batch %d, accumulation %d, "
                "%d process(es)) on %s -> %s",
                self.total_steps,
                self.batches_per_epoch,
                t.batch_size,
                t.gradient_accumulation_steps,
                self.dist.world_size,
                self.device,
                self.output_dir,
            )
        progress = None
        if self.is_main and self.show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(
                total=self.total_steps, initial=self.global_step, desc="train", dynamic_ncols=True, disable=None
            )  # disable=None: no bar (escape codes) when stderr is a log file, not a terminal
        pending: dict[str, float] = {}
        n_pending = 0
        last_saved = last_eval = None
        t_log = time.perf_counter()
        windows = self._windows()
        interrupted = False
        with StopRequest() as stop:
            while self.global_step < self.total_steps:
                if stop.agreed(self.device):
                    interrupted = True
                    break
                window = next(windows)
                record = self._step(window)
                self._after_step(record, pending, progress)
                n_pending += 1
                step = self.global_step
                if step % t.logging_steps == 0 or step == self.total_steps:
                    self._log_train(step, pending, n_pending, t_log)
                    pending, n_pending, t_log = {}, 0, time.perf_counter()
                if step % t.eval_steps == 0 and not stop.requested:
                    self.evaluate()
                    last_eval = step
                if step % t.save_steps == 0:
                    self.save_checkpoint()
                    last_saved = step
        if progress is not None:
            progress.close()
        if interrupted:
            if n_pending:
                self._log_train(self.global_step, pending, n_pending, t_log)
            if last_saved != self.global_step:
                self.save_checkpoint()
            if self.is_main:
                logger.warning(
                    "stopped at step %d of %d; checkpoint %s; continue with --resume",
                    self.global_step,
                    self.total_steps,
                    self.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}",
                )
                if self._tb:
                    self._tb.close()
            barrier()
            return TrainResult(self.output_dir, self.global_step, self.best_metric, self.last_eval, interrupted=True)
        if last_eval != self.global_step:
            self.evaluate()
        if last_saved != self.global_step:
            self.save_checkpoint()
        if self.dist.enabled:
            logger.info("rank %d adapter sha256 %s", self.dist.rank, self.adapter_checksum())
        if self.is_main:
            self._save_named(LAST_ADAPTER)
            if self.val_set is None and not (self.output_dir / BEST_ADAPTER).exists():
                logger.info("no validation split: last_lora_weights is the adapter to use")
            if self._tb:
                self._tb.close()
        barrier()
        return TrainResult(self.output_dir, self.global_step, self.best_metric, self.last_eval)


def train(cfg: Config, resume: str | None = None, show_progress: bool = True) -> TrainResult:
    """Run training as configured; under torchrun every rank calls this."""
    try:
        trainer = Trainer(cfg, resume=resume, show_progress=show_progress)
    except DatasetError as exc:
        raise TrainingError(str(exc)) from exc
    return trainer.fit()
