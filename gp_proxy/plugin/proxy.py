"""The plug-in surface: score (teacher, student) pairs with a formula in anyone's NAS code.

>>> proxy = Proxy.from_string("sp_dist(k2)")            # or Proxy.load("runs/my-run")
>>> proxy.score(teacher, student, images)               # one float, higher = predicted better

Any ``nn.Module`` pair works: models with ``features(x)`` (every space here) give k1/k2/k3
directly; for other models say which modules produce them, e.g.
``Proxy.from_string(f, features={"k2": "layer4", "k1": "layer3"})`` (``k3`` defaults to the
model's output). Student-only inputs (``act``, ``grad``, ``weight``) come from the
convolutions and linears, with gradients of one cross-entropy backward on ``targets``.

Students run in train mode (batch statistics, as in the feature cache); the teacher runs in
the mode it is given, so call ``teacher.eval()`` for trained weights. Scores are oriented:
``sign`` (from ``best_proxy.json``, chosen on training architectures) is applied so that higher
always means a better predicted student. Formulas that combine parts by rank or z-score compare
architectures with each other, so they are scored over a population with
:meth:`Proxy.score_many`.

Scores are the same bits on any machine with the same instruction set: models run on one torch
thread (as the feature cache is built) and the formula on ``threads`` (default 2, as the
campaign's evaluator), whatever the caller's setting, which is restored afterwards.
``threads=None`` leaves the caller's setting everywhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import primitives
from primitives import Kind, Node, gather_inputs
from primitives.errors import GpProxyError
from primitives.reference import collect_student_layers

from ..config import run_config
from ..core.artifacts import BestProxyRecord, CalibrationRecord, load_artifact
from ..core.files import atomic_write_json
from ..evaluate.cache import torch_threads
from ..evaluate.evaluator import EVAL_THREADS
from ..spaces.base import FeatureAdapter

__all__ = ["Calibration", "NASLibPredictor", "Proxy", "load_proxy", "make_measure", "read_best"]


def read_best(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(formula, sign, seed) of a run directory or a ``best_proxy.json``. The seed of the
    stochastic ops is the campaign's: recorded in ``best_proxy.json``, else read from the run's
    ``config.yaml``, else 0."""
    p = Path(path)
    file = p / "best_proxy.json" if p.is_dir() else p
    if not file.exists():
        raise GpProxyError(f"{path}: no best_proxy.json")
    record = load_artifact(file, BestProxyRecord)
    seed = record.seed
    if seed is None:
        run = run_config(file)
        seed = run.seed if run is not None else 0
    return record.formula, record.sign, seed


def load_proxy(spec: str) -> Proxy:
    """A run directory or ``best_proxy.json`` if ``spec`` is a path, else a formula string."""
    path = Path(spec)
    return Proxy.load(path) if path.exists() else Proxy.from_string(spec)


