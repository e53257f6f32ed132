"""DistPro: a meta-learned distillation process over teacher-student pathways.

Pathways: every (teacher stage i, student stage j) pair of the stage outputs a space exposes
(``k1`` and ``k2``: four pairs) times N transform blocks M_{i,j,k} on the student side (by
default three: one conv-BN-ReLU layer, two, and one with the 1-channel self-attention of the
paper's Fig. 4; each then resized to the teacher's map and mapped to its channels by a 1×1
conv), compared by a distance δ (``l2``: MSE, ``l1``, or ``hcl``: ReviewKD's hierarchical
context loss, MSE at full resolution and pooled to 4, 2 and 1 with halving weights).

Each step's weights are the biased softmax of Eq. 2, α = exp(α̃) / (Σ exp(α̃) + exp(g)) with
g = 1, and a pathway whose α̃ ≤ τ = 0.5 is left out of that step's loss (the clip of §3.4,
saving its computation). The training loss is CE + Σ α δ(M(S_j), T_i).

Search phase (Eq. 4-5): per step, a virtual step θ' = θ − ξ·d of the inner optimiser (SGD
with momentum μ, Nesterov, weight decay: d = (1 + μ)·g + μ²·buf + ..., so dθ'/dα̃ =
−ξ(1 + μ)·∂g/∂α̃ for Nesterov, −ξ·∂g/∂α̃ without), the validation CE's gradient at θ', and
the finite-difference Hessian-vector product with θ± = θ ± ε∇θL_val(θ'),
ε = 0.01 / ‖∇θL_val(θ')‖; α̃ then takes an Adam step on that hypergradient and θ its real SGD
step with the new weights; α_t is recorded. Retrain phase: the recorded process linearly
interpolated from T_search to T steps (Alg. 1 line 8), only θ trained. Ablations: ``equal``
(every α = 1/L, no clip, as the paper's Table 1) and ``final`` (α_T held constant).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from primitives.errors import GpProxyError

from ..bench.train import cosine_lr, prefixed
from ..core.files import atomic_write_json, load_tensors, save_tensors

__all__ = ["BLOCKS", "DISTANCES", "MODES", "DistProLoss", "Pathways", "Process", "SearchSettings",
           "biased_softmax", "hypergradient", "search_process"]

STAGES = ("k1", "k2")
#: (conv-BN-ReLU layers, self-attention after them) of each candidate transform block
BLOCKS: tuple[tuple[int, bool], ...] = ((1, False), (2, False), (1, True))
G_BIAS = 1.0  # g of the biased softmax
TAU = 0.5  # the clip threshold on α̃
MODES = ("learned", "final", "equal")


def biased_softmax(raw: Tensor, g: float = G_BIAS) -> Tensor:
    """exp(α̃) / (Σ exp(α̃) + exp(g)) (Eq. 2): the appended constant lets every weight shrink
    together (a label-smoothing-like remainder), unlike a plain softmax."""
    full = torch.cat([raw, raw.new_tensor([g])])
    return torch.softmax(full, dim=0)[:-1]


def _hcl(s: Tensor, t: Tensor) -> Tensor:
    """ReviewKD's hierarchical context loss: MSE at full size, then adaptive-average-pooled to
    4, 2 and 1, weights 1, 1/2, 1/4, 1/8 normalised to sum 1."""
    total, weights = F.mse_loss(s, t), 1.0
    w = 1.0
    for size in (4, 2, 1):
        if size >= s.shape[-1]:
            continue
        w /= 2.0
        total = total + w * F.mse_loss(F.adaptive_avg_pool2d(s, size),
                                       F.adaptive_avg_pool2d(t, size))
        weights += w
    return total / weights


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": F.mse_loss, "l1": F.l1_loss, "hcl": _hcl}


class _SelfAttention(nn.Module):
    """Fig. 4b: a conv gives a 1-channel attention map that multiplies the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.att = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.att(x))


