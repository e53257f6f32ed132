"""Feature cache: every architecture's features and gradients computed once, on disk.

For a (space, teacher, probe batch, init seed, teacher weights or random init) the cache holds
per student ``k1``/``k2``/``k3``, the outputs of each weight layer on the first
``act_samples`` probe images, each weight layer's weight and the weight gradient of one
cross-entropy backward (gradients zeroed before, hooks removed after); and the teacher's
``k1``/``k2``/``k3`` once.

Files are safetensors (plain tensors, nothing unpickled), written atomically, in a folder
named by a content hash of everything that determines them. Each file's metadata repeats the
key and its spec, so a stale or corrupted file is detected on load and rebuilt.
Students run in train mode (batch statistics: random-init BN running stats are meaningless);
a trained teacher runs in eval mode, a random-init teacher in train mode.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from primitives import Kind, paired_inputs
from primitives.errors import GpProxyError
from primitives.reference import collect_student_layers, weight_layers

from ..core.files import atomic_write_json, load_tensors, save_tensors
from ..core.progress import progress
from ..spaces import FeatureNet, SearchSpace, count_flops, count_params, get_space

__all__ = ["CacheConfig", "CachedArch", "FeatureCache", "build_cache", "load_cache",
           "load_students", "torch_threads"]

FORMAT_VERSION = 2  # 2: built on one thread (bit-reproducible)


class CacheError(GpProxyError):
    """A cache file that is missing, stale, corrupted or holds non-finite features."""


def _file_digest(path: str | None) -> str:
    if path is None:
        return "random-init"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheConfig:
    space: str
    teacher: str
    probe: str  # safetensors file with "images" and "labels"
    teacher_weights: str | None = None  # None: random-init teacher (DisWOT setting)
    init_seed: int = 0
    act_samples: int = 16
    teacher_space: str = ""  # the teacher's family; empty: the student space's teachers
    input_shape: tuple[int, ...] = ()  # the benchmark's input; empty: the space's own
    num_classes: int = 0  # 0: the space's own

    def student_space(self) -> SearchSpace:
        return get_space(self.space, tuple(self.input_shape) or None, self.num_classes or None)

    def build_teacher(self, seed: int) -> FeatureNet:
        family = get_space(self.teacher_space or self.space, tuple(self.input_shape) or None,
                           self.num_classes or None)
        return family.build_teacher(self.teacher, seed=seed)

    def key(self) -> str:
        probe = load_tensors(self.probe)
        content = {"format": FORMAT_VERSION, "space": self.space, "teacher": self.teacher,
                   "teacher_weights": _file_digest(self.teacher_weights),
                   "probe": _tensor_digest(probe), "init_seed": self.init_seed,
                   "act_samples": self.act_samples}
        # the fields added later enter the key only when set, so existing caches keep theirs
        extra = {"teacher_space": self.teacher_space, "input_shape": list(self.input_shape),
                 "num_classes": self.num_classes}
        content.update({k: v for k, v in extra.items() if v})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CachedArch:
    spec: str
    features: dict[str, Tensor]  # k1, k2, k3 (no architecture axis)
    acts: list[Tensor] = field(default_factory=list)
    weights: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    params: int = 0
    flops: int = 0
    # bytes of all its tensors; a lazy cache's students keep only this and the shapes of
    # k1/k2/k3 (a meta tensor object costs about 0.4 KB: one per layer tensor would cost
    # about 75 KB per NB-201 architecture, 1.2 GB for the whole space, in every process)
    nbytes: int = 0

    def layers(self) -> dict[str, object]:
        """Its student-only statistics keyed as ``collect_student_layers`` gives them (the
        fields the input ops read)."""
        return {"act": self.acts, "weight": self.weights, "grad": self.grads,
                "params": self.params}


@dataclass
class FeatureCache:
    """A loaded cache: the teacher's features and every requested student's."""

    config: CacheConfig
    key: str
    teacher: dict[str, Tensor]
    students: list[CachedArch]
    feature_kinds: dict[str, Kind]
    folder: Path | None = None  # where it was loaded from (workers load their share there)
    lazy: bool = False  # students hold shape-only meta tensors; features load per chunk

    @property
    def archs(self) -> list[str]:
        return [s.spec for s in self.students]

    def smallest_map(self) -> int | None:
        """The smallest spatial side of any teacher or student feature map (None: no maps)."""
        sides = [min(t.shape[-2:]) for feats in (self.teacher, *(s.features
                                                                 for s in self.students))
                 for k, t in feats.items() if self.feature_kinds.get(k) is Kind.FMAP]
        return int(min(sides)) if sides else None

    def misaligned(self) -> dict[str, frozenset[int]]:
        """Per teacher-student input, the axes whose size differs from the teacher's for at
        least one student (0 = samples, 1 = channels, ...)."""
        out = {}
        for k in paired_inputs():
            t = tuple(self.teacher[k].shape)
            diff: set[int] = set()
            for s in self.students:
                shape = tuple(s.features[k].shape)
                if len(shape) != len(t):
                    diff.update(range(max(len(shape), len(t))))
                diff.update(i for i, (a, b) in enumerate(zip(shape, t, strict=False)) if a != b)
            out[k] = frozenset(diff)
        return out


def _arch_file(root: Path, spec: str) -> Path:
    return root / "archs" / f"{hashlib.sha1(spec.encode()).hexdigest()[:20]}.safetensors"


def _student_tensors(model: FeatureNet, images: Tensor, labels: Tensor, act_samples: int
                     ) -> dict[str, Tensor]:
    got = collect_student_layers(model, images, labels, act_samples, forward=model.features)
    feats = got["outputs"]
    assert isinstance(feats, dict)
    out = {k: v.detach().clone() for k, v in feats.items()}
    layers = zip(got["act"], got["weight"], got["grad"], strict=True)  # type: ignore[call-overload]
    for i, (act, weight, grad) in enumerate(layers):
        out.update({f"act.{i}": act, f"weight.{i}": weight, f"grad.{i}": grad})
    return out


def build_cache(root: str | os.PathLike[str], config: CacheConfig, archs: list[str],
                quiet: bool = False, backend: str = "local", workers: int = 1,
                scheduler: str | None = None) -> Path:
    """Compute what is missing (or stale) for ``archs``; returns the cache folder.

    Built on one torch thread: a convolution's backward sums in an order that depends on the
    thread count, so weight gradients built on 2 threads differed from those built on 1 in the
    7th digit, and a campaign (a chaotic process) found a different best formula from them.

    With ``backend`` ``processes`` or ``dask`` the missing architectures are built one task
    each on that backend's workers (the same bits: one thread each); every task writes its
    own file atomically, so an interrupted build keeps what finished and a rerun builds only
    the rest.
    """
    from .backends import BACKENDS

    if not BACKENDS.get(backend).in_process:
        folder = build_cache(root, config, [], quiet=True)  # the teacher, here
        space = config.student_space()
        specs = [space.validate(a) for a in archs]
        missing = [s for s in specs if not _valid(_arch_file(folder, s),
                                                  {"key": folder.name, "spec": s})]
        if missing:
            from .backends import executor

            with progress(f"feature cache ({config.space}, {folder.name[:8]}) on {backend}",
                          len(missing), quiet) as advance, \
                    executor(backend, workers, scheduler) as pool:
                futures = [pool.submit(_build_one, str(root), config, s) for s in missing]
                for f in as_completed(futures):
                    f.result()  # a task that failed after its retries raises here
                    advance()
        return folder
    with torch_threads(1):
        return _build_cache(root, config, archs, quiet)


def _build_one(root: str, config: CacheConfig, spec: str) -> str:
    """One architecture's cache file (a task of a distributed build)."""
    with torch_threads(1):
        _build_cache(root, config, [spec], quiet=True)
    return spec


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch threads (``None``: leave the caller's setting), then
    restore. Parallel kernels split their work by thread count, so the count decides the
    order in which reductions add up: fixing it makes results independent of the machine's
    core count."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_cache(root: str | os.PathLike[str], config: CacheConfig, archs: list[str],
                 quiet: bool) -> Path:
    space = config.student_space()
    key = config.key()
    folder = Path(root) / key
    probe = load_tensors(config.probe)
    images, labels = probe["images"], probe["labels"].long()
    atomic_write_json(folder / "config.json", {**asdict(config), "key": key})
    meta = {"key": key}
    tfile = folder / "teacher.safetensors"
    if not _valid(tfile, meta):
        teacher = config.build_teacher(seed=config.init_seed)
        if config.teacher_weights is not None:
            teacher.load_state_dict(load_tensors(config.teacher_weights))
            teacher.eval()
        else:
            teacher.train()
        with torch.no_grad():
            tf = teacher.features(images)
        save_tensors(tfile, tf, {**meta, "spec": config.teacher, "digest": _tensor_digest(tf)})
    specs = [space.validate(a) for a in archs]
    missing = [s for s in specs if not _valid(_arch_file(folder, s), {**meta, "spec": s})]
    with progress(f"feature cache ({config.space}, {key[:8]})", len(missing), quiet) as advance:
        for spec in missing:
            model = space.build(spec, seed=config.init_seed)
            tensors = _student_tensors(model, images, labels, config.act_samples)
            save_tensors(_arch_file(folder, spec), tensors,
                         {**meta, "spec": spec, "digest": _tensor_digest(tensors),
                          "params": str(count_params(model)),
                          "flops": str(count_flops(model, space.input_shape)),
                          "layers": str(len(weight_layers(model)))})
            advance()
    return folder


