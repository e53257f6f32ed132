"""The ``gp-proxy`` command line. Every user error ends in one line, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

import primitives
from primitives.errors import GpProxyError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Discover training-free proxies for distillation-aware NAS.")
# in a log (not a terminal) tables get room for full formulas instead of rich's 80 columns
_out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
_err = Console(stderr=True, soft_wrap=True)


# where evaluations (and other fanned-out work) run: the config keys of the same names
BackendOpt = Annotated[str, typer.Option(
    help="local (this process), processes (--workers local processes) or dask (a cluster at "
         "--scheduler, or a new LocalCluster); every backend gives the same bits")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="processes of the processes backend, or "
                                                     "of a new Dask LocalCluster")]
SchedulerOpt = Annotated[str | None, typer.Option(
    help="dask: a running scheduler's address, e.g. tcp://10.0.0.5:8786")]
SplitSeedOpt = Annotated[int, typer.Option(min=0, help="seed of the train/held-out split (a "
                                                       "run's split_seed)")]
TestFractionOpt = Annotated[float, typer.Option(min=0.05, max=0.95, help="held-out fraction")]
StudentOpt = Annotated[str, typer.Option(help="student spec of the benchmark's space")]
BenchmarkOpt = Annotated[Path, typer.Option(help="benchmark folder: space and teacher")]
DataOpt = Annotated[Path | None, typer.Option(help="dataset folder (Fashion-MNIST IDX files)")]
TrainingBackendOpt = Annotated[str, typer.Option(
    help="where trainings run: processes (--workers local processes) or dask (a cluster at "
         "--scheduler, or a new LocalCluster)")]


def _evaluation(backend: str, workers: int, scheduler: str | None) -> dict[str, Any]:
    """The evaluation keys of a campaign config, checked as the config checks them."""
    from .config import load_config

    overrides = [f"backend={backend}", f"workers={workers}"]
    if scheduler:
        overrides.append(f"scheduler={scheduler}")
    c = load_config(None, overrides)
    return {"backend": c.backend, "workers": c.workers, "scheduler": c.scheduler}


def _version(value: bool) -> None:
    if value:
        from . import __version__

        _out.print(f"gp-proxy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version,
                                                is_eager=True, help="print the version")
                             ] = False) -> None:
    """Discover training-free proxies for distillation-aware NAS."""


@app.command("primitives")
def list_primitives(
    family: Annotated[str | None, typer.Option(help="only this family (transform, distance, "
                                                    "instinct, ...)")] = None,
) -> None:
    """List every primitive op with its typed signatures and properties."""
    families = {op.family for op in primitives.ops()}
    if family is not None and family not in families:
        raise GpProxyError(f"unknown family {family!r}; choose from {', '.join(sorted(families))}")
    table = Table(title="gp-proxy primitives", show_lines=False)
    for col in primitives.listing.HEADER:
        table.add_column(col)
    for row in primitives.listing.rows():
        if family is None or row[1] == family:
            table.add_row(*row)
    _out.print(table)


@app.command("formula")
def show_formula(
    text: Annotated[str, typer.Argument(help="a formula, e.g. 'kl_t4(softmax_c(k3))'")],
) -> None:
    """Parse and type-check a formula; print its canonical form, kind, complexity and LaTeX."""
    node = primitives.parse(text)
    canon = primitives.canonicalize(node)
    _out.print(f"formula     {node}")
    _out.print(f"canonical   {canon}")
    _out.print(f"kind        {primitives.infer_kind(node)}")
    _out.print(f"complexity  {primitives.complexity(canon)}  (size {canon.size}, "
               f"height {canon.height})")
    _out.print(f"latex       {primitives.to_latex(canon)}", markup=False, highlight=False)
    _out.print(f"sympy       {primitives.to_sympy(canon)}", markup=False, highlight=False)
    props = sorted({p for n in canon.walk() for p in primitives.get(n.name).properties()})
    _out.print(f"properties  {', '.join(props) or '-'}")


bench_app = typer.Typer(no_args_is_help=True, help="Build and summarise ground-truth benchmarks.")
app.add_typer(bench_app, name="bench")


@bench_app.command("build")
def bench_build(
    out: Annotated[Path, typer.Argument(help="benchmark folder (created, or resumed)")],
    data: Annotated[Path | None, typer.Option(help="folder with the dataset's files")] = None,
    workers: Annotated[int, typer.Option(min=1, help="trainings in parallel (one process each)")
                       ] = 2,
    space: Annotated[str | None, typer.Option(help="student search space")] = None,
    teacher: Annotated[str | None, typer.Option(help="teacher name (of --teacher-space)")] = None,
    teacher_space: Annotated[str | None, typer.Option(
        help="the teacher's family: a space whose teachers to use (default: the student "
             "space's)")] = None,
    dataset: Annotated[str | None, typer.Option(help="data recipe: dataset name")] = None,
    image_size: Annotated[int | None, typer.Option(min=1, help="images resized to this side")
                          ] = None,
    modes: Annotated[str | None, typer.Option(help="comma-separated: kd, ce")] = None,
    ce_from: Annotated[str | None, typer.Option(
        help="share this benchmark folder's CE runs (relative to OUT)")] = None,
    archs: Annotated[str | None, typer.Option(help="comma-separated specs (default: whole "
                                                   "space)")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="student epochs")] = None,
    teacher_epochs: Annotated[int | None, typer.Option(min=1, help="teacher epochs")] = None,
    max_runs: Annotated[int | None, typer.Option(min=1, help="stop after this many new trainings")
                        ] = None,
    backend: Annotated[str, typer.Option(
        help="where student trainings run: processes (--workers local processes) or dask (a "
             "cluster at --scheduler, or a new LocalCluster)")] = "processes",
    scheduler: SchedulerOpt = None,
) -> None:
    """Train the teacher and every student (KD and CE, 3 seeds); resumes where it stopped.

    A resumed folder keeps its config.json; options given must agree with it."""
    from dataclasses import replace

    from .bench.build import BenchConfig, build_benchmark, command_line, summarize
    from .bench.data import get_dataset

    saved = out / "config.json"
    cfg = BenchConfig.load(saved) if saved.is_file() else BenchConfig()
    given: dict[str, Any] = {"space": space, "teacher": teacher, "teacher_space": teacher_space,
             "dataset": dataset, "image_size": image_size, "ce_from": ce_from,
             "epochs": epochs, "teacher_epochs": teacher_epochs,
             "modes": None if modes is None else tuple(m for m in modes.split(",") if m),
             "archs": None if archs is None else tuple(a for a in archs.split(",") if a)}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    ds = get_dataset(cfg.dataset)
    if not (ds.channels and ds.classes) and not (cfg.channels and cfg.classes):
        channels, classes = ds.describe(data, cfg.image_size)  # read from the user's data
        cfg = replace(cfg, channels=channels, classes=classes)
    cfg.check()  # a bad space, teacher or architecture is reported before the dataset
    train = ds.load(data, "train", cfg.image_size)
    test = ds.load(data, "test", cfg.image_size)
    counts = build_benchmark(out, cfg, train, test, workers=workers, max_runs=max_runs,
                             backend=backend, scheduler=scheduler)
    _out.print(f"runs: {counts['done_before']} already done, {counts['new']} new, "
               f"{counts['remaining']} remaining")
    if counts["remaining"] == 0:
        noise = summarize(out, command_line())
        _out.print_json(data=noise)


@bench_app.command("import")
def bench_import(
    csv_file: Annotated[Path, typer.Argument(help="CSV: one row per architecture")],
    out: Annotated[Path, typer.Argument(help="benchmark folder to create")],
    space: Annotated[str, typer.Option(help="search space (a name or module:attr)")],
    teacher: Annotated[str, typer.Option(help="teacher name of --teacher-space")],
    teacher_space: Annotated[str, typer.Option(help="the teacher's family (default: --space)")
                             ] = "",
    teacher_weights: Annotated[Path | None, typer.Option(
        help="trained teacher weights (safetensors); default: a seeded random-init teacher "
             "(campaigns then use teacher_init=random)")] = None,
    dataset: Annotated[str, typer.Option(help="dataset of the probe batch")] = "fashion-mnist",
    data: Annotated[Path | None, typer.Option(help="folder or file of the dataset")] = None,
    image_size: Annotated[int, typer.Option(min=1, help="images resized to this side")] = 14,
    arch_column: Annotated[str, typer.Option(help="column of architecture specs")] = "arch",
    columns: Annotated[str, typer.Option(help="comma-separated accuracy columns to keep "
                                              "(the first is the default target)")] = "",
    probe_size: Annotated[int, typer.Option(min=2, help="probe batch size")] = 64,
) -> None:
    """Make a benchmark folder from published ground truth (a CSV of architectures and
    accuracies) for any registered space: validated, with #params and FLOPs computed."""
    import csv
    import io

    import torch

    from .bench.build import BenchConfig
    from .bench.data import get_dataset
    from .bench.groundtruth import load_ground_truth
    from .core.files import atomic_write_json, atomic_write_text, load_tensors, save_tensors
    from .spaces import count_flops, count_params

    if (out / "ground_truth.csv").exists():
        raise GpProxyError(f"{out}: already holds a benchmark")
    ds = get_dataset(dataset)
    channels, classes = ds.describe(data, image_size)
    cfg = BenchConfig(space=space, teacher=teacher, teacher_space=teacher_space,
                      dataset=dataset, image_size=image_size, probe_size=probe_size,
                      channels=0 if ds.channels else channels,
                      classes=0 if ds.classes else classes,
                      teacher_weights="teacher.safetensors" if teacher_weights else "")
    cfg.check()
    sspace = cfg.student_space()
    wanted = tuple(c for c in columns.split(",") if c.strip())
    if not wanted:
        raise GpProxyError("--columns: name at least one accuracy column")
    truth = load_ground_truth(csv_file, sspace, wanted[0], arch_column, numeric=wanted[1:])
    model = cfg.build_teacher(seed=0)
    if teacher_weights is not None:
        try:
            model.load_state_dict(load_tensors(teacher_weights))
        except RuntimeError as exc:
            raise GpProxyError(f"{teacher_weights}: not weights of teacher {teacher!r} "
                               f"({str(exc).splitlines()[0]})") from None
    train = ds.load(data, "train", image_size)
    if probe_size > len(train):
        raise GpProxyError(f"--probe-size {probe_size}: the training split has {len(train)} "
                           "images")
    # a seeded sample of the training split (no ground-truth training here to keep apart)
    probe = torch.randperm(len(train), generator=torch.Generator().manual_seed(
        cfg.subset_seed))[:probe_size]
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "probe.safetensors", {"images": train.images[probe],
                                             "labels": train.labels[probe]})
    save_tensors(out / "teacher.safetensors", model.state_dict())
    atomic_write_json(out / "teacher.json", {"name": teacher, "test_acc": None,
                                             "weights_from": str(teacher_weights or
                                                                 "random init, seed 0")})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arch", "params", "flops", *wanted])
    for i, arch in enumerate(truth.archs):
        m = sspace.build(arch)
        w.writerow([arch, count_params(m), count_flops(m, sspace.input_shape),
                    *(repr(float(truth.columns[c][i])) for c in wanted)])
    atomic_write_text(out / "ground_truth.csv", buf.getvalue())
    atomic_write_json(out / "config.json", cfg.to_json())
    _out.print(f"{out}: {len(truth.archs)} architectures of {space}, columns "
               f"{', '.join(wanted)}; teacher {teacher} "
               f"({'weights from ' + str(teacher_weights) if teacher_weights else 'random init'})")