class _Block(nn.Module):
    def __init__(self, cs: int, ct: int, size: tuple[int, int], layers: int, attention: bool
                 ) -> None:
        super().__init__()
        body: list[nn.Module] = []
        for _ in range(layers):
            body += [nn.Conv2d(cs, cs, 3, padding=1, bias=False), nn.BatchNorm2d(cs), nn.ReLU()]
        if attention:
            body.append(_SelfAttention(cs))
        self.body = nn.Sequential(*body)
        self.out = nn.Conv2d(cs, ct, 1, bias=False)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.out(x)


class Pathways(nn.Module):
    """The L = |teacher stages| × |student stages| × N pathways and their distances."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 distance: str = "hcl", blocks: Sequence[tuple[int, bool]] = BLOCKS) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise GpProxyError(f"DistPro distance {distance!r}: choose one of "
                               f"{', '.join(DISTANCES)}")
        self.distance = distance
        self.names: list[str] = []
        self.ends: list[tuple[str, str]] = []
        mods = []
        for ti in STAGES:
            for sj in STAGES:
                (_, cs, *_), (_, ct, *size) = shapes[sj][0], shapes[ti][1]
                for k, (layers, att) in enumerate(blocks):
                    mods.append(_Block(cs, ct, (int(size[0]), int(size[1])), layers, att))
                    self.names.append(f"T.{ti}<-S.{sj}/M{k + 1}")
                    self.ends.append((ti, sj))
        self.blocks = nn.ModuleList(mods)

    def __len__(self) -> int:
        return len(self.blocks)

    def losses(self, s: dict[str, Tensor], t: dict[str, Tensor], active: Tensor) -> Tensor:
        """δ of every active pathway (0 for the clipped ones, never computed)."""
        dist = DISTANCES[self.distance]
        out = []
        for p, (block, (ti, sj)) in enumerate(zip(self.blocks, self.ends, strict=True)):
            if bool(active[p]):
                out.append(dist(block(s[sj]), t[ti].detach()))
            else:
                out.append(s[sj].new_zeros(()))
        return torch.stack(out)


# ---------------------------------------------------------------- the process (data) -------
@dataclass
class Process:
    """The learned weights per search step: α (normalised) and α̃ (raw, for the clip)."""

    FORMAT: ClassVar[int] = 1
    pathways: list[str]
    alpha: list[list[float]]
    raw: list[list[float]]
    settings: dict[str, Any]

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def at(self, step: int, total: int, mode: str) -> tuple[Tensor, Tensor]:
        """(α, active) at ``step`` of a run of ``total`` steps under ``mode``."""
        n = len(self.pathways)
        if mode == "equal":
            return torch.full((n,), 1.0 / n), torch.ones(n, dtype=torch.bool)
        a, r = torch.tensor(self.alpha), torch.tensor(self.raw)
        if mode == "final":
            return a[-1], r[-1] > TAU
        if mode != "learned":
            raise GpProxyError(f"process mode {mode!r}: choose one of {', '.join(MODES)}")
        # linear interpolation of the recorded steps onto the run's steps (Alg. 1 line 8)
        x = step * (self.steps - 1) / max(total - 1, 1)
        lo = min(math.floor(x), self.steps - 1)
        hi = min(lo + 1, self.steps - 1)
        f = x - lo
        return (1 - f) * a[lo] + f * a[hi], ((1 - f) * r[lo] + f * r[hi]) > TAU

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, {"format": self.FORMAT, **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Process:
        p = Path(path)
        try:
            rec = json.loads(p.read_text())
            if rec.get("format") != cls.FORMAT:
                raise ValueError("format")
            proc = cls(list(rec["pathways"]), [list(map(float, r)) for r in rec["alpha"]],
                       [list(map(float, r)) for r in rec["raw"]], dict(rec["settings"]))
        except FileNotFoundError:
            raise GpProxyError(f"{path}: no such process file") from None
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise GpProxyError(f"{path}: not a DistPro process file ({exc})") from None
        if not proc.alpha or any(len(r) != len(proc.pathways) for r in proc.alpha + proc.raw):
            raise GpProxyError(f"{path}: every step needs one α and one α̃ per pathway")
        if any(not math.isfinite(v) for r in proc.alpha + proc.raw for v in r):
            raise GpProxyError(f"{path}: a weight is NaN or infinite")
        return proc


class DistProLoss(nn.Module):
    """The retrain phase as a distillation loss (``distill --process FILE``): the pathways
    weighted by the process at the run's current step (a buffer: resumes exactly)."""

    hyperparameters: ClassVar[dict[str, str]] = {"process": "process",
                                                 "mode": "process_mode"}

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 process: str = "", mode: str = "learned") -> None:
        super().__init__()
        self.process = Process.load(process)
        s = self.process.settings
        self.mode = mode
        blocks = [(int(b[0]), bool(b[1])) for b in s.get("blocks", BLOCKS)]
        self.paths = Pathways(shapes, s.get("distance", "hcl"), blocks)
        if self.paths.names != self.process.pathways:
            raise GpProxyError(f"{process}: its pathways do not fit this teacher and student")
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.total = 0

    def set_total_steps(self, total: int) -> None:
        self.total = total

    def forward(self, s: dict[str, Tensor], t: dict[str, Tensor], y: Tensor) -> Tensor:
        step = self.get_buffer("step")
        alpha, active = self.process.at(int(step), self.total or self.process.steps, self.mode)
        step.add_(1)
        return (alpha.to(s["k1"].dtype) * self.paths.losses(s, t, active)).sum()


