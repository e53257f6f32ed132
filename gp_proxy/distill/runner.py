"""Distil a student from a teacher with any mix of registered losses; resumable per epoch.

Loss = ``ce_weight`` · CE(student, labels) + Σ weight_l · loss_l(student feats, teacher feats).
The run directory holds ``config.json``, ``checkpoint.safetensors`` (student, loss-module and
optimizer tensors, data-order RNG state, and the epoch record in its metadata: one file,
written atomically after every epoch) and ``metrics.json`` at the end. A killed run resumes
from its last epoch and ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from primitives.errors import GpProxyError

from ..bench.data import Split
from ..bench.train import (
    Schedule,
    cosine_lr,
    evaluate_accuracy,
    load_momentum,
    momentum_tensors,
    prefixed,
)
from ..core.files import atomic_write_json, load_tensors, read_json, run_lock, save_tensors
from ..spaces import FeatureNet
from .losses import build_loss, loss_arguments

__all__ = ["DistillConfig", "distill"]


@dataclass(frozen=True)
class DistillConfig(Schedule):
    ce_weight: float = 0.1
    losses: dict[str, float] = field(default_factory=lambda: {"kd": 0.9})
    temperature: float = 4.0
    formula: str | None = None
    seed: int = 0
    distiller: str | None = None  # the 'distiller' loss's spec (gp_proxy.distill.distiller)
    process: str | None = None  # the 'distpro' loss's process file (gp_proxy.distill.distpro)
    process_mode: str = "learned"  # learned, final or equal

    #: fields added after runs were committed: recorded only when not at their default, so
    #: the config.json of an existing run still reads as the same settings (and resumes)
    LATER: ClassVar[tuple[str, ...]] = ("distiller", "process", "process_mode")

    def record(self) -> dict[str, Any]:
        """What ``config.json`` holds: the settings a run resumes only under."""
        defaults = DistillConfig()
        return {k: v for k, v in asdict(self).items()
                if not (k in self.LATER and v == getattr(defaults, k))}


def _shapes(student: FeatureNet, teacher: FeatureNet, x: torch.Tensor
            ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    modes = student.training, teacher.training
    student.eval()  # a shape probe must not move BatchNorm running statistics
    teacher.eval()
    with torch.no_grad():
        fs, ft = student.features(x[:2]), teacher.features(x[:2])
    student.train(modes[0])
    teacher.train(modes[1])
    return {k: (tuple(fs[k].shape), tuple(ft[k].shape)) for k in fs}


def _build_losses(losses: nn.ModuleDict, cfg: DistillConfig,
                  shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
    for name, weight in cfg.losses.items():
        if weight == 0:
            continue
        kw = loss_arguments(name, cfg)  # the hyperparameters the loss declares
        missing = [k for k, v in kw.items() if v is None or v == ""]
        if missing:
            raise GpProxyError(f"loss {name!r} needs {', '.join(missing)}")
        losses[name] = build_loss(name, shapes, **kw)


CHECKPOINT_FORMAT = 2  # 2: the epoch record inside the safetensors metadata (one file)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    try:
        state = json.loads(meta["state"])
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("format")
        epoch, history, seconds = int(state["epoch"]), list(state["history"]), state["seconds"]
        if epoch != len(history) or not all(isinstance(v, float) for v in history) \
                or not isinstance(seconds, float) or "rng" not in tensors:
            raise ValueError("fields")
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        raise GpProxyError(f"{path}: not a checkpoint of this version (epoch record missing "
                           "or malformed); remove it to start over") from None
    return tensors, {"epoch": epoch, "history": history, "seconds": seconds}


def distill(student: FeatureNet, teacher: FeatureNet, train: Split, test: Split,
            cfg: DistillConfig, run_dir: str | os.PathLike[str],
            on_epoch: Callable[[int, float], None] | None = None,
            on_accuracy: Callable[[int, float], None] | None = None,
            teacher_features: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Distil ``student`` in place (resuming ``run_dir``'s checkpoint); returns the metrics.
    The run directory is locked while it is written (a second writer fails at once).
    ``teacher_features``: the teacher's features of every training image, computed once
    (the recipe has no augmentation), so no teacher forward runs per step."""
    run = Path(run_dir)
    with run_lock(run):
        return _distill(student, teacher, train, test, cfg, run, on_epoch, on_accuracy,
                        teacher_features)


