"""Classifier training with cross-entropy or Hinton knowledge distillation.

The recipe is the embedded benchmark's: SGD (momentum 0.9, Nesterov, weight decay 5e-4),
cosine learning rate per step, batch 128. Data order (and augmentation, if on) come from a
generator seeded by ``seed``, the model from :func:`seeded_init`, so a run is reproducible.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from primitives.errors import GpProxyError

from ..core.files import load_tensors, save_tensors

__all__ = ["Recipe", "Schedule", "cosine_lr", "evaluate_accuracy", "hinton_kd_loss",
           "predict_logits", "sgd", "train_classifier"]


@dataclass(frozen=True)
class Schedule:
    """What a training and a distillation share: epochs and the SGD settings (subclasses add
    their fields after these, so their ``asdict`` records keep the same keys and order)."""

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9

    def optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.SGD:
        return sgd(params, self.lr, self.momentum, self.weight_decay)


@dataclass(frozen=True)
class Recipe(Schedule):
    augment: bool = False
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the KD term; 1 - alpha on cross-entropy


def sgd(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
        ) -> torch.optim.SGD:
    """The recipe's optimiser: SGD with Nesterov momentum and weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                           weight_decay=weight_decay)


def cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    """Set the learning rate of ``step`` of ``total`` on a cosine schedule from ``base``."""
    for group in opt.param_groups:
        group["lr"] = 0.5 * base * (1 + math.cos(math.pi * step / total))


def soft_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(p_T^τ ‖ p_S^τ) of the logits softened by ``temperature``, averaged over the batch:
    the one KD divergence of the project (the benchmark recipe and the registered ``kd``
    loss), which each scales by T² in its own documented order of operations."""
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def hinton_kd_loss(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float,
                   alpha: float) -> Tensor:
    """Hinton et al. 2015: alpha·T²·KL(p_T^τ ‖ p_S^τ) + (1 − alpha)·CE(S, y)."""
    # (alpha·T²)·KL, multiplied in this order: the committed benchmarks were trained so
    kl = soft_kl(student, teacher, temperature)
    return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(student, labels)


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random 1-pixel-padded crop and horizontal flip, drawn from ``g``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy = torch.randint(0, 3, (n,), generator=g)
    dx = torch.randint(0, 3, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    rows = rows.expand(n, x.shape[1], h, w + 2)
    out = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = torch.gather(out, 3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was)
    return out


def evaluate_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    logits = predict_logits(model, images)
    return float((logits.argmax(dim=1) == labels).float().mean().item())


def momentum_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """An SGD optimiser's momentum buffers as checkpoint tensors (``opt.<param index>``)."""
    return {f"opt.{k}": s["momentum_buffer"] for k, s in opt.state_dict()["state"].items()
            if s.get("momentum_buffer") is not None}


def load_momentum(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Restore what :func:`momentum_tensors` saved."""
    state = opt.state_dict()
    state["state"] = {int(k[4:]): {"momentum_buffer": v}
                      for k, v in tensors.items() if k.startswith("opt.")}
    opt.load_state_dict(state)


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors saved under ``prefix.`` (a module's state dict), the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     g: torch.Generator, epoch: int, step: int, seconds: float) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(momentum_tensors(opt))
    tensors["rng"] = g.get_state()
    save_tensors(path, tensors, {"epoch": str(epoch), "step": str(step),
                                 "seconds": repr(seconds)})


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     g: torch.Generator) -> tuple[int, int, float]:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    try:
        epoch, step, seconds = int(meta["epoch"]), int(meta["step"]), float(meta["seconds"])
        model.load_state_dict(prefixed(tensors, "model"))
        load_momentum(opt, tensors)
        g.set_state(tensors["rng"])
    except (KeyError, ValueError, RuntimeError):
        raise GpProxyError(f"{path}: not a training checkpoint of this model; remove it to "
                           "start over") from None
    return epoch, step, seconds


def train_classifier(model: nn.Module, images: Tensor, labels: Tensor, recipe: Recipe, seed: int,
                     teacher_logits: Tensor | None = None,
                     on_epoch: Callable[[int, float], None] | None = None,
                     checkpoint: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Train in place; KD when ``teacher_logits`` (aligned with ``images``) is given.

    Teacher logits are precomputed once (no augmentation), so KD costs the same as
    cross-entropy. Returns the final epoch's mean training loss and the wall time. With
    ``checkpoint`` (a file) the model, optimiser and data-order state are saved atomically
    after every epoch and a killed training resumes there, ending with the same weights as an
    uninterrupted one (long teacher trainings use it).
    """
    if recipe.augment and teacher_logits is not None:
        raise ValueError("precomputed teacher logits do not match augmented images")
    g = torch.Generator().manual_seed(seed)
    opt = recipe.optimizer(model.parameters())
    n = len(images)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    step = 0
    first_epoch, before = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        first_epoch, step, before = _load_checkpoint(ckpt, model, opt, g)
    start = time.perf_counter() - before
    loss_sum = 0.0
    model.train()
    for epoch in range(first_epoch, recipe.epochs):
        order = torch.randperm(n, generator=g)
        loss_sum, seen = 0.0, 0
        for i in range(0, n, recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            x, y = images[idx], labels[idx]
            if recipe.augment:
                x = _augment(x, g)
            cosine_lr(opt, recipe.lr, step, total)
            out = model(x)
            if teacher_logits is None:
                loss = F.cross_entropy(out, y)
            else:
                loss = hinton_kd_loss(out, teacher_logits[idx], y, recipe.temperature,
                                      recipe.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.item()) * len(idx)
            seen += len(idx)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1}")
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, g, epoch + 1, step,
                             time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_sum / seen)
    return {"train_loss": loss_sum / max(n, 1), "seconds": time.perf_counter() - start}