def _read_metadata(path: Path) -> dict[str, str] | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # missing, truncated or not safetensors: treated as absent
        return None


def _valid(path: Path, expected: dict[str, str]) -> bool:
    """The file's metadata names the expected key and spec and carries a content digest
    (files written before digests existed are rebuilt once)."""
    meta = _read_metadata(path)
    return meta is not None and "digest" in meta and all(meta.get(k) == v
                                                         for k, v in expected.items())


def _load_checked(root: str | os.PathLike[str], config: CacheConfig, path: Path,
                  spec: str | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A cache file's tensors, checked against the digest of their content written with
    them: a file overwritten with other (even finite) numbers is rebuilt, not used."""
    for attempt in range(2):
        meta = _read_metadata(path)
        if meta is not None:
            t = load_tensors(path)
            if _tensor_digest(t) == meta.get("digest"):
                return t, meta
        if attempt == 0:
            path.unlink(missing_ok=True)
            _build_cache(root, config, [spec] if spec is not None else [], quiet=True)
    raise CacheError(f"{path}: content does not match its digest after a rebuild")


def _finite(path: Path, tensors: dict[str, Tensor]) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CacheError(f"{path}: tensor {name!r} holds NaN or inf; rebuild the cache "
                             "or check the model")


def _header(path: Path) -> tuple[dict[str, Tensor], int]:
    """From a cache file's header alone: ``k1``/``k2``/``k3`` as shape-only ``meta`` tensors,
    and the bytes of all its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            out, nbytes = {}, 0
            for name in fh.keys():
                part = fh.get_slice(name)
                shape, dtype = part.get_shape(), _DTYPES[part.get_dtype()]
                nbytes += math.prod(shape) * dtype.itemsize
                if name in paired_inputs():
                    out[name] = torch.empty(shape, device="meta", dtype=dtype)
            return out, nbytes
    except Exception as exc:
        raise CacheError(f"{path}: cannot read its header ({exc})") from None


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool}