class Calibration:
    """The reference population a rank/z-combined formula places single models against.

    For every subtree a combiner normalises (its parts, and inner combinations), the values it
    takes over the reference population, sorted. :meth:`place` evaluates the formula for new
    models with each normalisation taken against those stored values instead of the models at
    hand (the combiner's ``normaliser`` property says how), so a reference member scored alone
    gets exactly the score :meth:`Proxy.score_many` gives it over the whole reference, and any
    other model a score on the same scale. Stored as JSON (data, never code).
    """

    FORMAT = 1

    def __init__(self, formula: str, reference: dict[str, Tensor]) -> None:
        self.formula = formula
        self.reference = {k: torch.sort(v.double()).values for k, v in reference.items()}

    @property
    def size(self) -> int:
        return int(next(iter(self.reference.values())).numel()) if self.reference else 0

    @staticmethod
    def _vector(node: Node, parts: Mapping[str, Tensor]) -> Tensor:
        op = primitives.get(node.name)
        if op.cross_arch:
            return primitives.apply(node.name, *(Calibration._vector(a, parts)  # type: ignore[return-value]
                                                 for a in node.args))
        return parts[node.text]

    @classmethod
    def from_parts(cls, node: Node, parts: Mapping[str, Tensor]) -> Calibration:
        """From the raw part scores of the reference population (``Proxy.part_scores``)."""
        for text, v in parts.items():
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise GpProxyError(f"calibration: part {text} is NaN or infinite for {bad} "
                                   f"of {v.numel()} reference models")
        n = {int(v.numel()) for v in parts.values()}
        if len(n) != 1 or n.pop() < 2:
            raise GpProxyError("calibration needs at least 2 reference models")
        reference: dict[str, Tensor] = {}

        def walk(x: Node) -> None:
            if primitives.get(x.name).cross_arch:
                for a in x.args:
                    reference[a.text] = cls._vector(a, parts)
                    walk(a)

        walk(node)
        return cls(node.text, reference)

    def check(self, proxy: Proxy) -> None:
        if self.formula != proxy.node.text:
            raise GpProxyError(f"calibration of {self.formula} does not fit {proxy.node}")

    def place(self, node: Node, parts: Mapping[str, Tensor]) -> Tensor:
        """The formula's values for models whose raw part scores are ``parts``."""
        op = primitives.get(node.name)
        if not op.cross_arch:
            return parts[node.text]
        calibrated = primitives.instinct.NORMALISERS[op.normaliser][1]
        out: Tensor | None = None
        for sign, a in zip(op.part_signs, node.args, strict=True):
            v = calibrated(self.reference[a.text], self.place(a, parts))
            out = v if out is None else out + sign * v
        assert out is not None
        return out

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "formula": self.formula, "population": self.size,
                "reference": {k: v.tolist() for k, v in self.reference.items()}}

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        rec = load_artifact(path, CalibrationRecord)
        return cls(rec.formula, {k: torch.tensor(v, dtype=torch.float64)
                                 for k, v in rec.reference.items()})