@bench_app.command("probe")
def bench_probe(
    folder: Annotated[Path, typer.Argument(help="benchmark folder")],
    seed: Annotated[int, typer.Option(min=1, help="seed of the extra probe batch (0 is the "
                                                  "benchmark's own)")] = 1,
    data: Annotated[Path | None, typer.Option(help="folder or file of the dataset")] = None,
) -> None:
    """Draw another probe batch like the benchmark's (same size, from training images the
    students never trained on) into probe-SEED.safetensors: features of several probe
    batches make a campaign's fitness robust to the batch (campaign key ``probes``)."""
    import torch

    from .bench.build import BenchConfig, _train_subset
    from .bench.data import get_dataset
    from .core.files import save_tensors

    cfg = BenchConfig.load(folder / "config.json")
    ds = get_dataset(cfg.dataset)
    train = ds.load(data, "train", cfg.image_size)
    _, rest = _train_subset(train, min(cfg.train_size, len(train)), cfg.subset_seed)
    # a seeded sample of the images outside the students' training subset (the benchmark's
    # own probe batch is the first probe_size of them)
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))
                [: cfg.probe_size]]
    out = folder / f"probe-{seed}.safetensors"
    save_tensors(out, {"images": train.images[pick], "labels": train.labels[pick]})
    _out.print(f"wrote {out}: {len(pick)} images the ground-truth students never trained on "
               f"(campaign: probes='[{out}]')", markup=False, highlight=False)


@bench_app.command("summarize")
def bench_summarize(
    out: Annotated[Path, typer.Argument(help="benchmark folder")],
    partial: Annotated[bool, typer.Option(
        "--partial", help="summarise an unfinished build too (the architectures with every "
                          "run; the manifest says how many of the space's): a preview, best "
                          "on a copy of the folder")] = False,
) -> None:
    """Write ground_truth.csv, noise.json and manifest.json from the finished runs."""
    from .bench.build import command_line, summarize

    _out.print_json(data=summarize(out, command_line(), partial=partial))


@bench_app.command("agreement")
def bench_agreement(
    a: Annotated[str, typer.Argument(help="FOLDER[:TARGET]: a benchmark and a target with "
                                          "per-seed runs (default kd_mean)")],
    b: Annotated[str, typer.Argument(help="the other condition, likewise")],
    bootstrap: Annotated[int, typer.Option(min=1, help="bootstrap resamples of the "
                                                       "architectures")] = 2000,
    out: Annotated[Path | None, typer.Option(help="also write the JSON here")] = None,
) -> None:
    """How differently two conditions rank the same students, against seed noise: KD against
    CE (``B:ce_mean B:kd_mean``), or KD under two teachers (``B1 B2``). Single-run Kendall
    within and across (the gap with a bootstrap interval), the interaction test, and the
    reliability of the per-architecture difference (for KD against CE: the KD gain)."""
    from .bench.agreement import compare_conditions
    from .core.files import atomic_write_json

    result = compare_conditions(a, b, bootstrap)
    if out is not None:
        atomic_write_json(out, result)
    _out.print_json(data=result)


