"""Schemas of the JSON artifacts the project writes and reads back, one typed model each.

The code that writes an artifact builds it through its model and the code that reads it
validates it through the same model, so a file with a wrong type, a missing key or a
non-finite number is one line naming the file and the field (never a ``KeyError`` or
``IndexError`` deep inside a resume). Each model carries a ``format`` version; files written
before a model had one read as version 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from primitives.errors import GpProxyError

from .files import atomic_write_json, read_json, read_text

__all__ = [
    "ArchiveEntry",
    "ArtifactError",
    "BenchRun",
    "BestProxyRecord",
    "BestProxyReport",
    "CalibrationRecord",
    "CampaignCheckpoint",
    "ScoreCacheRecord",
    "SplitsRecord",
    "TeacherRecord",
    "load_artifact",
    "read_history",
    "validate",
    "write_artifact",
]


class ArtifactError(GpProxyError):
    """An artifact file whose content does not match its schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


OptFloat = float | None  # a correlation that was undefined is stored as null


class ArchiveEntry(_Strict):
    """One evaluated formula of a campaign's archive (hall of fame, Pareto, checkpoint)."""

    formula: str = Field(min_length=1)
    status: str
    reason: str
    fitness: OptFloat
    complexity: NonNegativeInt
    size: NonNegativeInt
    generation: NonNegativeInt
    sign: Literal[-1, 1] | None = None
    train_tau: OptFloat = None
    test_tau: OptFloat = None
    test_rho: OptFloat = None
    kfold_tau: OptFloat = None
    test_tau_in_params_bins: OptFloat = None
    train_tau_in_params_bins: OptFloat = None
    test_partial_tau_params: OptFloat = None
    test_tau_size_residual: OptFloat = None
    fitness_spread: OptFloat = None
    train_partial_tau_params: OptFloat = None


class CampaignCheckpoint(_Strict):
    """``checkpoint.json``: everything a campaign needs to resume after its last generation."""

    format: Literal[1] = 1
    generation: NonNegativeInt
    evaluations: NonNegativeInt
    elapsed: FiniteFloat = Field(ge=0)
    stagnant: NonNegativeInt
    best_history: list[OptFloat]
    population: list[str] = Field(min_length=1)
    # Python's random.getstate(): (version, 625 words of Mersenne-Twister state, gauss_next)
    rng_state: tuple[int, list[int], float | None]
    archive: list[ArchiveEntry]


class BestProxyRecord(BaseModel):
    """``best_proxy.json``: the fields a reader of a run relies on (the rest is a report)."""

    model_config = ConfigDict(extra="allow")

    format: Literal[1] = 1
    formula: str = Field(min_length=1)
    sign: Literal[-1, 1] = 1  # a hand-written file may give just the formula
    seed: NonNegativeInt | None = None


class CalibrationRecord(_Strict):
    """``calibration.json``: the reference population a combined formula scores one model
    against (per normalised subtree, its finite values over the reference, sorted)."""

    format: Literal[1] = 1
    formula: str = Field(min_length=1)
    population: int = Field(ge=2)
    reference: dict[str, list[FiniteFloat]]


#: report keys renamed so that every record says what ``compare`` says (τ, not Kendall):
#: files written before carry the old names and are read with the new
LEGACY_KEYS = {"kendall_with_params": "tau_with_params",
               "kendall_real_vs_noise": "tau_real_vs_noise"}


def current_keys(record: Any) -> Any:
    """``record`` (nested dicts and lists) with :data:`LEGACY_KEYS` renamed."""
    if isinstance(record, dict):
        return {LEGACY_KEYS.get(k, k): current_keys(v) for k, v in record.items()}
    if isinstance(record, list):
        return [current_keys(v) for v in record]
    return record


class BestProxyReport(BestProxyRecord):
    """``best_proxy.json`` as ``inspect`` reads it: the record and the report fields."""

    @model_validator(mode="before")
    @classmethod
    def _current_keys(cls, data: Any) -> Any:
        return current_keys(data)

    baselines: dict[str, dict[str, Any]]
    architectures: dict[str, NonNegativeInt]
    benchmark: str
    target: str
    beats_params_on_held_out: bool


class SplitsRecord(_Strict):
    """``splits.json``: a campaign's training and held-out architecture indices."""

    train: list[NonNegativeInt]
    test: list[NonNegativeInt] = Field(min_length=1)
    folds: list[list[NonNegativeInt]] = Field(default_factory=list)


class TeacherRecord(BaseModel):
    """``teacher.json`` of a benchmark folder (accuracy null for an imported teacher)."""

    model_config = ConfigDict(extra="allow")

    name: str
    test_acc: FiniteFloat | None = Field(ge=0, le=1)


class ScoreCacheRecord(BaseModel):
    """A kept score vector of ``compare`` (a cache: a malformed one is recomputed)."""

    model_config = ConfigDict(extra="allow")

    archs: list[str]
    scores: list[float | None]


class BenchRun(_Strict):
    """``runs/ARCH__MODE__sSEED.json``: one finished ground-truth training."""

    arch: str = Field(min_length=1)
    mode: Literal["kd", "ce"]
    seed: NonNegativeInt
    test_acc: FiniteFloat = Field(ge=0, le=1)
    train_loss: FiniteFloat
    train_seconds: FiniteFloat = Field(ge=0)
    eval_seconds: FiniteFloat = Field(0.0, ge=0)


M = TypeVar("M")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(the whole file)"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return f"field {loc}: {err['msg']} (got {shown})"


def validate(data: Any, schema: type[M], where: str | os.PathLike[str]) -> M:
    """``data`` as ``schema`` (a model or a dataclass), or one error naming ``where`` and the
    first bad field."""
    try:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return schema.model_validate(data)
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as exc:
        raise ArtifactError(f"{where}: {_first_error(exc)}") from None


def load_artifact(path: str | os.PathLike[str], schema: type[M]) -> M:
    """Read and validate one JSON artifact."""
    return validate(read_json(path), schema, path)


def write_artifact(path: str | os.PathLike[str], record: BaseModel) -> None:
    """Write a validated record atomically (JSON, keys sorted)."""
    atomic_write_json(path, record.model_dump(mode="json"))


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The generations of ``history.jsonl``. The file is appended to, so a kill mid-write can
    leave a torn last line: it is skipped; a bad line anywhere else is an error naming it."""
    path = Path(run_dir) / "history.jsonl"
    lines = [ln for ln in read_text(path).splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("generation"), int):
                raise ValueError
        except ValueError:
            if i == len(lines):
                break  # a torn tail: the generation in flight at a kill
            raise GpProxyError(f"{path}:{i}: not a generation record") from None
        out.append(rec)
    return out