# ---------------------------------------------------------------- search phase -------------
@dataclass(frozen=True)
class SearchSettings:
    epochs: int = 4
    val_fraction: float = 0.2  # of the training data, carved off for L_val (the paper: 20%)
    alpha_lr: float = 0.05  # Adam on α̃ (the paper's learning rate for α)
    distance: str = "hcl"
    blocks: tuple[tuple[int, bool], ...] = BLOCKS
    seed: int = 0


class _Joint(nn.Module):
    """Student and pathway blocks as one module, so θ is one dict of named parameters."""

    def __init__(self, student: nn.Module, paths: Pathways) -> None:
        super().__init__()
        self.student, self.paths = student, paths

    def forward(self, x: Tensor, t: dict[str, Tensor] | None = None,
                active: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        feats = self.student.features(x)  # type: ignore[operator]
        if t is None or active is None:
            return feats["k3"], None
        return feats["k3"], self.paths.losses(feats, t, active)


Batch = tuple[Tensor, Tensor, dict[str, Tensor]]  # images, labels, teacher features


def _train_loss(joint: _Joint, params: dict[str, Tensor], buffers: dict[str, Tensor],
                raw: Tensor, batch: Batch) -> Tensor:
    """L_train(θ, α̃) (Eq. 2) with θ = ``params``; buffers are copies, so virtual forwards
    leave the real BatchNorm statistics alone."""
    x, y, t = batch
    active = raw.detach() > TAU
    logits, dist = functional_call(joint, {**params, **buffers}, (x, t, active))
    assert dist is not None
    return F.cross_entropy(logits, y) + (biased_softmax(raw) * dist).sum()


def _val_loss(joint: _Joint, params: dict[str, Tensor], buffers: dict[str, Tensor],
              batch: tuple[Tensor, Tensor]) -> Tensor:
    logits, _ = functional_call(joint, {**params, **buffers}, (batch[0],))
    return F.cross_entropy(logits, batch[1])


def inner_factor(lr: float, momentum: float, nesterov: bool) -> float:
    """dθ'/d(∂L/∂θ) of one SGD step: lr·(1 + μ) with Nesterov momentum (the gradient enters
    the step directly and through the new momentum buffer), lr otherwise. Weight decay and
    the old buffer add terms that do not depend on α̃."""
    return lr * (1.0 + momentum) if nesterov and momentum else lr


def _virtual_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                  opt: torch.optim.SGD) -> dict[str, Tensor]:
    """θ' = θ − lr·d, d the update the optimiser would make now (weight decay, momentum
    buffer, Nesterov) from gradients ``grads``."""
    group = opt.param_groups[0]
    lr, mu, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
    by_id = {id(p): name for name, p in params.items()}
    out = {}
    for p in group["params"]:
        name = by_id[id(p)]
        d = grads[name] + wd * p.detach()
        if mu:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            new_buf = d if buf is None else mu * buf + d
            d = d + mu * new_buf if nesterov else new_buf
        out[name] = p.detach() - lr * d
    return out


