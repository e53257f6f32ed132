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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from primitives.errors import GpProxyError
from primitives.formula import MAX_DEPTH

from .core.files import read_text

__all__ = ["CampaignConfig", "ConfigError", "describe_config", "load_config", "run_config"]


class ConfigError(GpProxyError):
    """A configuration file or override that cannot be used."""


def _f(default: Any, doc: str, **kw: Any) -> Any:
    """A config field with its one-line meaning (listed by ``gp-proxy config``)."""
    if isinstance(default, list):
        return Field(default_factory=list, description=doc, **kw)
    return Field(default, description=doc, **kw)


class CampaignConfig(BaseModel):
    """Every key of a campaign, with its default and meaning (``gp-proxy config`` lists them,
    generated from here, so the list cannot drift)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = _f("benchmarks/fmnist", "benchmark folder evolved on")
    target: str = _f("kd_mean", "ground-truth column ranked against (kd_gain: KD − CE)")
    grammar: Literal["both", "interaction", "instinct"] = _f(
        "both", "formula shape: a teacher-student part combined with a student part, or one")
    combiner: Literal["rank", "z"] = _f("rank", "how the two parts are combined")
    scheme: str = _f(
        "steady", "steady-state, generational with elitism, or NSGA-II survival over "
        "(fitness, training partial τ given #params); or a registered scheme / module:attr")
    population: int = _f(50, "individuals", ge=4)
    generations: int = _f(20, "generations to run", ge=0)
    max_evaluations: int | None = _f(None, "stop after this many candidates", ge=1)
    max_seconds: float | None = _f(None, "stop after this much evolution time", gt=0)
    target_fitness: float | None = _f(None, "stop once the best fitness reaches this")
    fitness: Literal["tau", "tau_params_bins", "partial_tau_params", "tau_size_residual"] = _f(
        "tau", "what selection maximises on the training architectures; the last three "
        "cannot be won by size alone")
    stagnation: int | None = _f(None, "stop after this many generations without progress",
                                ge=1)
    seed: int = _f(0, "seed of evolution and of stochastic ops", ge=0)
    init_min_height: int = _f(2, "smallest initial tree height", ge=1)
    init_max_height: int = _f(6, "largest initial tree height", ge=1)
    max_height: int = _f(10, "largest tree height", ge=2, le=MAX_DEPTH)
    max_size: int = _f(30, "largest tree size (nodes)", ge=2)
    crossover_prob: float = _f(0.5, "probability of crossover", ge=0, le=1)
    mutation_prob: float = _f(0.1, "probability of mutation", ge=0, le=1)
    parents_top: float = _f(0.2, "steady: parents drawn from this top fraction", gt=0, le=1)
    steady_batch: int = _f(10, "steady: offspring evaluated together", ge=1)
    tournament: int = _f(3, "tournament size", ge=1)
    elite_start: float = _f(0.1, "generational: elite fraction at the start", ge=0, le=1)
    elite_end: float = _f(0.3, "generational: elite fraction at the end", ge=0, le=1)
    hof_size: int = _f(20, "rows of the hall of fame", ge=1)
    archive_size: int = _f(200, "formulas kept for the hall of fame and Pareto front", ge=1)
    parsimony: float = _f(0.0, "selection fitness lost per unit of complexity (linear "
                                "parsimony pressure; reported fitness unchanged)", ge=0)
    guesses: list[str] = _f([], "formulas seeded into the initial population")
    size_prior: bool = _f(False, "offer log #params as a student part (a size prior a "
                                 "combination can weigh explicitly)")
    init_seeds: list[int] = _f([], "extra student init seeds the fitness is also computed on")
    probes: list[str] = _f([], "extra probe batches (files like probe.safetensors) the "
                               "fitness is also computed on")
    benchmarks: list[str] = _f([], "extra benchmarks evolved on jointly")
    fitness_aggregate: Literal["mean", "worst"] = _f(
        "mean", "fitness over the feature sets: their mean or worst case")
    transfer: list[str] = _f([], "benchmarks the best formula is reported on, never evolved on")
    valid_for: list[str] = _f([], "spaces whose feature kinds every formula must also be "
                                  "defined on (CNN maps and ViT token sequences)")
    defined_on_transfer: bool = _f(
        False, "build only formulas defined on the transfer benchmarks too (their feature "
               "kinds, teacher-student shape differences and map sizes: shapes only, never "
               "their accuracies)")
    test_fraction: float = _f(0.3, "held-out fraction of architectures", gt=0, lt=1)
    folds: int = _f(5, "folds of the k-fold τ", ge=2)
    split_seed: int = _f(0, "seed of the train/held-out split", ge=0)
    teacher_init: Literal["trained", "random"] = _f(
        "trained", "teacher weights: the benchmark's trained ones or a random init (DisWOT)")
    init_seed: int = _f(0, "student initialisation seed of the features", ge=0)
    act_samples: int = _f(16, "probe images whose activations are kept", ge=1)
    chunk_size: int | None = _f(None, "architectures per evaluation chunk (None: by "
                                      "chunk_bytes)", ge=1)
    chunk_bytes: int = _f(8 << 20, "bytes of features per evaluation chunk", ge=1)
    # fixed, because the count sets the order in which parallel reductions add up (the last
    # bits of scores, and so the path a campaign takes)
    threads: int = _f(2, "torch threads of a CPU evaluation (fixed: it sets the bits)", ge=1)
    backend: str = _f("local", "where evaluations run: local (this process), processes "
                               "(`workers` local processes) or dask (a cluster); same bits")
    workers: int = _f(1, "worker processes of the processes backend (dask: of a new "
                         "LocalCluster; 1 there: one per core)", ge=1)
    scheduler: str | None = _f(None, "dask: a running scheduler's address (tcp://host:8786); "
                                     "none: start a LocalCluster")
    held_bytes: int = _f(1 << 30, "features of a lazily read cache held in memory at once, "
                                  "over all workers", ge=1)
    device: str = _f("auto", "cpu, cuda or auto")
    cache_dir: str = _f(".gp-proxy-cache", "feature cache folder")
    noise_check: bool = _f(True, "score the best formula again on a noise probe batch: τ near "
                                 "1 means it ignores the data")

    @field_validator("defined_on_transfer")
    @classmethod
    def _has_transfer(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("transfer"):
            raise ValueError("asks formulas to be defined on the transfer benchmarks, but "
                             "transfer lists none")
        return value

    @field_validator("backend", "scheme")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        # imported here: the backends and the campaign import this module
        from .evaluate.backends import BACKENDS
        from .evolve.schemes import SCHEMES

        registry = {"backend": BACKENDS, "scheme": SCHEMES}[info.field_name or ""]
        try:
            registry.get(name)  # type: ignore[attr-defined]
        except GpProxyError as exc:
            raise ValueError(str(exc)) from None
        return name


def describe_config() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every campaign key, in declaration order."""
    rows = []
    for name, field in CampaignConfig.model_fields.items():
        default = [] if field.default_factory is not None else field.default
        rows.append((name, repr(default), field.description or ""))
    return rows


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