def _arch(spec: str, t: dict[str, Tensor], meta: dict[str, str]) -> CachedArch:
    n = int(meta["layers"])
    return CachedArch(
        spec, {k: t[k] for k in paired_inputs()},
        [t[f"act.{i}"] for i in range(n)], [t[f"weight.{i}"] for i in range(n)],
        [t[f"grad.{i}"] for i in range(n)], int(meta["params"]), int(meta["flops"]),
        sum(x.numel() * x.element_size() for x in t.values()))


def load_cache(root: str | os.PathLike[str], config: CacheConfig, archs: list[str],
               quiet: bool = False, lazy: bool = False, backend: str = "local",
               workers: int = 1, scheduler: str | None = None) -> FeatureCache:
    """Load (building what is missing, with progress unless ``quiet``, on ``backend``: see
    :func:`build_cache`) the features of ``archs``, in that order.

    ``lazy`` reads only the files' headers: a student holds its ``k1``/``k2``/``k3`` as
    shape-only ``meta`` tensors and its byte count (enough to plan chunks, check alignment
    and balance workers), no layer tensors, and an evaluator loads
    each chunk's features from disk when it needs them, within its ``held_bytes``: a space of
    tens of thousands of architectures is scored without ever being in memory at once.
    """
    folder = build_cache(root, config, archs, quiet, backend, workers, scheduler)
    key = folder.name
    space = config.student_space()
    tfile = folder / "teacher.safetensors"
    teacher, _ = _load_checked(root, config, tfile, None)
    _finite(tfile, teacher)
    students = []
    for arch in archs:
        spec = space.validate(arch)
        path = _arch_file(folder, spec)
        if lazy:
            meta = _read_metadata(path) or {}
            feats, nbytes = _header(path)
        else:
            t, meta = _load_checked(root, config, path, spec)
        if meta.get("key") != key or meta.get("spec") != spec:
            raise CacheError(f"{path}: stale or corrupted cache file for {spec!r}")
        if lazy:
            students.append(CachedArch(spec, feats, params=int(meta["params"]),
                                       flops=int(meta["flops"]), nbytes=nbytes))
        else:
            _finite(path, t)
            students.append(_arch(spec, t, meta))
    kinds = dict(space.build(archs[0]).feature_kinds) if archs else {}
    return FeatureCache(config, key, teacher, students, kinds, folder.resolve(), lazy)


def load_students(cache: FeatureCache, positions: list[int]) -> list[CachedArch]:
    """The students at ``positions`` of a (lazy or loaded) cache with their tensors read from
    disk and checked (digest, finiteness) as :func:`load_cache` does."""
    if cache.folder is None:
        raise CacheError("loading students needs a cache loaded from disk (load_cache)")
    root = cache.folder.parent
    out = []
    for i in positions:
        spec = cache.students[i].spec
        path = _arch_file(cache.folder, spec)
        t, meta = _load_checked(root, cache.config, path, spec)
        if meta.get("key") != cache.key or meta.get("spec") != spec:
            raise CacheError(f"{path}: stale or corrupted cache file for {spec!r}")
        _finite(path, t)
        out.append(_arch(spec, t, meta))
    return out