def hypergradient(joint: _Joint, raw: Tensor, train: Batch, val: tuple[Tensor, Tensor],
                  opt: torch.optim.SGD, eps_scale: float = 0.01) -> Tensor:
    """∇α̃ L_val(θ'(α̃)) by Eq. 4-5: −c · (∇α̃ L_train(θ⁺) − ∇α̃ L_train(θ⁻)) / 2ε with
    θ± = θ ± ε∇θ'L_val(θ'), ε = eps_scale / ‖∇θ'L_val(θ')‖ (the paper's 0.01: a step of norm
    0.01 in parameter space), c the inner step's factor."""
    params = dict(joint.named_parameters())
    buffers = {k: v.clone() for k, v in joint.named_buffers()}
    detached = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = _train_loss(joint, detached, buffers, raw.detach(), train)
    grads = dict(zip(detached, torch.autograd.grad(loss, list(detached.values()),
                                                    allow_unused=True), strict=True))
    grads = {k: g if g is not None else torch.zeros_like(params[k]) for k, g in grads.items()}
    moved = {k: v.requires_grad_(True) for k, v in _virtual_step(params, grads, opt).items()}
    v_loss = _val_loss(joint, moved, {k: v.clone() for k, v in buffers.items()}, val)
    v = torch.autograd.grad(v_loss, list(moved.values()), allow_unused=True)
    vec = {k: g if g is not None else torch.zeros_like(moved[k]) for k, g in zip(moved, v,
                                                                                 strict=True)}
    norm = torch.sqrt(sum((g * g).sum() for g in vec.values()))  # type: ignore[arg-type]
    if not bool(norm > 0):
        return torch.zeros_like(raw)
    eps = eps_scale / norm
    group = opt.param_groups[0]
    c = inner_factor(group["lr"], group["momentum"], group["nesterov"])
    sides = []
    for sign in (1.0, -1.0):
        shifted = {k: params[k].detach() + sign * eps * vec[k] for k in params}
        r = raw.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_train_loss(joint, shifted, {k: b.clone() for k, b in
                                                                 buffers.items()}, r, train), r)
        sides.append(g)
    return -c * (sides[0] - sides[1]) / (2 * eps)


def direct_hypergradient(joint: _Joint, raw: Tensor, train: Batch, val: tuple[Tensor, Tensor],
                         opt: torch.optim.SGD) -> Tensor:
    """The same derivative by autograd through the optimiser's whole update (weight decay,
    momentum buffer, Nesterov), second order and exact: what :func:`hypergradient`
    approximates, for tests on tiny networks."""
    params = dict(joint.named_parameters())
    buffers = {k: v.clone() for k, v in joint.named_buffers()}
    r = raw.detach().requires_grad_(True)
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = _train_loss(joint, theta, buffers, r, train)
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, allow_unused=True)
    g = {k: gr if gr is not None else torch.zeros_like(theta[k])
         for k, gr in zip(theta, grads, strict=True)}
    moved = _virtual_step(params, g, opt)  # θ'(α̃), differentiable through g
    v_loss = _val_loss(joint, moved, {k: b.clone() for k, b in buffers.items()}, val)
    (h,) = torch.autograd.grad(v_loss, r)
    return h


def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{idx}.{key}"] = torch.as_tensor(value)
    return out