def _progress_callback(total: int):  # type: ignore[no-untyped-def]
    from .core.progress import bar

    progress = bar(_out, "gen", info="best")
    task = progress.add_task("evolve", total=total, best="")

    def on_generation(campaign, line) -> None:  # type: ignore[no-untyped-def]
        b = line["best"]
        text = (f"best τ_train={b['fitness']:.3f} τ_test={b.get('test_tau') or float('nan'):.3f} "
                f"{b['formula'][:70]}")
        progress.update(task, completed=line["generation"], best=text)
        if not _out.is_terminal:
            _out.print(f"generation {line['generation']}: {text}", markup=False,
                       highlight=False)

    return progress, on_generation


def _noise_text(tau: float | None) -> str:
    if tau is None:
        return "n/a (not a usable ranking on noise data)"
    return f"{tau:+.3f}" + (" (ignores the data)" if tau >= 0.99 else "")


def _report_run(run_dir: Path) -> None:
    from .core.artifacts import BestProxyReport, load_artifact

    _report(load_artifact(run_dir / "best_proxy.json", BestProxyReport).model_dump())


def _report(best: dict[str, Any], label: str = "best formula") -> None:
    from .baselines.zerocost import SIZE_STATISTICS

    def f(x: float | None) -> str:
        return "  n/a" if x is None else f"{x:+.3f}"

    base = best["baselines"]
    arch = best["architectures"]
    _out.print(f"{label}: {best['formula']}", markup=False, highlight=False)
    table = Table(title=f"{best['benchmark']}: {arch['train']} train / {arch['test']} held-out "
                        f"architectures, target {best['target']}; scores oriented by their sign "
                        "on the training split")
    for col in ("proxy", "τ train", "τ held-out", "ρ held-out", "τ k-fold", "τ in params bins",
                "partial τ | params", "τ size residual"):
        table.add_column(col)
    labels = {**{k: s.label for k, s in SIZE_STATISTICS.items()},
              "descriptors": "descriptor regression"}
    rows = [(label, best)] + [(labels.get(k, k), v) for k, v in base.items()]
    for name, m in rows:
        train = None if m.get("train_tau") is None else m["sign"] * m["train_tau"]
        table.add_row(name, f(train), f(m.get("test_tau")), f(m.get("test_rho")),
                      f(m.get("kfold_tau")), f(m.get("test_tau_in_params_bins")),
                      f(m.get("test_partial_tau_params")), f(m.get("test_tau_size_residual")))
    _out.print(table)
    ceiling = best.get("noise_ceiling")
    if ceiling:
        _out.print(f"noise ceiling of {best['target']} on the held-out architectures "
                   f"({ceiling['seeds']} seeds): reliability {ceiling['reliability']:.3f}, "
                   f"Kendall ceiling {ceiling['kendall_ceiling']:.3f}")
    if best.get("tau_with_params") is not None:
        _out.print(f"Kendall τ between the {label} and #params (all architectures): "
                   f"{best['tau_with_params']:+.3f}")
    if "tau_real_vs_noise" in best:
        _out.print(f"Kendall τ between its rankings on the real and on a noise probe batch: "
                   f"{_noise_text(best['tau_real_vs_noise'])}")
    for part in best.get("parts", []):
        if part["status"] != "ok":
            _out.print(f"  part {part['formula']}: {part['status']} (it contributes nothing)",
                       markup=False, highlight=False)
        else:
            noise = (f", real vs noise {_noise_text(part['tau_real_vs_noise'])}"
                     if "tau_real_vs_noise" in part else "")
            _out.print(f"  part {part['formula']}: held-out τ {part['test_tau']:+.3f}, "
                       f"τ with #params {part['tau_with_params']:+.3f}{noise}", markup=False,
                       highlight=False)
    paired = best.get("paired_vs_params")
    where = (f"on the {arch['test']} held-out architectures (held-out τ; sign "
             f"{best['sign']:+d} chosen on the training split)")
    if not best["beats_params_on_held_out"]:
        _out.print(f"The {label} does NOT beat #params {where}.")
    elif paired is None:  # a run written before the paired interval was reported
        _out.print(f"The {label} is above #params {where}; run `gp-proxy compare` for the "
                   "paired interval that says whether beyond noise.")
    else:
        beyond = "beyond noise" if paired["lo"] > 0 else "but NOT beyond noise"
        _out.print(f"The {label} is above #params {where}, {beyond}: Δτ "
                   f"{paired['difference']:+.3f}, paired 95 % interval [{paired['lo']:+.3f}, "
                   f"{paired['hi']:+.3f}] ({paired['resamples']} resamples).")
    vs_desc = best.get("paired_vs_descriptors")
    if vs_desc is not None:
        _out.print(f"Against the descriptor regression: Δτ {vs_desc['difference']:+.3f}, "
                   f"paired 95 % interval [{vs_desc['lo']:+.3f}, {vs_desc['hi']:+.3f}].")


@app.command("config")
def config_cmd() -> None:
    """List every campaign key with its default and meaning (set them in a YAML file given
    to --config, or as key=value after the command)."""
    from .config import describe_config

    table = Table(title="campaign keys (gp-proxy evolve key=value ... or --config FILE)")
    for col in ("key", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for row in describe_config():
        table.add_row(*row)
    _out.print(table)


def _config_epilog() -> str:
    from .config import describe_config

    keys = "; ".join(f"{k} ({d}): {m}" for k, d, m in describe_config())
    return f"Campaign keys, given as key=value or in --config FILE: {keys}."


@app.command("evolve", epilog=_config_epilog())
def evolve(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<time>-s<seed>)")
                   ] = None,
    guess: Annotated[list[str] | None, typer.Option(help="seed formula (repeatable)")] = None,
) -> None:
    """Run an evolution campaign on a benchmark (default: the embedded Fashion-MNIST one)."""
    import time

    from .config import load_config
    from .evolve.campaign import Campaign

    extra = [f"guesses={json.dumps(guess)}"] if guess else []
    cfg = load_config(config, (overrides or []) + extra)
    run_dir = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}"
    if (run_dir / "checkpoint.json").exists():
        raise GpProxyError(f"{run_dir} already holds a campaign; use 'gp-proxy resume {run_dir}'")
    _out.print(f"run directory: {run_dir}")
    campaign = Campaign(cfg, run_dir)
    progress, on_generation = _progress_callback(cfg.generations)
    try:
        with progress:
            reason = campaign.run(on_generation)
    except KeyboardInterrupt:
        _err.print(f"interrupted: checkpoint of generation {campaign.generation} is in "
                   f"{run_dir}; continue with 'gp-proxy resume {run_dir}'")
        raise typer.Exit(130) from None
    _out.print(f"stopped on {reason} after {campaign.generation} generations, "
               f"{campaign.evaluations} candidates")
    _report_run(run_dir)


