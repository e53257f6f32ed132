"""Campaign configuration: typed, validated once, from YAML plus ``key=value`` overrides.

YAML is read with ``yaml.safe_load`` (no code execution). Unknown keys are errors that name
the key and suggest the closest known one; bad values name the key and what was expected.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from primitives.errors import GpProxyError
from primitives.formula import MAX_DEPTH

from .io import read_text

__all__ = ["CampaignConfig", "ConfigError", "load_config", "run_config"]


class ConfigError(GpProxyError):
    """A configuration file or override that cannot be used."""


class CampaignConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = "benchmarks/fmnist"
    target: str = "kd_mean"
    grammar: Literal["both", "interaction", "instinct"] = "both"
    combiner: Literal["rank", "z"] = "rank"
    # steady-state, generational with elitism, or NSGA-II survival over (fitness, training
    # partial τ given #params): a front of formulas that rank well and beyond size
    scheme: Literal["steady", "generational", "nsga2"] = "steady"
    population: int = Field(50, ge=4)
    generations: int = Field(20, ge=0)
    max_evaluations: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    target_fitness: float | None = None
    # what selection maximises on the training architectures (gp_proxy.fitness.FITNESS_METRICS):
    # tau; or, so that size alone cannot win, tau_params_bins, partial_tau_params (given
    # #params) or tau_size_residual
    fitness: Literal["tau", "tau_params_bins", "partial_tau_params", "tau_size_residual"] = "tau"
    stagnation: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    init_min_height: int = Field(2, ge=1)
    init_max_height: int = Field(6, ge=1)
    max_height: int = Field(10, ge=2, le=MAX_DEPTH)
    max_size: int = Field(30, ge=2)
    crossover_prob: float = Field(0.5, ge=0, le=1)
    mutation_prob: float = Field(0.1, ge=0, le=1)
    parents_top: float = Field(0.2, gt=0, le=1)
    steady_batch: int = Field(10, ge=1)
    tournament: int = Field(3, ge=1)
    elite_start: float = Field(0.1, ge=0, le=1)
    elite_end: float = Field(0.3, ge=0, le=1)
    hof_size: int = Field(20, ge=1)
    archive_size: int = Field(200, ge=1)
    guesses: list[str] = Field(default_factory=list)
    # offer log #params as a student part, so that a combination can weigh a size prior
    # explicitly (rank_add_w025(log_params, F)) instead of evolving size statistics in disguise
    size_prior: bool = False
    # robust fitness: the training metric is also computed on the features of these extra
    # student init seeds, extra probe batches (safetensors files like the benchmark's
    # probe.safetensors) and extra benchmarks (evolved on jointly); fitness is the mean or
    # the worst case over all of them (oriented by the sign on the primary features), and the
    # spread is reported
    init_seeds: list[int] = Field(default_factory=list)
    probes: list[str] = Field(default_factory=list)
    benchmarks: list[str] = Field(default_factory=list)
    fitness_aggregate: Literal["mean", "worst"] = "mean"
    # benchmarks the best formula is reported on but never evolved on (leave-one-out)
    transfer: list[str] = Field(default_factory=list)
    # build only formulas defined on the feature kinds of these spaces too (a CNN space's
    # k1/k2 are maps, a ViT's token sequences: local_s1 or satt are undefined on the latter)
    valid_for: list[str] = Field(default_factory=list)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    folds: int = Field(5, ge=2)
    split_seed: int = Field(0, ge=0)
    teacher_init: Literal["trained", "random"] = "trained"
    init_seed: int = Field(0, ge=0)
    act_samples: int = Field(16, ge=1)
    chunk_size: int | None = Field(None, ge=1)  # None: chunks of about chunk_bytes
    chunk_bytes: int = Field(8 << 20, ge=1)
    # torch threads of a CPU evaluation (evaluator.EVAL_THREADS): fixed, because the count sets
    # the order in which parallel reductions add up (the last bits of scores, and so the path
    # a campaign takes)
    threads: int = Field(2, ge=1)
    # worker processes sharing the chunks of each CPU evaluation (scores: the same bits for
    # any number; on the 2-core development machine threads=1 workers=2 vs the default)
    workers: int = Field(1, ge=1)
    device: str = "auto"
    cache_dir: str = ".gp-proxy-cache"
    # score the best formula (and its parts) again on a noise probe batch: τ near 1 between
    # the two rankings means it ignores the data (a size or initial-weight statistic)
    noise_check: bool = True


def _coerce(value: str) -> Any:
    """An override's value: parsed as YAML scalar/list (``3``, ``0.5``, ``null``, ``[a, b]``)."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(CampaignConfig.model_fields), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
                ) -> CampaignConfig:
    """Read ``path`` (YAML; optional) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}  # each key's source, for errors: the file or the override
    if path is not None:
        try:
            text = read_text(path)
        except GpProxyError as exc:
            raise ConfigError(str(exc)) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: invalid YAML{line}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
        data.update(loaded)
        origin.update(dict.fromkeys(map(str, loaded), str(path)))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        data[key.strip()] = _coerce(value)
        origin[key.strip()] = f"override {item!r}"
    for key in data:
        if key not in CampaignConfig.model_fields:
            raise ConfigError(f"{origin[str(key)]}: unknown key {key!r}{_suggest(str(key))}")
    try:
        return CampaignConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = origin.get(str(err["loc"][0]) if err["loc"] else "", "config")
        raise ConfigError(f"{where}: {key}: {err['msg']} (got {err.get('input')!r})") from None


def run_config(path: str | os.PathLike[str]) -> CampaignConfig | None:
    """The campaign configuration of a run directory (or of the folder of its
    ``best_proxy.json``); None when there is no ``config.yaml`` beside it."""
    p = Path(path)
    file = (p if p.is_dir() else p.parent) / "config.yaml"
    return load_config(file) if file.exists() else None