def _load_opt(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def search_process(student: nn.Module, teacher_features: dict[str, Tensor], images: Tensor,
                   labels: Tensor, recipe: Any, settings: SearchSettings,
                   out: str | os.PathLike[str],
                   on_epoch: Callable[[int, float], None] | None = None) -> Process:
    """The search phase on the training data (``images``, their ``teacher_features``): the
    last ``val_fraction`` carved off for L_val; resumable per epoch in ``out``; writes and
    returns ``process.json``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    n_val = max(1, round(settings.val_fraction * len(images)))
    n_train = len(images) - n_val
    shapes = {k: (tuple(v.shape), tuple(teacher_features[k].shape)) for k, v in
              _probe(student, images[:2]).items() if k in STAGES}
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        paths = Pathways(shapes, settings.distance, settings.blocks)
    joint = _Joint(student, paths)
    opt = recipe.optimizer(list(joint.parameters()))
    raw = torch.ones(len(paths), requires_grad=True)  # α̃_0 = 1 (§3.3)
    opt_a = torch.optim.Adam([raw], lr=settings.alpha_lr)
    g = torch.Generator().manual_seed(settings.seed)
    record: dict[str, Any] = {"alpha": [], "raw": [], "loss": [], "seconds": 0.0}
    ckpt = folder / "search.safetensors"
    start = 0
    cfg = {"settings": asdict(settings), "recipe": asdict(recipe), "images": len(images)}
    if (folder / "search.json").is_file() and json.loads(
            (folder / "search.json").read_text()) != json.loads(json.dumps(cfg)):
        raise GpProxyError(f"{folder}: holds a DistPro search with other settings")
    atomic_write_json(folder / "search.json", cfg)
    if (folder / "process.json").is_file():  # finished: the process is the record
        return Process.load(folder / "process.json")
    if ckpt.is_file():
        from safetensors import safe_open

        tensors = load_tensors(ckpt)
        with safe_open(str(ckpt), framework="pt") as fh:
            record = json.loads((fh.metadata() or {})["record"])
        joint.load_state_dict(prefixed(tensors, "joint"))
        _load_opt("opt", opt, tensors)
        _load_opt("opt_a", opt_a, tensors)
        with torch.no_grad():
            raw.copy_(tensors["raw"])
        g.set_state(tensors["rng"])
        start = len(record["loss"])
    steps = math.ceil(n_train / recipe.batch_size)
    total = settings.epochs * steps

    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        joint.train()
        order = torch.randperm(n_train, generator=g)
        val_order = n_train + torch.randperm(n_val, generator=g)
        loss_sum = 0.0
        for b, i in enumerate(range(0, n_train, recipe.batch_size)):
            cosine_lr(opt, recipe.lr, epoch * steps + b, total)
            idx = order[i:i + recipe.batch_size]
            vidx = val_order[torch.arange(b * recipe.batch_size, (b + 1) * recipe.batch_size)
                             % n_val]
            batch = (images[idx], labels[idx], {k: v[idx] for k, v in teacher_features.items()})
            h = hypergradient(joint, raw, batch, (images[vidx], labels[vidx]), opt)
            opt_a.zero_grad(set_to_none=True)
            raw.grad = h
            opt_a.step()
            loss = _train_loss(joint, dict(joint.named_parameters()), {}, raw.detach(), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            record["alpha"].append(biased_softmax(raw.detach()).tolist())
            record["raw"].append(raw.detach().tolist())
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"DistPro search diverged at epoch {epoch + 1}")
        record["loss"].append(loss_sum / n_train)
        record["seconds"] += time.perf_counter() - t0
        tensors = {f"joint.{k}": v for k, v in joint.state_dict().items()}
        tensors.update(_opt_tensors("opt", opt))
        tensors.update(_opt_tensors("opt_a", opt_a))
        tensors["raw"] = raw.detach().clone()
        tensors["rng"] = g.get_state()
        save_tensors(ckpt, tensors, {"record": json.dumps(record)})
        if on_epoch is not None:
            on_epoch(epoch + 1, record["loss"][-1])
    proc = Process(paths.names, record["alpha"], record["raw"],
                   {"distance": settings.distance, "blocks": [list(b) for b in settings.blocks],
                    "search_seconds": record["seconds"], "search_epochs": settings.epochs,
                    "steps_per_epoch": steps})
    proc.save(folder / "process.json")
    return proc


def _probe(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    mode = model.training
    model.eval()
    with torch.no_grad():
        out = dict(model.features(x))  # type: ignore[operator]
    model.train(mode)
    return out