@app.command("resume")
def resume(
    run_dir: Annotated[Path, typer.Argument(help="run directory of a campaign")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value (e.g. generations=40)")
                         ] = None,
) -> None:
    """Continue a campaign exactly where its last checkpoint left it."""
    from .config import load_config
    from .core.artifacts import CampaignCheckpoint, load_artifact
    from .evolve.campaign import Campaign

    if not (run_dir / "checkpoint.json").exists():
        raise GpProxyError(f"{run_dir}: no checkpoint.json to resume from")
    # a malformed checkpoint is reported now, before the cache is loaded and the population
    # evaluated again
    load_artifact(run_dir / "checkpoint.json", CampaignCheckpoint)
    cfg = load_config(run_dir / "config.yaml", overrides or [])
    campaign = Campaign(cfg, run_dir)
    progress, on_generation = _progress_callback(cfg.generations)
    try:
        with progress:
            reason = campaign.run(on_generation, resume=True)
    except KeyboardInterrupt:
        _err.print(f"interrupted: checkpoint of generation {campaign.generation} kept")
        raise typer.Exit(130) from None
    import yaml

    from .core.files import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=True))
    _out.print(f"stopped on {reason} after {campaign.generation} generations")
    _report_run(run_dir)


@app.command("inspect")
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="run directory of a campaign")],
    top: Annotated[int, typer.Option(min=1, help="rows of the hall of fame to show")] = 10,
    pictures: Annotated[bool, typer.Option(help="write evolution.png, scatter.png, tree.png, "
                                                "pareto.png")
                        ] = True,
) -> None:
    """Show the hall of fame (with LaTeX) and write pictures of the run."""
    import csv

    import numpy as np

    from .bench.benchmark import load_benchmark
    from .config import load_config
    from .core.artifacts import BestProxyReport, SplitsRecord, load_artifact, read_history
    from .evaluate.backends import make_evaluator
    from .report import pictures as report

    for name in ("hall_of_fame.csv", "best_proxy.json", "history.jsonl", "config.yaml"):
        if not (run_dir / name).exists():
            raise GpProxyError(f"{run_dir}: missing {name}; is this a finished run directory?")
    with (run_dir / "hall_of_fame.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:top]
    table = Table(title=f"hall of fame of {run_dir}")
    for col in ("rank", "formula", "τ train", "τ held-out", "ρ held-out", "τ params-bins", "cx"):
        table.add_column(col, overflow="fold")  # formulas wrap, never cut
    for r in rows:
        table.add_row(r["rank"], r["formula"], r["fitness"][:6], r["test_tau"][:6],
                      r["test_rho"][:6], r["test_tau_in_params_bins"][:6], r["complexity"])
    _out.print(table)
    for r in rows[:3]:
        _out.print(f"{r['rank']}. {r['latex']}", markup=False, highlight=False)
    best = load_artifact(run_dir / "best_proxy.json", BestProxyReport).model_dump()
    _report(best)
    if not pictures:
        return
    history = read_history(run_dir)
    name = run_dir.resolve().name
    report.plot_evolution(history, run_dir / "evolution.png",
                          f"{name}: fitness and held-out τ by generation ({best['target']})")
    node = primitives.parse(best["formula"], None)
    report.plot_formula_tree(node, run_dir / "tree.png")
    front = []
    if (run_dir / "pareto.csv").exists():
        with (run_dir / "pareto.csv").open() as fh:
            front = list(csv.DictReader(fh))
    if front:
        report.plot_pareto(front, best["baselines"]["params"].get("test_tau"),
                           run_dir / "pareto.png")
    cfg = load_config(run_dir / "config.yaml")
    bench = load_benchmark(cfg.benchmark, cfg.target)
    cache = bench.cache(cfg.cache_dir, cfg.teacher_init, cfg.init_seed, cfg.act_samples,
                        lazy=True)
    # one formula: scored here, whatever backend the run used (its cluster may be gone)
    with make_evaluator(cache, cfg, backend="local", workers=1) as ev:
        res = ev.evaluate([best["formula"]])[0]
    if res.scores is not None:
        splits = load_artifact(run_dir / "splits.json", SplitsRecord).model_dump()
        base = best["baselines"]["params"]
        stats = {"proxy score (oriented)": f"held-out τ={best['test_tau']:.3f} "
                                           f"ρ={best['test_rho']:.3f}",
                 "#params": f"held-out τ={base['test_tau']:.3f} ρ={base['test_rho']:.3f}"}
        report.plot_scatter(best["sign"] * res.scores, bench.truth.y, bench.params,
                            np.asarray(splits["test"]), best["formula"], stats,
                            run_dir / "scatter.png", target=f"{best['target']} (%)")
    _out.print(f"pictures: {run_dir / 'evolution.png'}, {run_dir / 'scatter.png'}, "
               f"{run_dir / 'tree.png'}, {run_dir / 'pareto.png'}")


@app.command("export")
def export_run(
    run: Annotated[Path, typer.Argument(help="run directory (or its best_proxy.json)")],
    to: Annotated[str, typer.Option("--to", help="torch: a self-contained module scoring one "
                                                 "student, torch its only dependency; sympy: "
                                                 "the formula as mathematics with every "
                                                 "tensor op defined; latex: the same typeset")
                  ] = "torch",
    out: Annotated[Path | None, typer.Option("--out", help="write here instead of printing")
                   ] = None,
) -> None:
    """Export a run's best proxy as PyTorch code, sympy or LaTeX."""
    from .core.files import atomic_write_text
    from .plugin.export import export

    text = export(run, to)
    if out is None:
        _out.print(text, markup=False, highlight=False, end="")
        return
    atomic_write_text(out, text)
    _out.print(f"wrote {out}")


@app.command("score")
def score(
    formula: Annotated[str, typer.Argument(
        help="formula to evaluate, or a reported Auto-DAS proxy name (see `compare --help`)")],
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    target: Annotated[str, typer.Option(help="ground-truth column")] = "kd_mean",
    cache_dir: Annotated[Path, typer.Option(help="feature cache folder")
                         ] = Path(".gp-proxy-cache"),
    teacher_init: Annotated[str, typer.Option(help="trained or random")] = "trained",
    seed: Annotated[int, typer.Option(min=0, help="seed of stochastic ops")] = 0,
    split_seed: SplitSeedOpt = 0,
    test_fraction: TestFractionOpt = 0.3,
    backend: BackendOpt = "local",
    workers: WorkersOpt = 1,
    scheduler: SchedulerOpt = None,
) -> None:
    """Evaluate one formula on a benchmark, next to the #params and FLOPs baselines."""
    from .baselines.metrics import baselines, paired_verdicts, record_context
    from .baselines.reported import REPORTED
    from .bench.benchmark import load_benchmark
    from .core.rank import kendall_tau
    from .evaluate.backends import make_evaluator
    from .evaluate.fitness import assess, make_splits

    if formula in REPORTED:
        formula = REPORTED[formula].formula
    if teacher_init not in ("trained", "random"):
        raise GpProxyError(f"--teacher-init {teacher_init!r}: choose trained or random")
    bench = load_benchmark(benchmark, target)
    # a typo is reported at once, before the feature cache is built (minutes on a new machine)
    primitives.check(formula, bench.search_space().build(bench.truth.archs[0]).feature_kinds)
    cache = bench.cache(str(cache_dir), teacher_init, lazy=True)
    with make_evaluator(cache, None, seed=seed, **_evaluation(backend, workers, scheduler)
                        ) as ev:
        res = ev.evaluate([formula])[0]
    if not res.ok or res.scores is None:
        raise GpProxyError(f"formula {formula!r}: {res.status}: {res.reason}")
    splits = make_splits(len(bench.truth.y), test_fraction, seed=split_seed)
    found = assess(res.scores, bench.truth.y, bench.params, splits)
    context = record_context(bench, splits, target, baselines(bench, splits))
    best = {**found.to_json(), "formula": formula, **context,
            "beats_params_on_held_out": found.test_tau > context["baselines"]["params"][
                "test_tau"],
            "tau_with_params": kendall_tau(found.sign * res.scores, bench.params),
            **paired_verdicts(res.scores, bench, splits)}
    _report(best, "formula")


@app.command("compare")
def compare_cmd(
    proxies: Annotated[list[str] | None, typer.Argument(
        help="baseline names (params, flops, grad_norm, snip, grasp, fisher, synflow, jacov, "
             "nwot, zen, plain, l2_norm, diswot, a ground-truth column, or a reported Auto-DAS "
             "proxy: autodas-resnet, autodas-resnet-interaction, autodas-resnet-instinct, "
             "autodas-nb201-instinct, autodas-vit-instinct), formulas, or run directories "
             "(default: every baseline and reported proxy)")] = None,
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    target: Annotated[str, typer.Option(help="ground-truth column")] = "kd_mean",
    cache_dir: Annotated[Path, typer.Option(help="feature cache folder")
                         ] = Path(".gp-proxy-cache"),
    bootstrap: Annotated[int, typer.Option(min=1, help="bootstrap resamples of the held-out set")
                         ] = 1000,
    out: Annotated[Path | None, typer.Option(help="write CSV and a bar chart here (a folder)")
                   ] = None,
    noise_check: Annotated[bool, typer.Option(
        "--noise-check", help="also score every proxy with a noise probe batch and report "
                              "Kendall τ between the two rankings (1 = ignores the data)")
                           ] = False,
    split_seed: SplitSeedOpt = 0,
    test_fraction: TestFractionOpt = 0.3,
    orient: Annotated[Literal["train", "fixed"], typer.Option(
        help="train: every proxy and #params oriented by its τ on this benchmark's training "
             "architectures; fixed: as written, nothing learnt here (a run keeps the sign it "
             "was evolved with, other proxies and #params count higher as better): the test "
             "of a proxy carried to a benchmark it never saw")] = "train",
    backend: BackendOpt = "local",
    workers: WorkersOpt = 1,
    scheduler: SchedulerOpt = None,
) -> None:
    """One table of proxies on the same train/held-out split, next to #params and FLOPs."""
    import csv
    import io

    from .baselines.compare import compare, rows_to_json
    from .baselines.reported import REPORTED
    from .baselines.zerocost import MEASURES, SIZE_STATISTICS
    from .bench.benchmark import load_benchmark
    from .core.files import atomic_write_text
    from .evaluate.fitness import make_splits
    from .report.pictures import plot_comparison

    bench = load_benchmark(benchmark, target)
    cache = bench.cache(str(cache_dir))
    items = list(proxies or [*SIZE_STATISTICS, *MEASURES, *REPORTED])
    for size in reversed(SIZE_STATISTICS):
        if size not in items:
            items.insert(0, size)
    if bench.descriptors() is not None and "descriptors" not in items:
        items.insert(2, "descriptors")
    splits = make_splits(len(bench.truth.y), test_fraction, seed=split_seed)
    rows = compare(items, bench, cache, str(cache_dir), splits, bootstrap,
                   noise_check=noise_check, evaluation=_evaluation(backend, workers, scheduler),
                   orient=orient)
    how = "sign chosen on train" if orient == "train" else "signs fixed as written"
    table = Table(title=f"{benchmark} ({len(splits.train)} train / {len(splits.test)} held-out "
                        f"architectures, target {target}; {how})")
    for col in ("proxy", "τ train", "τ held-out [95% CI]", "Δτ vs #params [paired 95% CI]",
                "Δτ vs descriptors [paired 95% CI]", "ρ held-out", "r held-out",
                "P@10% held-out", "τ params-bins held-out", "partial τ | params held-out [95% CI]",
                "τ size residual held-out", "τ with #params",
                *(["τ real vs noise data"] if noise_check else [])):
        table.add_column(col, overflow="fold")

    def f(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{x:+.3f}"

    for r in rows:
        m = r.metrics

        def interval(key: str, m: dict[str, float] = m) -> str:
            return f"{f(m.get(key))} [{f(m.get(key + '_lo'))}, {f(m.get(key + '_hi'))}]"

        table.add_row(r.name, f(m.get("train_tau")),
                      f"{f(m.get('test_tau'))} [{f(m.get('test_tau_lo'))}, "
                      f"{f(m.get('test_tau_hi'))}]",
                      interval("test_tau_minus_params"), interval("test_tau_minus_descriptors"),
                      f(m.get("test_rho")), f(m.get("test_pearson")), f(m.get("test_p_at_10")),
                      f(m.get("test_tau_params_bins")), interval("test_partial_tau_params"),
                      f(m.get("test_tau_size_residual")), f(m.get("tau_with_params")),
                      *([f(m.get("tau_real_vs_noise"))] if noise_check else []))
    _out.print(table)
    ceiling = bench.noise_ceiling(splits.test)
    if ceiling:
        _out.print(f"noise ceiling of {target} on the held-out architectures "
                   f"({ceiling['seeds']} seeds): reliability {ceiling['reliability']:.3f}, "
                   f"Kendall ceiling {ceiling['kendall_ceiling']:.3f}")
    for r in rows:
        if r.note:
            _out.print(f"{r.name}: not evaluated: {r.note}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        data = rows_to_json(rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=sorted({k for d in data for k in d}),
                           lineterminator="\n")
        w.writeheader()
        w.writerows(data)
        atomic_write_text(out / "compare.csv", buf.getvalue())
        plot_comparison(rows, out / "compare.png", f"{benchmark.name}: held-out τ ({target}, "
                                        f"{len(splits.test)} architectures)")
        _out.print(f"wrote {out / 'compare.csv'} and {out / 'compare.png'}")


@app.command("search")
def search_cmd(
    proxy: Annotated[str, typer.Option(help="formula, run directory, or baseline (params, flops, "
                                            "diswot, a zero-cost name)")],
    benchmark: Annotated[Path, typer.Option(help="benchmark folder: space, teacher, probe")
                         ] = Path("benchmarks/fmnist"),
    strategy: Annotated[str, typer.Option(help="evolution, random or exhaustive")] = "evolution",
    iterations: Annotated[int, typer.Option(min=1, help="children (evolution) or samples (random)")
                          ] = 200,
    population: Annotated[int, typer.Option(min=1, help="evolution population")] = 20,
    sample: Annotated[int, typer.Option(min=1, help="evolution tournament size")] = 5,
    max_params: Annotated[int | None, typer.Option(min=1, help="budget: at most this many params")
                          ] = None,
    max_flops: Annotated[int | None, typer.Option(min=1, help="budget: at most this many MACs")
                         ] = None,
    seed: Annotated[int, typer.Option(min=0, help="search seed")] = 0,
    top_k: Annotated[int, typer.Option(min=1, help="how many students to keep")] = 5,
    out: Annotated[Path | None, typer.Option(help="write the result as JSON")] = None,
    backend: Annotated[str, typer.Option(
        help="where large batches of candidates (exhaustive search, the first population) "
             "are scored: local, processes (--workers) or dask (--scheduler)")] = "local",
    workers: WorkersOpt = 1,
    scheduler: SchedulerOpt = None,
) -> None:
    """Search students without training, with a proxy as fitness, under a budget."""
    import time

    from rich.progress import Progress

    from .baselines.zerocost import MEASURES, SIZE_STATISTICS, get_measure
    from .bench.benchmark import load_benchmark
    from .core.files import atomic_write_json
    from .evaluate.backends import fanned_out
    from .plugin.proxy import load_proxy
    from .search.students import STRATEGIES, baseline_scorer, formula_scorer, search

    bench = load_benchmark(benchmark)
    space = bench.search_space()
    teacher = bench.trained_teacher()
    x, y = bench.probe()
    if proxy in SIZE_STATISTICS or proxy in MEASURES:
        # a measure comparing with a teacher gets a random-init one, as in DisWOT
        scorer = baseline_scorer(proxy, space, bench.random_teacher()
                                 if proxy in MEASURES and get_measure(proxy).needs_teacher
                                 else teacher, x, y)
        label = proxy
    else:
        p = load_proxy(proxy)
        scorer = formula_scorer(p, space, teacher, x, y, seed=seed)
        label = str(p.node)
    t0 = time.perf_counter()
    total = STRATEGIES.get(strategy).steps(iterations)
    with Progress(console=_out) as progress, \
            fanned_out(scorer, backend, workers, scheduler) as batch_scorer:
        task = progress.add_task(f"search ({strategy})", total=total)
        top = search(space, batch_scorer, strategy, iterations, population, sample, max_params,
                     max_flops, seed, top_k,
                     on_step=lambda i, c: progress.update(task, completed=i))
        progress.update(task, completed=total)
    seconds = time.perf_counter() - t0
    budget = ", ".join(f"{k} <= {v:,}" for k, v in (("params", max_params), ("MACs", max_flops))
                       if v is not None) or "no budget"
    table = Table(title=f"top {len(top)} students by {label} ({budget})")
    for col in ("rank", "student", "proxy score", "#params", "MACs"):
        table.add_column(col)
    for i, c in enumerate(top, 1):
        table.add_row(str(i), c.spec, f"{c.score:+.5g}", f"{c.params:,}", f"{c.flops:,}")
    _out.print(table)
    _out.print(f"{seconds:.1f} s")
    if out is not None:
        atomic_write_json(out, {"proxy": label, "strategy": strategy, "seed": seed,
                                "max_params": max_params, "max_flops": max_flops,
                                "seconds": seconds, "benchmark": str(benchmark),
                                "top": [c.__dict__ for c in top]})


@app.command("distill")
def distill_cmd(
    student: StudentOpt,
    out: Annotated[Path, typer.Option(help="run directory (resumes if it holds a checkpoint)")],
    benchmark: BenchmarkOpt = Path("benchmarks/fmnist"),
    data: DataOpt = None,
    losses: Annotated[str, typer.Option(help="name=weight,... from kd, fitnet, at, sp, rkd, pkt, "
                                             "ickd, dkd, formula")] = "kd=0.9",
    formula: Annotated[str | None, typer.Option(help="formula (or run dir) for the 'formula' "
                                                     "loss")] = None,
    distiller: Annotated[str | None, typer.Option(
        help="a searched distiller (its string, or a distiller-search directory), used as "
             "the 'distiller' loss (added with weight 1 unless --losses names it)")] = None,
    process: Annotated[Path | None, typer.Option(
        help="a DistPro process.json (or its search directory), used as the 'distpro' loss "
             "(added with weight 1 unless --losses names it)")] = None,
    process_mode: Annotated[str, typer.Option(help="learned (the process interpolated to "
                                                   "this run), final (α_T held) or equal")
                            ] = "learned",
    ce_weight: Annotated[float, typer.Option(help="weight of cross-entropy")] = 0.1,
    epochs: Annotated[int, typer.Option(min=1, help="epochs")] = 10,
    train_size: Annotated[int, typer.Option(min=1, help="training images (the benchmark's subset)")
                          ] = 5000,
    seed: Annotated[int, typer.Option(min=0, help="seed of initialisation and data order")] = 0,
) -> None:
    """Distil a student from the benchmark's teacher; checkpoints every epoch and resumes."""
    from .bench.benchmark import load_benchmark
    from .bench.data import Split
    from .distill.losses import LOSSES
    from .distill.runner import DistillConfig, distill
    from .plugin.proxy import read_best

    weights: dict[str, float] = {}
    for item in filter(None, losses.split(",")):
        name, sep, w = item.partition("=")
        try:
            weights[name.strip()] = float(w) if sep else 1.0
        except ValueError:
            raise GpProxyError(f"--losses: {item!r} is not name=weight") from None
    for name in weights:
        try:
            LOSSES.get(name)
        except GpProxyError as exc:
            raise GpProxyError(f"--losses: {exc}") from None
    if formula is not None and Path(formula).exists():
        formula = read_best(formula)[0]
    if "formula" in weights and not formula:
        raise GpProxyError("--losses: the 'formula' loss needs --formula")
    if distiller is not None:
        from .distill.distiller import Distiller

        if Path(distiller).is_dir():
            best = Path(distiller) / "best.json"
            if not best.is_file():
                raise GpProxyError(f"--distiller {distiller}: no best.json (not a finished "
                                   "distiller search)")
            distiller = str(json.loads(best.read_text())["best"])
        distiller = str(Distiller.parse(distiller))
        weights.setdefault("distiller", 1.0)
    if "distiller" in weights and not distiller:
        raise GpProxyError("--losses: the 'distiller' loss needs --distiller")
    process_file: str | None = None
    if process is not None:
        from .distill.distpro import MODES, Process

        path = process / "process.json" if process.is_dir() else process
        Process.load(path)  # a bad file is one line now, not after the data loads
        if process_mode not in MODES:
            raise GpProxyError(f"--process-mode {process_mode}: choose one of {', '.join(MODES)}")
        process_file = str(path)
        weights.setdefault("distpro", 1.0)
    if "distpro" in weights and not process_file:
        raise GpProxyError("--losses: the 'distpro' loss needs --process")
    bench = load_benchmark(benchmark)
    space = bench.search_space()
    student = space.validate(student)  # arguments first, then the dataset
    teacher = bench.trained_teacher()
    train, test = bench.load_data(data)
    if train_size < len(train):
        train = Split(train.images[:train_size], train.labels[:train_size])
    cfg = DistillConfig(epochs=epochs, ce_weight=ce_weight, losses=weights, formula=formula,
                        seed=seed, distiller=distiller, process=process_file,
                        process_mode=process_mode)
    model = space.build(student, seed=seed)
    metrics = distill(model, teacher, train, test, cfg, out,
                      on_epoch=lambda e, loss: _out.print(f"epoch {e}/{epochs}: loss {loss:.4f}",
                                                          end=""),
                      on_accuracy=lambda e, acc: _out.print(f", test accuracy {100 * acc:.2f} %"))
    _out.print(f"{student}: test accuracy {100 * metrics['test_acc']:.2f} % "
               f"({metrics['train_seconds']:.0f} s); run directory {out}")


@app.command("distiller-search")
def distiller_search(
    student: StudentOpt,
    out: Annotated[Path, typer.Option(help="search directory (resumes what it holds)")],
    benchmark: BenchmarkOpt = Path("benchmarks/fmnist"),
    data: DataOpt = None,
    algorithm: Annotated[str, typer.Option(help="mcts, random or gp (a DEAP GA)")] = "mcts",
    budget: Annotated[int, typer.Option(min=1, help="proxy trainings")] = 32,
    epochs: Annotated[int, typer.Option(min=1, help="epochs of a proxy training")] = 3,
    train_size: Annotated[int, typer.Option(min=1, help="images a proxy training uses")] = 3000,
    val_size: Annotated[int, typer.Option(min=1, help="images of the rest of the training "
                                                      "subset it is scored on")] = 1000,
    exploration: Annotated[float, typer.Option(min=0.0, help="the UCT constant c")] = 0.7,
    batch: Annotated[int, typer.Option(min=1, help="proxy trainings per round")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="processes for a round's trainings")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="seed of the search and the trainings")] = 0,
    backend: TrainingBackendOpt = "processes",
    scheduler: SchedulerOpt = None,
) -> None:
    """Search the distiller for one student (Auto-KD): MCTS, random search or a GA, every
    candidate scored by a short distillation on a validation split of the training data."""
    from .bench.benchmark import load_benchmark
    from .distill.autokd import SearchConfig, run_search

    bench = load_benchmark(benchmark)
    student = bench.search_space().validate(student)
    cfg = SearchConfig(algorithm=algorithm, budget=budget, epochs=epochs, train_size=train_size,
                       val_size=val_size, exploration=exploration, batch=batch, seed=seed)
    from .core.progress import progress

    with progress(f"{algorithm} distiller search", budget) as advance:
        seen = [0]

        def report(n: int, total: int, best: str) -> None:
            advance(n - seen[0], f"best {best}")
            seen[0] = n

        record = run_search(str(benchmark), student, cfg, out,
                            data=str(data) if data is not None else None, workers=workers,
                            progress=report, backend=backend, scheduler=scheduler)
    _out.print(f"best distiller {record['best']}: validation accuracy "
               f"{100 * record['reward']:.2f} % after {record['evaluated']} proxy trainings "
               f"({record['proxy_seconds']:.0f} s); {out}/best.json", markup=False,
               highlight=False)