def _distill(student: FeatureNet, teacher: FeatureNet, train: Split, test: Split,
             cfg: DistillConfig, run: Path, on_epoch: Callable[[int, float], None] | None,
             on_accuracy: Callable[[int, float], None] | None = None,
             teacher_features: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    cfg_json = cfg.record()
    if (run / "config.json").exists() and read_json(run / "config.json") != cfg_json:
        raise GpProxyError(f"{run}: holds a distillation with other settings")
    atomic_write_json(run / "config.json", cfg_json)
    shapes = _shapes(student, teacher, train.images)
    losses = nn.ModuleDict()
    with torch.random.fork_rng():  # regressors (FitNet, ICKD) start from the run's seed alone
        torch.manual_seed(cfg.seed)
        _build_losses(losses, cfg, shapes)
    n_steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    for module in losses.values():  # a loss that follows a schedule learns the run's length
        set_total = getattr(module, "set_total_steps", None)
        if callable(set_total):
            set_total(n_steps)
    params = list(student.parameters()) + list(losses.parameters())
    opt = cfg.optimizer(params)
    g = torch.Generator().manual_seed(cfg.seed)
    start, history, seconds = 0, [], 0.0
    ckpt = run / "checkpoint.safetensors"
    if ckpt.exists():
        # one file holds the tensors and, in its metadata, the epoch record: a kill can leave
        # the old checkpoint or the new one, never a mismatched pair
        tensors, state = _read_checkpoint(ckpt)
        student.load_state_dict(prefixed(tensors, "student"))
        losses.load_state_dict(prefixed(tensors, "loss"))
        load_momentum(opt, tensors)
        g.set_state(tensors["rng"])
        start, history, seconds = state["epoch"], state["history"], state["seconds"]
    teacher.eval()
    n = len(train)
    steps = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        order = torch.randperm(n, generator=g)
        loss_sum = 0.0
        for b, i in enumerate(range(0, n, cfg.batch_size)):
            step = epoch * steps + b
            cosine_lr(opt, cfg.lr, step, total)
            idx = order[i:i + cfg.batch_size]
            x, y = train.images[idx], train.labels[idx]
            if teacher_features is not None:
                ft = {k: v[idx] for k, v in teacher_features.items()}
            else:
                with torch.no_grad():
                    ft = teacher.features(x)
            fs = student.features(x)
            loss = cfg.ce_weight * F.cross_entropy(fs["k3"], y)
            for name, module in losses.items():
                loss = loss + cfg.losses[name] * module(fs, ft, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.item()) * len(idx)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"distillation diverged at epoch {epoch + 1}")
        seconds += time.perf_counter() - t0
        history.append(loss_sum / n)
        tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
        tensors.update({f"loss.{k}": v for k, v in losses.state_dict().items()})
        tensors.update(momentum_tensors(opt))
        tensors["rng"] = g.get_state()
        save_tensors(ckpt, tensors, {"state": json.dumps(
            {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "history": history,
             "seconds": seconds})})
        if on_epoch is not None:
            on_epoch(epoch + 1, history[-1])
        if on_accuracy is not None:  # for the reader only: never used to select anything
            on_accuracy(epoch + 1, evaluate_accuracy(student, test.images, test.labels))
    acc = evaluate_accuracy(student, test.images, test.labels)
    metrics = {"test_acc": acc, "train_loss": history, "train_seconds": seconds,
               "epochs": cfg.epochs, "losses": cfg.losses}
    atomic_write_json(run / "metrics.json", metrics)
    return metrics