class Proxy:
    def __init__(self, formula: str | Node, sign: int = 1, seed: int = 0,
                 features: Mapping[str, str] | None = None,
                 input_kinds: Mapping[str, Kind] | None = None,
                 threads: int | None = EVAL_THREADS, act_samples: int | None = 16,
                 calibration: Calibration | None = None) -> None:
        self.node = primitives.canonicalize(
            formula if isinstance(formula, Node) else primitives.parse(formula, input_kinds))
        if primitives.infer_kind(self.node, input_kinds) is not Kind.SCORE:
            raise GpProxyError(f"formula {self.node} does not give a score")
        self.sign = 1 if sign >= 0 else -1
        # as the campaign: models run on 1 torch thread (as the feature cache is built), the
        # formula on ``threads`` (as the evaluator); the count sets the order reductions add up
        # in, so fixing it gives the same bits on any machine (None: the caller's setting)
        self.threads = threads
        # ``act`` holds the activations of the first ``act_samples`` inputs, as in the feature
        # cache (None: all of them)
        self.act_samples = act_samples
        self.seed = seed
        self.feature_modules = dict(features or {})
        self.inputs = {n.name for n in self.node.walk() if not n.args}
        self.cross_arch = any(primitives.get(n.name).cross_arch for n in self.node.walk())
        self.calibration = calibration
        if calibration is not None:
            calibration.check(self)

    def __repr__(self) -> str:
        return f"Proxy({str(self.node)!r}, sign={self.sign:+d})"

    @classmethod
    def from_string(cls, formula: str, **kwargs: Any) -> Proxy:
        return cls(formula, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Proxy:
        """From a run directory or its ``best_proxy.json``: the formula, its sign, the
        campaign's seed for stochastic ops and (from the run's ``config.yaml``) its activation
        samples and threads."""
        formula, sign, seed = read_best(path)
        kwargs.setdefault("seed", seed)
        p = Path(path)
        stored = (p if p.is_dir() else p.parent) / "calibration.json"
        if "calibration" not in kwargs and stored.is_file():
            kwargs["calibration"] = Calibration.load(stored)
        run = run_config(path)
        if run is not None:
            kwargs.setdefault("act_samples", run.act_samples)
            kwargs.setdefault("threads", run.threads)
        return cls(formula, sign=sign, **kwargs)

    # ------------------------------------------------------------------ features ----------
    def _features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        feats = getattr(model, "features", None)
        if callable(feats) and not self.feature_modules:
            return dict(feats(x))
        captured = FeatureAdapter(model, self.feature_modules).features(x)
        missing = sorted(n for n in self.inputs
                         if primitives.get(n).side == "both" and n not in captured)
        if missing:
            raise GpProxyError(
                f"the formula reads {', '.join(missing)} but {type(model).__name__} has no "
                "features() method giving it: pass features={" + ", ".join(
                    f"'{k}': '<module name>'" for k in missing) + "} (names from "
                "model.named_modules()) to Proxy")
        return captured

    def _side(self, model: nn.Module, x: Tensor, targets: Tensor | None, student: bool
              ) -> dict[str, Any]:
        with torch_threads(None if self.threads is None else 1):
            return self._side_env(model, x, targets, student)

    def _side_env(self, model: nn.Module, x: Tensor, targets: Tensor | None, student: bool
                  ) -> dict[str, Any]:
        model = copy.deepcopy(model)
        if student:  # random-init students use batch statistics, as in the feature cache;
            model.train()  # the teacher keeps the mode it was given (eval when trained)
        reads = [primitives.get(name) for name in sorted(self.inputs)]
        if not (student and any(op.side == "student" for op in reads)):
            with torch.no_grad():
                feats = self._features(model, x)
            return {k: v.detach().unsqueeze(0) for k, v in feats.items()}
        if targets is None and any(op.needs_grad for op in reads):
            raise GpProxyError("this formula reads gradients: pass targets (class labels)")
        got = collect_student_layers(model, x, targets, self.act_samples,
                                     forward=lambda images: self._features(model, images))
        outputs = got.pop("outputs")
        assert isinstance(outputs, dict)
        return {**{k: v.detach().unsqueeze(0) for k, v in outputs.items()},
                **gather_inputs([got], "student")}

    # ------------------------------------------------------------------ scoring -----------
    def _raw(self, node: Node, teacher_env: dict[str, Any], student_env: dict[str, Any]
             ) -> Tensor:
        with torch_threads(self.threads):
            out = primitives.evaluate(node, student_env, teacher_env, seed=self.seed)
        assert isinstance(out, Tensor)
        return out

    def score(self, teacher: nn.Module, student: nn.Module, inputs: Tensor,
              targets: Tensor | None = None) -> float:
        """The oriented score of one student (higher = predicted better).

        A rank/z-combined formula places each part of this one student against its calibration
        reference population (:meth:`calibrate`, or ``calibration.json`` beside a run), so it
        scores one model at a time like any zero-cost proxy."""
        if self.cross_arch and self.calibration is None:
            raise GpProxyError(f"{self.node} ranks architectures against each other: calibrate "
                               "it once on a reference population (proxy.calibrate(teacher, "
                               "reference_students, inputs, targets)) or load a run directory "
                               "holding calibration.json; or use score_many")
        t_env = self._side(teacher, inputs, None, student=False)
        s_env = self._side(student, inputs, targets, student=True)
        if not self.cross_arch:
            return self.sign * float(self._raw(self.node, t_env, s_env)[0])
        assert self.calibration is not None
        parts = {n.text: self._raw(n, t_env, s_env)[0].double().reshape(1)
                 for n in self.parts()}
        return self.sign * float(self.calibration.place(self.node, parts)[0])

    def calibrate(self, teacher: nn.Module, students: Iterable[nn.Module], inputs: Tensor,
                  targets: Tensor | None = None) -> Calibration:
        """Store the reference population a combined formula places single models against
        (a sample of the user's space, or the models they pass); returns it (save it with
        ``.save(path)``, pass it back as ``Proxy(..., calibration=...)``)."""
        self.calibration = Calibration.from_parts(self.node, self.part_scores(
            teacher, students, inputs, targets))
        return self.calibration

    def parts(self) -> list[Node]:
        """The per-student subtrees below the rank/z combiners, each once, in tree order."""
        found: dict[str, Node] = {}

        def collect(node: Node) -> None:
            if primitives.get(node.name).cross_arch:
                for a in node.args:
                    collect(a)
            else:
                found.setdefault(node.text, node)

        collect(self.node)
        return list(found.values())

    def part_scores(self, teacher: nn.Module, students: Iterable[nn.Module], inputs: Tensor,
                    targets: Tensor | None = None) -> dict[str, Tensor]:
        """Raw per-student scores of each part below the rank/z combiners (by formula text).

        Students are scored one at a time and only their part scores kept, so memory is one
        student's features, activations, weights and gradients (plus the teacher's features)
        whatever the population's size."""
        t_env = self._side(teacher, inputs, None, student=False)
        nodes = self.parts()
        columns: list[list[Tensor]] = [[] for _ in nodes]
        for student in students:
            env = self._side(student, inputs, targets, student=True)
            for col, node in zip(columns, nodes, strict=True):
                col.append(self._raw(node, t_env, env)[0].double())
            del env
        return {n.text: torch.stack(c) if c else torch.empty(0, dtype=torch.float64)
                for n, c in zip(nodes, columns, strict=True)}

    def combine(self, parts: Mapping[str, Tensor]) -> list[float]:
        """Oriented scores from part scores (the combiners rank over the students given).

        A part that is not finite for some student stops the combination with an error naming
        it: ranking around a NaN would silently score the students by the other part."""
        if self.cross_arch:
            for text, v in parts.items():
                bad = int((~torch.isfinite(v)).sum())
                if bad:
                    raise GpProxyError(f"part {text} is NaN or infinite for {bad} of "
                                       f"{v.numel()} students; the combination cannot rank them")

        def vector(node: Node) -> Tensor:
            if primitives.get(node.name).cross_arch:
                return primitives.apply(node.name, *(vector(a) for a in node.args))  # type: ignore[return-value]
            return parts[node.text]

        return [self.sign * float(v) for v in vector(self.node)]

    def score_many(self, teacher: nn.Module, students: Iterable[nn.Module], inputs: Tensor,
                   targets: Tensor | None = None) -> list[float]:
        """Oriented scores of a population (required for rank/z-combined formulas)."""
        return self.combine(self.part_scores(teacher, students, inputs, targets))


def make_measure(proxy: Proxy, teacher: nn.Module) -> Callable[..., float]:
    """A zero-cost-style ``measure(net, inputs, targets, **kwargs) -> float`` bound to a teacher
    (the shape of the measure functions NAS zero-cost libraries register)."""

    def measure(net: nn.Module, inputs: Tensor, targets: Tensor | None = None,
                **_: Any) -> float:
        return proxy.score(teacher, net, inputs, targets)

    measure.__name__ = f"gp_proxy_{abs(hash(str(proxy.node))) % 10**8}"
    return measure


class NASLibPredictor:
    """A NASLib-style zero-cost predictor: ``query(graph_or_model, dataloader) -> float``.

    ``graph_or_model`` is an ``nn.Module`` or any object with a ``.model``/``.to_pytorch()``
    giving one; the first batch of ``dataloader`` (or ``inputs``/``targets`` given here) is
    the probe batch.
    """

    def __init__(self, proxy: Proxy, teacher: nn.Module, inputs: Tensor | None = None,
                 targets: Tensor | None = None) -> None:
        self.proxy, self.teacher, self.inputs, self.targets = proxy, teacher, inputs, targets

    def query(self, graph_or_model: Any, dataloader: Iterable[Any] | None = None) -> float:
        model = graph_or_model
        if not isinstance(model, nn.Module):
            to_torch = getattr(model, "to_pytorch", None)
            model = to_torch() if callable(to_torch) else getattr(model, "model", None)
        if not isinstance(model, nn.Module):
            raise GpProxyError("query needs an nn.Module (or an object exposing one)")
        x, y = self.inputs, self.targets
        if dataloader is not None:
            x, y = next(iter(dataloader))
        if x is None:
            raise GpProxyError("query needs a dataloader or probe inputs")
        return self.proxy.score(self.teacher, model, x, y)