@app.command("distpro-search")
def distpro_search(
    student: StudentOpt,
    out: Annotated[Path, typer.Option(help="search directory (resumes what it holds)")],
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    data: DataOpt = None,
    epochs: Annotated[int, typer.Option(min=1, help="search epochs (T_search)")] = 4,
    distance: Annotated[str, typer.Option(help="l2, l1 or hcl (ReviewKD)")] = "hcl",
    alpha_lr: Annotated[float, typer.Option(help="Adam learning rate of α̃")] = 0.05,
    train_size: Annotated[int, typer.Option(min=2, help="training images (the benchmark's "
                                                        "subset; 20% become the validation "
                                                        "split)")] = 5000,
    seed: Annotated[int, typer.Option(min=0, help="seed")] = 0,
) -> None:
    """Learn a DistPro distillation process (the search phase) and plot it."""
    from .bench.benchmark import load_benchmark
    from .bench.train import Schedule
    from .core.progress import progress
    from .distill.distpro import SearchSettings, search_process
    from .report import pictures as report

    bench = load_benchmark(benchmark)
    space = bench.search_space()
    student = space.validate(student)
    teacher = bench.trained_teacher()
    train, _ = bench.load_data(data)
    x, y = train.images[:train_size], train.labels[:train_size]
    import torch

    with torch.no_grad():
        feats = [teacher.features(x[i:i + 500]) for i in range(0, len(x), 500)]
    t_feats = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
    settings = SearchSettings(epochs=epochs, distance=distance, alpha_lr=alpha_lr, seed=seed)
    with progress("DistPro search", epochs) as advance:
        proc = search_process(space.build(student, seed=seed), t_feats, x, y, Schedule(),
                              settings, out,
                              on_epoch=lambda e, loss: advance(1, f"loss {loss:.3f}"))
    report.plot_process(proc.pathways, proc.alpha, proc.raw, out / "process.png",
                        int(proc.settings["steps_per_epoch"]),
                        f"DistPro process: {student} from the {bench.teacher} teacher")
    final = proc.alpha[-1]
    top = sorted(range(len(final)), key=lambda i: -final[i])[:3]
    strongest = ", ".join(f"{proc.pathways[i]} {final[i]:.3f}" for i in top)
    _out.print(f"process of {proc.steps} steps ({proc.settings['search_seconds']:.0f} s): "
               f"strongest at the end {strongest}; {out}/process.json, {out}/process.png",
               markup=False, highlight=False)


