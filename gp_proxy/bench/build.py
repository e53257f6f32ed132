"""The ground-truth distillation benchmark builder (resumable, multi-process).

Layout of a benchmark folder::

    config.json          the build configuration (a resume must match it)
    teacher.safetensors  teacher weights; teacher.json: its accuracy and training time
    probe.safetensors    a small probe batch (images, labels) for feature caches
    runs/ARCH__MODE__sSEED.json   one finished training each, written atomically

A benchmark names its student space, its teacher (a family: any space's teacher, by name; and
optionally committed weights instead of a training), its data recipe (dataset and image size,
which fix the input shape the spaces adapt to) and the training modes it runs. A benchmark
whose students and student recipe equal another's may share that one's cross-entropy runs
(``ce_from``): CE training never sees the teacher, so the runs are the same trainings.
    ground_truth.csv     per architecture: params, FLOPs, KD and CE accuracy per seed, mean, std
    noise.json           seed-to-seed rank agreement and the #params/FLOPs baselines
    manifest.json        command, versions, hardware, timings

A killed build loses at most the trainings in flight: finished runs are files, and a rerun
skips them.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from primitives.errors import GpProxyError

from ..core.artifacts import BenchRun, TeacherRecord, load_artifact, validate, write_artifact
from ..core.files import (
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    read_json,
    run_lock,
    save_tensors,
)
from ..core.progress import progress
from ..core.provenance import git_revision, hardware
from ..core.rank import kendall_tau, seed_reliability, spearman_rho
from ..spaces import FeatureNet, SearchSpace, count_flops, count_params, get_space
from .agreement import ranking_difference
from .data import Split, get_dataset
from .train import Recipe, evaluate_accuracy, predict_logits, train_classifier

__all__ = ["BenchConfig", "build_benchmark", "summarize"]

MODES = ("kd", "ce")


@dataclass(frozen=True)
class BenchConfig:
    space: str = "fmnist-cnn"
    teacher: str = "resnet-t"
    train_size: int = 5000
    subset_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.9
    teacher_epochs: int = 15
    teacher_lr: float = 0.1
    teacher_train_size: int = 60000
    probe_size: int = 64
    archs: tuple[str, ...] = field(default_factory=tuple)  # empty: the whole space
    dataset: str = "fashion-mnist"
    image_size: int = 14
    teacher_space: str = ""  # the teacher's family; empty: the student space's own teachers
    teacher_weights: str = ""  # trained weights (relative to the folder): no teacher training
    channels: int = 0  # image channels and classes: 0 = as the dataset recipe fixes them
    classes: int = 0
    modes: tuple[str, ...] = MODES
    ce_from: str = ""  # a benchmark folder (relative to this one) whose CE runs are shared

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise GpProxyError(f"benchmark config: modes {list(self.modes)}: choose from {MODES}")
        if self.ce_from and "ce" in self.modes:
            raise GpProxyError("benchmark config: ce_from shares another benchmark's CE runs; "
                               "drop 'ce' from modes")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise GpProxyError(f"benchmark config: seeds {list(self.seeds)} must be distinct "
                               "and non-negative")

    def check(self) -> None:
        """Fail on an unknown space, teacher, dataset or architecture before any data is read
        or any training starts (each error names the field)."""
        ds = get_dataset(self.dataset)
        if not (ds.channels or self.channels) or not (ds.classes or self.classes):
            raise GpProxyError(f"benchmark config: dataset {self.dataset!r} does not fix its "
                               "channels and classes: set channels and classes")
        space = self.student_space()
        family = self.teacher_family()
        if not self.teacher_weights and self.teacher not in family.teachers():
            raise GpProxyError(f"benchmark config: teacher {self.teacher!r} is not one of "
                               f"{family.name}'s ({', '.join(family.teachers()) or 'none'})")
        for a in self.archs:
            space.validate(a)

    def input_shape(self) -> tuple[int, int, int]:
        return get_dataset(self.dataset).input_shape(self.image_size, self.channels)

    def num_classes(self) -> int:
        return get_dataset(self.dataset).classes or self.classes

    def student_space(self) -> SearchSpace:
        return get_space(self.space, self.input_shape(), self.num_classes())

    def teacher_family(self) -> SearchSpace:
        return get_space(self.teacher_space or self.space, self.input_shape(),
                         self.num_classes())

    def build_teacher(self, seed: int = 0) -> FeatureNet:
        return self.teacher_family().build_teacher(self.teacher, seed=seed)

    def student_runs_match(self, other: BenchConfig) -> list[str]:
        """Fields by which ``other``'s CE runs would differ from this config's."""
        same = ("space", "dataset", "image_size", "train_size", "subset_seed", "epochs", "lr",
                "batch_size")
        diff = [f for f in same if getattr(self, f) != getattr(other, f)]
        if not set(self.seeds) <= set(other.seeds):
            diff.append("seeds")
        if self.archs and other.archs and not set(self.archs) <= set(other.archs):
            diff.append("archs")
        return diff

    def student_recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                      temperature=self.temperature, alpha=self.alpha)

    def teacher_recipe(self) -> Recipe:
        return Recipe(epochs=self.teacher_epochs, lr=self.teacher_lr, batch_size=self.batch_size,
                      augment=True)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["archs"] = list(self.archs)
        d["modes"] = list(self.modes)
        return d

    @staticmethod
    def from_json(d: Any, where: str | os.PathLike[str] = "benchmark config") -> BenchConfig:
        """A config from its JSON form, validated field by field (errors name ``where``)."""
        if not isinstance(d, dict):
            raise GpProxyError(f"{where}: a benchmark config must be a JSON object")
        known = {f.name for f in fields(BenchConfig)}
        unknown = set(d) - known
        if unknown:
            raise GpProxyError(f"{where}: unknown keys {sorted(unknown)}")
        return validate(d, BenchConfig, where)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> BenchConfig:
        return BenchConfig.from_json(read_json(path), path)


def _run_name(arch: str, mode: str, seed: int) -> str:
    return f"{arch}__{mode}__s{seed}"


def _train_subset(train: Split, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-balanced subset of the training split (indices into it)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    classes = int(train.labels.max().item()) + 1
    per_class = size // classes
    picked = [perm[train.labels[perm] == c][:per_class] for c in range(classes)]
    idx = torch.sort(torch.cat(picked)).values
    rest = perm[~torch.isin(perm, idx)]
    return idx, rest


# --------------------------------------------------------------------- worker side ----------
_WORKER: dict[str, Any] = {}


def _init_worker(payload: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    _WORKER.update(payload)


def _train_one(arch: str, mode: str, seed: int) -> dict[str, Any]:
    cfg: BenchConfig = _WORKER["config"]
    space = cfg.student_space()
    model = space.build(arch, seed=seed)
    teacher_logits = _WORKER["teacher_logits"] if mode == "kd" else None
    info = train_classifier(model, _WORKER["x"], _WORKER["y"], cfg.student_recipe(), seed,
                            teacher_logits=teacher_logits)
    t0 = time.perf_counter()
    acc = evaluate_accuracy(model, _WORKER["test_x"], _WORKER["test_y"])
    return {"arch": arch, "mode": mode, "seed": seed, "test_acc": acc,
            "train_loss": info["train_loss"], "train_seconds": info["seconds"],
            "eval_seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------- driver ---------------
def _build_order(archs: list[str], cfg: BenchConfig, runs_dir: Path) -> list[str]:
    """Architectures with some runs done first, then the rest in a seeded random order, so
    that the complete architectures of a partial build are a uniform sample of the space."""
    order = list(archs)
    random.Random(cfg.subset_seed).shuffle(order)
    started = {p.name.split("__")[0] for p in runs_dir.glob("*.json")}
    return sorted(order, key=lambda a: a not in started)  # stable: keeps the shuffle


def _check_config(out: Path, cfg: BenchConfig) -> None:
    path = out / "config.json"
    if path.exists():
        old = BenchConfig.load(path)
        if old != cfg:
            diff = [f.name for f in fields(cfg) if getattr(old, f.name) != getattr(cfg, f.name)]
            raise GpProxyError(f"{path}: an earlier build used other settings ({', '.join(diff)}); "
                               "use another output folder or the same settings to resume")
    else:
        atomic_write_json(path, cfg.to_json())


def _teacher(out: Path, cfg: BenchConfig, train: Split, test: Split, threads: int,
             quiet: bool) -> torch.nn.Module:
    model = cfg.build_teacher(seed=0)
    wpath, jpath = out / "teacher.safetensors", out / "teacher.json"
    if wpath.exists() and jpath.exists():
        model.load_state_dict(load_tensors(wpath))
        return model
    torch.set_num_threads(threads)
    if cfg.teacher_weights:
        model.load_state_dict(load_tensors(out / cfg.teacher_weights))
        acc = evaluate_accuracy(model, test.images, test.labels)
        save_tensors(wpath, model.state_dict())
        atomic_write_json(jpath, {"name": cfg.teacher, "test_acc": acc, "train_images": 0,
                                  "weights_from": cfg.teacher_weights, "train_seconds": 0.0,
                                  "params": count_params(model),
                                  "flops": count_flops(model, cfg.input_shape())})
        return model
    n = min(cfg.teacher_train_size, len(train))
    # checkpointed every epoch: a teacher takes an hour or more, a kill must not lose it
    ckpt = out / "teacher.ckpt.safetensors"
    with progress(f"{out.name}: teacher epochs", cfg.teacher_epochs, quiet) as advance:
        info = train_classifier(model, train.images[:n], train.labels[:n], cfg.teacher_recipe(),
                                seed=0, checkpoint=ckpt,
                                on_epoch=lambda epoch, loss: advance(
                                    1, f"epoch {epoch}: loss {loss:.4f}"))
    acc = evaluate_accuracy(model, test.images, test.labels)
    save_tensors(wpath, model.state_dict())
    atomic_write_json(jpath, {"name": cfg.teacher, "test_acc": acc, "train_images": n,
                              "train_seconds": info["seconds"], "train_loss": info["train_loss"],
                              "params": count_params(model),
                              "flops": count_flops(model, cfg.input_shape())})
    ckpt.unlink(missing_ok=True)
    return model


def build_benchmark(out: str | os.PathLike[str], cfg: BenchConfig, train: Split, test: Split,
                    workers: int = 2, max_runs: int | None = None, quiet: bool = False,
                    backend: str = "processes", scheduler: str | None = None
                    ) -> dict[str, int]:
    """Build (or resume) a benchmark in ``out``; returns counts of done/new/remaining runs.

    Student trainings run on ``backend`` (``processes``: ``workers`` local processes;
    ``dask``: a cluster at ``scheduler`` or a new LocalCluster); each finished training's run
    file is written atomically here as it arrives, so a lost worker loses only the training it
    was running (Dask runs it again elsewhere). ``max_runs`` stops after that many new
    trainings (used to test resumption). The folder is locked while it is built: a second
    build of it fails at once naming the holder.
    """
    out = Path(out)
    with run_lock(out):
        return _build(out, cfg, train, test, workers, max_runs, quiet, backend, scheduler)


def _build(out: Path, cfg: BenchConfig, train: Split, test: Split, workers: int,
           max_runs: int | None, quiet: bool, backend: str = "processes",
           scheduler: str | None = None) -> dict[str, int]:
    cfg.check()
    _check_config(out, cfg)
    space = cfg.student_space()
    archs = [space.validate(a) for a in cfg.archs] if cfg.archs else list(space.enumerate())
    idx, rest = _train_subset(train, cfg.train_size, cfg.subset_seed)
    x, y = train.images[idx], train.labels[idx]
    teacher = _teacher(out, cfg, train, test, workers, quiet)
    if not (out / "probe.safetensors").exists():
        probe = rest[: cfg.probe_size]
        save_tensors(out / "probe.safetensors",
                     {"images": train.images[probe], "labels": train.labels[probe]})
    teacher_logits = predict_logits(teacher, x) if "kd" in cfg.modes else None
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    todo = [(a, m, s) for a, m, s in itertools.product(_build_order(archs, cfg, runs_dir),
                                                       cfg.modes, cfg.seeds)
            if not (runs_dir / f"{_run_name(a, m, s)}.json").exists()]
    done_before = len(archs) * len(cfg.modes) * len(cfg.seeds) - len(todo)
    if max_runs is not None:
        todo = todo[:max_runs]
    payload = {"config": cfg, "x": x, "y": y, "test_x": test.images, "test_y": test.labels,
               "teacher_logits": teacher_logits}
    new = 0
    if todo:
        from ..evaluate.backends import BACKENDS, executor

        with progress(f"{out.name}: student trainings", len(todo), quiet) as advance, \
                executor(backend, workers, scheduler, initializer=_init_worker,
                         initargs=(payload,)) as pool:
            pending: set[Future[dict[str, Any]]] = set()
            queue = iter(todo)
            try:
                # a few ahead per local process (Ctrl-C then cancels the rest at once); a Dask
                # cluster, whose size this process does not set, schedules them all itself
                ahead = len(todo) if BACKENDS.get(backend).cluster else workers * 2
                for item in itertools.islice(queue, ahead):
                    pending.add(pool.submit(_train_one, *item))
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        rec = fut.result()
                        write_artifact(
                            runs_dir / f"{_run_name(rec['arch'], rec['mode'], rec['seed'])}"
                            ".json", BenchRun(**rec))
                        new += 1
                        advance(1, f"{_run_name(rec['arch'], rec['mode'], rec['seed'])}: "
                                   f"{100 * rec['test_acc']:.2f} %")
                        nxt = next(queue, None)
                        if nxt is not None:
                            pending.add(pool.submit(_train_one, *nxt))
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    remaining = len(archs) * len(cfg.modes) * len(cfg.seeds) - done_before - new
    return {"done_before": done_before, "new": new, "remaining": remaining}


# --------------------------------------------------------------------- summary --------------
def _load_runs(folder: Path, modes: tuple[str, ...]) -> dict[tuple[str, str, int], dict[str, Any]]:
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for p in sorted((folder / "runs").glob("*.json")):
        rec = load_artifact(p, BenchRun).model_dump()
        if rec["mode"] in modes:
            runs[(rec["arch"], rec["mode"], int(rec["seed"]))] = rec
    return runs


def shared_ce_source(out: Path, cfg: BenchConfig) -> Path | None:
    """The benchmark folder whose CE runs ``cfg`` shares, checked to train the same students
    with the same recipe (CE never sees the teacher, so those are the same trainings)."""
    if not cfg.ce_from:
        return None
    src = (out / cfg.ce_from).resolve()
    if not (src / "config.json").is_file():
        raise GpProxyError(f"{out / 'config.json'}: ce_from {cfg.ce_from!r}: no benchmark "
                           f"config at {src}")
    other = BenchConfig.load(src / "config.json")
    diff = cfg.student_runs_match(other)
    if diff:
        raise GpProxyError(f"{out / 'config.json'}: ce_from {cfg.ce_from!r} trains students "
                           f"differently ({', '.join(diff)}); its CE runs cannot be shared")
    return src


def _read_rows(folder: Path) -> dict[str, dict[str, float]]:
    with (folder / "ground_truth.csv").open(newline="") as fh:
        return {r["arch"]: {k: float(v) for k, v in r.items() if k != "arch"}
                for r in csv.DictReader(fh)}


def teacher_difference(reference: Path, rows: list[dict[str, Any]], seeds: tuple[int, ...],
                       boot: int = 2000) -> dict[str, Any]:
    """How differently two teachers rank the same students, against seed noise
    (:func:`~gp_proxy.bench.agreement.ranking_difference` of the KD runs under ``reference``'s
    teacher and this one's; same students, same seeds, shared CE). The per-architecture
    teacher effect KD_B − KD_A equals the difference of the KD − CE gains (CE cancels)."""
    ref = _read_rows(reference)
    archs = [r["arch"] for r in rows if r["arch"] in ref]
    mine = {r["arch"]: r for r in rows}
    a = np.array([[ref[x][f"kd_s{s}"] for s in seeds] for x in archs])
    b = np.array([[float(mine[x][f"kd_s{s}"]) for s in seeds] for x in archs])
    ce = np.array([ref[x]["ce_mean"] for x in archs])
    params = np.array([ref[x]["params"] for x in archs])
    d = ranking_difference(a, b, params, boot)
    runs = d["single_run_kendall"]
    ka, kb = a.mean(axis=1), b.mean(axis=1)
    # the keys of benchmark 2's committed noise.json (written before the general analysis)
    return {
        "reference": str(reference.name),
        "architectures": d["architectures"],
        "single_run_kendall": {"within_reference": runs["within_a"],
                               "within_this": runs["within_b"], "cross_teacher": runs["cross"],
                               "within_minus_cross": runs["within_minus_cross"],
                               "within_minus_cross_ci95": runs["within_minus_cross_ci95"]},
        "kd_mean_kendall_between_teachers": d["mean_kendall"],
        "kd_mean_spearman_between_teachers": d["mean_spearman"],
        "spearman_disattenuated": d["spearman_disattenuated"],
        "reliability_of_mean": {"reference": d["reliability_of_mean"]["a"],
                                "this": d["reliability_of_mean"]["b"]},
        "interaction_arch_x_teacher": d["interaction"],
        "kd_minus_ce": {"reference_mean": float((ka - ce).mean()),
                        "this_mean": float((kb - ce).mean()),
                        "paired_wilcoxon_p": float(stats.wilcoxon(kb - ce, ka - ce).pvalue)},
        "teacher_effect": {
            "definition": "KD under this teacher minus KD under the reference, per architecture",
            **d["difference_b_minus_a"]},
    }


def summarize(out: str | os.PathLike[str], command: str = "", partial: bool = False
              ) -> dict[str, Any]:
    """Write ground_truth.csv, noise.json and manifest.json from the finished runs. An
    unfinished build is refused unless ``partial``: its ground truth would be read as the
    benchmark's by every command (the manifest alone says how many architectures it holds)."""
    out = Path(out)
    cfg = BenchConfig.load(out / "config.json")
    space = cfg.student_space()
    archs = [space.validate(a) for a in cfg.archs] if cfg.archs else list(space.enumerate())
    runs = _load_runs(out, cfg.modes)
    ce_src = shared_ce_source(out, cfg)
    if ce_src is not None:
        runs.update(_load_runs(ce_src, ("ce",)))
    complete = [a for a in archs if all((a, m, s) in runs for m in MODES for s in cfg.seeds)]
    if len(complete) < 3:
        raise GpProxyError(f"{out}: only {len(complete)} architectures have every run; "
                           "build more before summarising")
    if len(complete) < len(archs) and not partial:
        raise GpProxyError(f"{out}: {len(complete)} of {len(archs)} architectures have every "
                           "run; finish the build (gp-proxy bench build resumes it), or "
                           "summarise a copy with --partial for a preview")
    rows = []
    for a in complete:
        model = space.build(a)
        row: dict[str, Any] = {"arch": a, "params": count_params(model),
                               "flops": count_flops(model, space.input_shape)}
        for m in MODES:
            accs = [100.0 * runs[(a, m, s)]["test_acc"] for s in cfg.seeds]
            for s, acc in zip(cfg.seeds, accs, strict=True):
                row[f"{m}_s{s}"] = round(acc, 3)
            row[f"{m}_mean"] = round(statistics.fmean(accs), 4)
            row[f"{m}_std"] = round(statistics.stdev(accs) if len(accs) > 1 else 0.0, 4)
            row[f"{m}_seconds"] = round(sum(runs[(a, m, s)]["train_seconds"]
                                            for s in cfg.seeds), 2)
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ground_truth.csv", buf.getvalue())

    kd = np.array([r["kd_mean"] for r in rows])
    ce = np.array([r["ce_mean"] for r in rows])
    per_seed = {s: np.array([r[f"kd_s{s}"] for r in rows]) for s in cfg.seeds}
    pairs = list(itertools.combinations(cfg.seeds, 2))
    tau_pairs = [kendall_tau(per_seed[a], per_seed[b]) for a, b in pairs]
    rho_pairs = [spearman_rho(per_seed[a], per_seed[b]) for a, b in pairs]
    rho1, rel = seed_reliability(np.stack([per_seed[s] for s in cfg.seeds], axis=1))
    params = np.array([r["params"] for r in rows], dtype=float)
    flops = np.array([r["flops"] for r in rows], dtype=float)
    teacher = load_artifact(out / "teacher.json", TeacherRecord).model_dump()
    noise = {
        "architectures": len(rows),
        "seeds": list(cfg.seeds),
        "seed_to_seed_kendall_kd": {"mean": statistics.fmean(tau_pairs), "pairs": tau_pairs},
        "seed_to_seed_spearman_kd": {"mean": rho1, "pairs": rho_pairs},
        "reliability_of_mean_spearman_brown": rel,
        "baselines_vs_kd_mean": {
            "params": {"kendall": kendall_tau(params, kd), "spearman": spearman_rho(params, kd)},
            "flops": {"kendall": kendall_tau(flops, kd), "spearman": spearman_rho(flops, kd)},
            "ce_mean": {"kendall": kendall_tau(ce, kd), "spearman": spearman_rho(ce, kd)},
        },
        "kd_accuracy": {"min": float(kd.min()), "max": float(kd.max()),
                        "mean": float(kd.mean()), "std": float(kd.std())},
        "kd_minus_ce": {"mean": float((kd - ce).mean()), "min": float((kd - ce).min()),
                        "max": float((kd - ce).max()),
                        "fraction_kd_better": float(np.mean(kd > ce))},
        "teacher_test_acc": None if teacher["test_acc"] is None else 100.0 * teacher["test_acc"],
    }
    if ce_src is not None:
        noise["ce_runs_shared_from"] = cfg.ce_from
        noise["teacher_difference"] = teacher_difference(ce_src, rows, cfg.seeds)
    atomic_write_json(out / "noise.json", noise)
    own = [r for r in runs.values() if r["mode"] in cfg.modes]
    seconds = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in own)
    manifest = {
        "command": command,
        "config": cfg.to_json(),
        "architectures_complete": len(rows),
        "architectures_in_space": len(archs),
        "runs": len(own),
        "student_cpu_seconds": round(seconds, 1),
        "teacher": teacher,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__},
        "hardware": {**hardware(), "threads_per_training": 1},
        "git_revision": git_revision(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return noise


def command_line() -> str:
    return " ".join(["gp-proxy", *sys.argv[1:]])