@app.command("distiller-compare")
def distiller_compare(
    out: Annotated[Path, typer.Option(help="results directory (resumes what it holds)")],
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    students: Annotated[str, typer.Option(help="comma-separated student specs")
                        ] = "w8-d111-k3,w12-d212-k5,w16-d111-k3",
    data: DataOpt = None,
    budget: Annotated[int, typer.Option(min=1, help="proxy trainings per search")] = 24,
    top: Annotated[int, typer.Option(min=1, help="distillers of each search trained fully")] = 2,
    seeds: Annotated[str, typer.Option(help="seeds of the full trainings")] = "0,1,2",
    epochs: Annotated[int, typer.Option(min=1, help="epochs of a full training")] = 10,
    proxy_epochs: Annotated[int, typer.Option(min=1, help="epochs of a proxy training")] = 3,
    workers: Annotated[int, typer.Option(min=1, help="processes")] = 2,
    backend: TrainingBackendOpt = "processes",
    scheduler: SchedulerOpt = None,
) -> None:
    """Searched distillers (MCTS, random, GA) against KD, FitNet, AT, SP, RKD, PKT, ICKD, DKD
    and CE at the full recipe over seeds; writes report.json and report.md."""
    from .bench.benchmark import load_benchmark
    from .core.progress import progress
    from .distill.autokd import SearchConfig
    from .distill.kdcompare import CompareConfig, compare_distillers

    space = load_benchmark(benchmark).search_space()
    specs = tuple(space.validate(x.strip()) for x in students.split(",") if x.strip())
    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise GpProxyError(f"--seeds {seeds!r}: not comma-separated integers") from None
    cfg = CompareConfig(benchmark=str(benchmark), students=specs,
                        search=SearchConfig(budget=budget, epochs=proxy_epochs), top=top,
                        seeds=seed_list, epochs=epochs, workers=workers,
                        backend=backend, scheduler=scheduler,
                        data=str(data) if data is not None else None)
    from contextlib import ExitStack

    bars: dict[str, list[Any]] = {}  # label -> [advance, units reported]
    with ExitStack() as stack:
        def report(label: str, n: int, total: int) -> None:
            if label not in bars:
                bars[label] = [stack.enter_context(progress(label, total)), 0]
            bars[label][0](n - bars[label][1])
            bars[label][1] = n

        result = compare_distillers(cfg, out, progress=report)
    for student, r in result["students"].items():
        _out.print(f"{student}: best searched {r['best_searched']} "
                   f"{r['rows'][r['best_searched']]['mean']:.2f} %, best hand-designed "
                   f"{r['best_hand_designed']} {r['rows'][r['best_hand_designed']]['mean']:.2f} % "
                   f"(p {r['welch_p']:.2f}); proxy vs full Spearman "
                   f"{r['proxy_vs_full']['spearman']:.2f}", markup=False, highlight=False)
    _out.print(f"wrote {out}/report.md")


@app.command("distpro-compare")
def distpro_compare(
    out: Annotated[Path, typer.Option(help="results directory (resumes what it holds)")],
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    students: Annotated[str, typer.Option(help="comma-separated student specs")
                        ] = "w8-d111-k3,w12-d212-k5,w16-d111-k3",
    data: DataOpt = None,
    search_epochs: Annotated[int, typer.Option(min=1, help="epochs of the search phase")] = 3,
    seeds: Annotated[str, typer.Option(help="seeds of the trainings")] = "0,1,2",
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the full recipe")] = 10,
    short_epochs: Annotated[int, typer.Option(min=1, help="epochs of the shortened recipe")
                            ] = 5,
    autokd: Annotated[Path | None, typer.Option(help="an Auto-KD comparison folder: its best "
                                                     "distiller per student joins")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes")] = 2,
    backend: TrainingBackendOpt = "processes",
    scheduler: SchedulerOpt = None,
) -> None:
    """DistPro against CE and KD: equal weights, α_T held, the learned process, at the full
    and a shortened recipe over seeds; writes report.json, report.md and process pictures."""
    from .bench.benchmark import load_benchmark
    from .distill.kdcompare import DistProCompareConfig, compare_distpro

    space = load_benchmark(benchmark).search_space()
    specs = tuple(space.validate(x.strip()) for x in students.split(",") if x.strip())
    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise GpProxyError(f"--seeds {seeds!r}: not comma-separated integers") from None
    if autokd is not None and not (autokd / "report.json").is_file():
        raise GpProxyError(f"--autokd {autokd}: no report.json (run distiller-compare first)")
    cfg = DistProCompareConfig(benchmark=str(benchmark), students=specs,
                               search_epochs=search_epochs, seeds=seed_list, epochs=epochs,
                               short_epochs=short_epochs, workers=workers,
                               backend=backend, scheduler=scheduler,
                               data=str(data) if data is not None else None,
                               autokd=str(autokd) if autokd is not None else None)
    result = compare_distpro(cfg, out)
    for student, r in result["students"].items():
        learned = r["rows"][f"DistPro learned @{epochs}"]
        kd = r["rows"][f"KD @{epochs}"]
        _out.print(f"{student}: learned process {learned['mean']:.2f} ± {learned['std']:.2f} %, "
                   f"KD {kd['mean']:.2f} ± {kd['std']:.2f} %", markup=False, highlight=False)
    _out.print(f"wrote {out}/report.md")


@app.command("pipeline")
def pipeline_cmd(
    out: Annotated[Path, typer.Option(help="report folder")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value campaign overrides (when --proxy is not given)")] = None,
    proxy: Annotated[str | None, typer.Option(help="run directory or formula (default: evolve "
                                                   "one now)")] = None,
    benchmark: Annotated[Path, typer.Option(help="benchmark folder")] = Path("benchmarks/fmnist"),
    data: DataOpt = None,
    max_params: Annotated[int | None, typer.Option(min=1, help="budget: params")] = None,
    max_flops: Annotated[int | None, typer.Option(min=1, help="budget: MACs")] = None,
    strategy: Annotated[str, typer.Option(help="exhaustive, evolution or random")
                        ] = "exhaustive",
    iterations: Annotated[int, typer.Option(min=1, help="search iterations (evolution, random)")
                          ] = 200,
    seeds: Annotated[str, typer.Option(help="distillation seeds, comma-separated")] = "0,1,2",
    epochs: Annotated[int, typer.Option(min=1, help="distillation epochs")] = 10,
    held_out_only: Annotated[bool, typer.Option(
        "--held-out-only", help="choose every student among the proxy campaign's held-out "
                                "architectures (needs a run directory)")] = False,
) -> None:
    """Proxy → search under a budget → distil → report, against #params, DisWOT and random."""
    import time

    from .bench.benchmark import load_benchmark
    from .core.artifacts import SplitsRecord, load_artifact
    from .pipeline import PipelineConfig, load_proxy, run_pipeline
    from .search.students import STRATEGIES

    STRATEGIES.get(strategy)  # an unknown name is one line before any work
    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise GpProxyError(f"--seeds {seeds!r}: comma-separated integers") from None
    if not seed_list or min(seed_list) < 0:
        raise GpProxyError(f"--seeds {seeds!r}: at least one seed, none negative")
    if proxy is not None and not Path(proxy).exists():
        load_proxy(proxy)  # a formula typo is reported now, not after the search
    bench = load_benchmark(benchmark)
    train, test = bench.load_data(data)  # a missing dataset is reported before the campaign
    t0 = time.perf_counter()
    if proxy is None:
        from .config import load_config
        from .evolve.campaign import Campaign

        cfg = load_config(None, [f"benchmark={benchmark}", *(overrides or [])])
        Campaign(cfg, out / "campaign").run()
        proxy = str(out / "campaign")
    p = load_proxy(proxy)
    proxy_seconds = time.perf_counter() - t0
    among = None
    if held_out_only:
        split_file = Path(proxy) / "splits.json"
        if not split_file.exists():
            raise GpProxyError(f"--held-out-only needs a campaign run directory with "
                               f"splits.json; {proxy} has none")
        test_idx = load_artifact(split_file, SplitsRecord).test
        if max(test_idx, default=-1) >= len(bench.truth.archs):
            raise GpProxyError(f"{split_file}: held-out indices beyond the {len(bench.truth.archs)}"
                               f" architectures of {benchmark}; was it made on this benchmark?")
        among = tuple(bench.truth.archs[i] for i in test_idx)
    pcfg = PipelineConfig(max_params, max_flops, strategy, iterations, seeds=seed_list,
                          epochs=epochs, among=among)
    run_pipeline(p, proxy_seconds, bench, train, test, pcfg, out)
    _out.print((out / "report.md").read_text(), markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning project errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="gp-proxy")  # usage errors exit through SystemExit
    except GpProxyError as exc:
        _err.print(f"gp-proxy: error: {exc}", markup=False, highlight=False)
        return 2
    except (MemoryError, RuntimeError) as exc:
        # torch's CPU allocator raises RuntimeError; anything else is a bug, with a traceback
        if isinstance(exc, RuntimeError) and "allocate memory" not in str(exc):
            raise
        first = next((ln.strip() for ln in str(exc).splitlines() if "allocate" in ln), "")
        _err.print(f"gp-proxy: error: out of memory ({first or type(exc).__name__}); a "
                   "checkpointed campaign resumes with `gp-proxy resume RUN_DIR`",
                   markup=False, highlight=False)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
