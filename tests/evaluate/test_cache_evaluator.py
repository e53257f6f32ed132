"""Feature cache and batched evaluator on a tiny frozen setup (random-init, seeded)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import primitives
from gp_proxy.core.files import save_tensors
from gp_proxy.evaluate.cache import CacheConfig, CacheError, _tensor_digest, build_cache, load_cache
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.evaluate.fitness import assess, make_splits, tau_in_params_bins
from gp_proxy.evolve.pset import build_pset
from gp_proxy.spaces import get_space, space_names
from primitives import Kind, Ragged

from ..conftest import EVAL_ARCHS as ARCHS
from ..conftest import random_formulas


def _naive(formula: str, cache) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The reference interpreter, one architecture at a time (combiners on full vectors)."""
    node = primitives.canonicalize(primitives.check(formula, cache.feature_kinds))
    if node.op.cross_arch:
        parts = [torch.from_numpy(_naive(str(a), cache)) for a in node.args]
        return primitives.apply(node.name, *parts).numpy()
    teacher = {k: v.unsqueeze(0) for k, v in cache.teacher.items()}
    out = []
    for s in cache.students:
        env = {k: v.unsqueeze(0) for k, v in s.features.items()}
        env["act"] = Ragged.from_layers(Kind.ASET, [s.acts])
        env["grad"] = Ragged.from_layers(Kind.WSET, [s.grads])
        env["weight"] = Ragged.from_layers(Kind.WSET, [s.weights])
        env["log_params"] = torch.log(torch.tensor([float(s.params)], dtype=torch.float64))
        out.append(float(primitives.evaluate(node, env, teacher, seed=0)[0]))
    return np.array(out)


FORMULAS = ["l1(mm(k2))", "kl_t4(k3)", "sp_dist(k1)", "mse(satt(mask(k1)))",
            "mean_layers(fro_norm(mul(grad,weight)))", "sum_layers(l1_norm(act))",
            "rank_add(cosine(mm(k2)),mean_layers(fro_norm(grad)))", "pearson(drop(k3))"]


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_batched_equals_naive(cache, formula: str, chunk: int) -> None:  # type: ignore[no-untyped-def]
    res = Evaluator(cache, chunk_size=chunk, device="cpu").evaluate([formula])[0]
    assert res.status == "ok", res.reason
    np.testing.assert_allclose(res.scores, _naive(formula, cache), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("space_name", space_names())
def test_every_space_caches_and_evaluates_its_typed_formulas(space_name: str,
                                                             tmp_path: Path) -> None:
    # spaces differ in feature kinds (seq for the ViTs) and in teacher-student widths: the
    # campaign's typed generator, given the cache's kinds and misaligned axes, must only build
    # formulas that evaluate, and the batched evaluator must agree with the interpreter
    space = get_space(space_name)
    g = torch.Generator().manual_seed(0)
    probe = tmp_path / "probe.safetensors"
    save_tensors(probe, {"images": torch.randn(4, *space.input_shape, generator=g),
                         "labels": torch.randint(0, space.num_classes, (4,), generator=g)})
    rng = random.Random(0)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(3)))
    cfg = CacheConfig(space_name, space.teachers()[0], str(probe), None, 0, act_samples=2)
    cache = load_cache(tmp_path / "cache", cfg, archs)
    formulas = random_formulas(cache, 40, rng)
    results = Evaluator(cache, device="cpu").evaluate(formulas)
    bad = [(r.formula, r.status, r.reason) for r in results
           if r.status not in ("ok", "constant", "constant_part", "nan", "inf")]
    assert not bad, bad[:3]
    ok = [r for r in results if r.ok]
    assert len(ok) >= 10
    for r in ok[:6]:
        np.testing.assert_allclose(r.scores, _naive(r.formula, cache), rtol=1e-4, atol=1e-6,
                                   err_msg=r.formula)


def test_a_distance_of_a_value_with_itself_is_zero_without_computing_it(cache) -> None:  # type: ignore[no-untyped-def]
    # the premise, for every op that claims it: op(x, x) is +0 per layer for finite x ...
    ops = [op for op in primitives.ops() if op.zero_on_equal]
    assert {op.name for op in ops} == {"dist_l1", "dist_l2", "dist_smooth_l1", "dist_kl"}
    g = torch.Generator().manual_seed(5)
    for kind in (Kind.WSET, Kind.ASET):
        layers = [[torch.randn(3, 4, generator=g) * 1e3, torch.randn(50, generator=g) * 1e-30,
                   torch.full((7,), 3e38)], [torch.randn(2, 2, generator=g)]]
        x = Ragged.from_layers(kind, layers)
        for op in ops:
            got = primitives.apply(op.name, x, x)
            assert torch.equal(got.values, torch.zeros_like(got.values)), op.name
            assert not torch.signbit(got.values).any(), op.name  # +0, not -0
    # ... so the evaluator skips it: a raw input is not read, a derived value only checked
    formulas = ["rank_add(kl_t4(k3),sum_layers(dist_l2(act,act)))",
                "mean_layers(add(dist_kl(weight,weight),l1_norm(grad)))",
                "sum_layers(mul(dist_smooth_l1(mul(grad,weight),mul(grad,weight)),mean(act)))",
                "mean_layers(add(dist_l1(pow2(exp(exp(act))),pow2(exp(exp(act)))),mean(act)))"]
    import gp_proxy.evaluate.evaluator as evaluator_module

    applied: list[str] = []
    real = evaluator_module.apply

    def recording_apply(name: str, *args, **kw):  # type: ignore[no-untyped-def]
        applied.append(name)
        return real(name, *args, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(evaluator_module, "apply", recording_apply)
        got = Evaluator(cache, device="cpu").evaluate(formulas)
    # skipped where the value is finite (all but the last formula); computed where it is not
    assert applied.count("dist_l2") == applied.count("dist_kl") == 0
    assert applied.count("dist_smooth_l1") == 0 and applied.count("dist_l1") > 0
    assert got[0].status == "constant_part"
    for r in got[1:]:  # the same bits as the interpreter, NaN where x - x is inf - inf
        assert r.scores is not None, r.reason
        np.testing.assert_array_equal(r.scores, _naive(r.formula, cache))
    assert np.isnan(got[3].scores).any() and got[3].status == "nan"  # type: ignore[arg-type]


def test_memoisation_does_not_change_scores_and_hits(cache) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    ps = build_pset("both", input_kinds=cache.feature_kinds, misaligned=cache.misaligned())
    formulas = [str(ps.to_node(ps.random_tree(rng, 2, 5))) for _ in range(60)]
    formulas += formulas[:10]  # exact repeats must hit the memo
    with_memo = Evaluator(cache, device="cpu")
    a = with_memo.evaluate(formulas)
    b = Evaluator(cache, device="cpu", memoize=False).evaluate(formulas)
    assert with_memo.memo_hits > 0
    for x, y in zip(a, b, strict=True):
        assert x.status == y.status
        if x.scores is not None:
            np.testing.assert_array_equal(x.scores, y.scores)


def test_small_values_are_kept_across_calls_without_changing_results(cache) -> None:  # type: ignore[no-untyped-def]
    # per-layer scalars and per-architecture vectors of one call are reused by the next: a new
    # reduction or combination over an evaluated inner subtree does not recompute it
    rng = random.Random(2)
    ps = build_pset("both", input_kinds=cache.feature_kinds, misaligned=cache.misaligned())
    parents = [str(ps.to_node(ps.random_tree(rng, 2, 5))) for _ in range(20)]
    parents.append("rank_add(l1(k2),sum_layers(fro_norm(act)))")
    kids = ["rank_sub(mse(k3),mean_layers(log(fro_norm(act))))",
            "rank_add(kl_t4(k3),sum_layers(dist_l1(act,act)))",
            *[str(ps.to_node(ps.random_tree(rng, 2, 5))) for _ in range(20)]]
    ev = Evaluator(cache, device="cpu", chunk_size=2)
    ev.evaluate(parents)
    assert ev.kept_hits == 0 and ev._kept
    got = ev.evaluate(kids)
    assert ev.kept_hits >= len(ev.chunks)  # at least fro_norm(act) and l1(k2) on every chunk
    ref = Evaluator(cache, device="cpu", chunk_size=2, memoize=False).evaluate(kids)
    off = Evaluator(cache, device="cpu", chunk_size=2, kept_bytes=0)
    off.evaluate(parents)
    plain = off.evaluate(kids)
    assert off.kept_hits == 0 and not off._kept
    for x, y, z in zip(got, ref, plain, strict=True):
        assert (x.status, x.reason) == (y.status, y.reason) == (z.status, z.reason)
        if x.scores is not None:
            assert x.scores.tobytes() == y.scores.tobytes() == z.scores.tobytes()  # type: ignore[union-attr]
    # bounded, and no kept value holds on to a larger buffer
    assert ev._kept_size == sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor)
                                else v.values.numel() * v.values.element_size()
                                for v in ev._kept.values()) <= ev.kept_bytes
    for v in ev._kept.values():
        t = v if isinstance(v, torch.Tensor) else v.values
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    tiny = Evaluator(cache, device="cpu", chunk_size=2, kept_bytes=64)
    tiny.evaluate(parents)
    assert 0 < tiny._kept_size <= 64


def test_parts_are_reused_across_calls_without_changing_results(cache) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    ps = build_pset("both", input_kinds=cache.feature_kinds, misaligned=cache.misaligned())
    parents = [str(ps.to_node(ps.random_tree(rng, 2, 5))) for _ in range(20)]
    kids = [f"rank_sub(sp_dist(k2),{p.split(',', 1)[1][:-1]})" if p.startswith("rank_") else p
            for p in parents] + ["rank_add(l1(k2),sum_layers(l1_norm(weight)))"]
    ev = Evaluator(cache, device="cpu")
    ev.evaluate([*parents, "l1(k2)"])
    hits = ev.part_hits
    got = ev.evaluate(kids)
    assert ev.part_hits > hits  # inherited parts (and a known failure) were not recomputed
    ref = Evaluator(cache, device="cpu", memoize=False).evaluate(kids)
    for x, y in zip(got, ref, strict=True):
        assert (x.status, x.reason) == (y.status, y.reason)
        if x.scores is not None:
            np.testing.assert_array_equal(x.scores, y.scores)
    assert got[-1].status == "shape_error"
    # callers may modify the scores they get without touching the kept parts
    one = ev.evaluate(["sp_dist(k2)"])[0]
    assert one.scores is not None
    one.scores *= -1
    np.testing.assert_array_equal(ev.evaluate(["sp_dist(k2)"])[0].scores, -one.scores)
    # the store is bounded: a budget of 2 parts keeps only the 2 most recent
    small = Evaluator(cache, device="cpu", root_bytes=2 * 8 * len(cache.students))
    small.evaluate(["sp_dist(k2)", "sp_dist(k1)", "sp_dist(k3)"])
    assert list(small._parts) == ["sp_dist(k1)", "sp_dist(k3)"]


def test_statuses_name_the_cause(cache) -> None:  # type: ignore[no-untyped-def]
    ev = Evaluator(cache, device="cpu")
    bad = ev.evaluate(["l1(k2)", "l1(mm(k9))", "l1(mm(k2)", "mse(local_s4(multi_scale_r2(k2)))",
                       "hard(min_max_normalize(pow2(scale(k3))))"])
    assert [r.status for r in bad[:4]] == ["shape_error", "parse_error", "parse_error",
                                           "shape_error"]
    assert "differ" in bad[0].reason
    assert "smaller than" in bad[3].reason


def test_a_combination_with_a_constant_part_is_flagged(cache) -> None:  # type: ignore[no-untyped-def]
    r = Evaluator(cache, device="cpu").evaluate(
        ["rank_add(sp_dist(k2),mean_layers(dist_l1(weight,weight)))"])[0]
    assert r.status == "constant_part" and "mean_layers(dist_l1(weight,weight))" in r.reason


def test_chunk_layouts_are_shared(cache) -> None:  # type: ignore[no-untyped-def]
    """Weights and gradients of a chunk share one segment tensor (binary ops on them then skip
    an element-by-element layout comparison), and lengths are known up front."""
    from primitives.instinct import segment_sum

    for chunk in Evaluator(cache, device="cpu").chunks:
        grad, weight = chunk.inputs["grad"], chunk.inputs["weight"]
        assert isinstance(grad, Ragged) and isinstance(weight, Ragged)
        assert weight.segment is grad.segment
        for r in (grad, weight, chunk.inputs["act"]):
            assert isinstance(r, Ragged)
            assert "lengths" in r.__dict__
            assert r.lengths.tolist() == torch.bincount(r.segment).tolist()
        derived = grad.with_values(grad.values * 2).with_values(grad.values * 3)
        assert derived.lengths is grad.lengths  # computed once per layout
        torch.testing.assert_close(segment_sum(derived, derived.values),
                                   3 * segment_sum(grad, grad.values))


def test_deterministic_across_evaluators(cache) -> None:  # type: ignore[no-untyped-def]
    a = Evaluator(cache, device="cpu", seed=3).evaluate(["sp_dist(mask(k1))"])[0].scores
    b = Evaluator(cache, device="cpu", seed=3).evaluate(["sp_dist(mask(k1))"])[0].scores
    c = Evaluator(cache, device="cpu", seed=4).evaluate(["sp_dist(mask(k1))"])[0].scores
    assert a is not None and c is not None
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cache_rebuilds_only_missing_stale_or_corrupt(probe: Path, tmp_path: Path) -> None:
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=4)
    folder = build_cache(tmp_path, cfg, ARCHS[:3], quiet=True)
    files = sorted((folder / "archs").glob("*.safetensors"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    build_cache(tmp_path, cfg, ARCHS[:4], quiet=True)
    assert all(f.stat().st_mtime_ns == s for f, s in stamps.items())
    assert len(list((folder / "archs").glob("*.safetensors"))) == 4
    files[0].write_bytes(b"garbage")  # corrupted
    save_tensors(files[1], {"k1": torch.zeros(1)}, {"key": "old", "spec": "x"})  # stale
    loaded = load_cache(tmp_path, cfg, ARCHS[:4])
    assert [s.spec for s in loaded.students] == ARCHS[:4]
    assert files[0].stat().st_mtime_ns != stamps[files[0]]


def test_nan_features_are_a_one_line_error(probe: Path, tmp_path: Path) -> None:
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=4)
    folder = build_cache(tmp_path, cfg, ARCHS[:3], quiet=True)
    from safetensors import safe_open

    f = sorted((folder / "archs").glob("*.safetensors"))[0]
    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors["k2"][0] = float("nan")
    # as a model that really gives NaN would have written it: the digest of its own content
    # (a file changed after it was written is rebuilt instead: test_hardening)
    save_tensors(f, tensors, {**meta, "digest": _tensor_digest(tensors)})
    with pytest.raises(CacheError, match="'k2' holds NaN"):
        load_cache(tmp_path, cfg, ARCHS[:3])


def test_cache_key_depends_on_what_determines_features(probe: Path) -> None:
    a = CacheConfig("fmnist-cnn", "resnet-t", str(probe)).key()
    assert a == CacheConfig("fmnist-cnn", "resnet-t", str(probe)).key()
    assert a != CacheConfig("fmnist-cnn", "resnet-t", str(probe), init_seed=1).key()
    assert a != CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=8).key()


def test_assess_orients_by_training_sign_only() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=60)
    params = rng.integers(1000, 9000, 60).astype(float)
    splits = make_splits(60, seed=0)
    a = assess(-y + 0.1 * rng.normal(size=60), y, params, splits)
    assert a.sign == -1 and a.fitness > 0.8 and a.test_tau > 0.8
    size_only = assess(params, params + 0.0, params, splits)
    assert size_only.test_tau == pytest.approx(1.0)
    assert tau_in_params_bins(params[splits.test], params[splits.test], params[splits.test]) > 0
    noise = assess(rng.normal(size=60), y, params, splits)
    assert abs(noise.test_tau) < 0.4


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_allocator_tuning_applies_once_and_can_be_switched_off() -> None:
    import os
    import subprocess
    import sys

    code = ("from gp_proxy.evaluate.allocator import tune_allocator as t; "
            "print(t(), t())")
    env = {**os.environ, "GP_PROXY_MALLOC_TUNING": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True"]
    env["GP_PROXY_MALLOC_TUNING"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_release_memory_gives_a_freed_batch_back() -> None:
    """With the thresholds raised a freed 512 MB buffer stays in the process; release_memory
    (called whenever an evaluator clears its memo) hands it back."""
    import os
    import subprocess
    import sys

    code = ("import torch\n"
            "from gp_proxy.evaluate.allocator import release_memory, tune_allocator\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "tuned = tune_allocator()\n"
            "x = torch.ones(1 << 27); del x\n"  # 512 MB, served from the heap when tuned
            "kept = rss()\n"
            "print(tuned, release_memory(), (kept - rss()) >> 20)\n")
    env = {**os.environ, "GP_PROXY_MALLOC_TUNING": "1"}
    tuned, released, mb = subprocess.run([sys.executable, "-c", code], env=env,
                                         capture_output=True, text=True,
                                         check=True).stdout.split()
    assert (tuned, released) == ("True", "True") and int(mb) > 400
    env["GP_PROXY_MALLOC_TUNING"] = "0"  # untouched allocator: mmap gave it back already
    tuned, released, mb = subprocess.run([sys.executable, "-c", code], env=env,
                                         capture_output=True, text=True,
                                         check=True).stdout.split()
    assert (tuned, released) == ("False", "False") and int(mb) < 100


def test_cache_bits_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    """Gradients from a multi-threaded convolution backward differ in the last digits from a
    single-threaded one; the cache is always built on one thread and restores the caller's."""
    from safetensors.torch import load_file

    from gp_proxy.evaluate.cache import build_cache

    path = tmp_path / "probe.safetensors"
    g = torch.Generator().manual_seed(1)
    save_tensors(path, {"images": torch.randn(64, 1, 14, 14, generator=g),
                        "labels": torch.randint(0, 10, (64,), generator=g)})
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(path), act_samples=2)
    before = torch.get_num_threads()
    folders = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        folders.append(build_cache(tmp_path / f"t{threads}", cfg, ["w16-d333-k5"], quiet=True))
        assert torch.get_num_threads() == threads
    torch.set_num_threads(before)
    for f in (folders[0] / "archs").glob("*.safetensors"):
        a, b = load_file(str(f)), load_file(str(folders[1] / "archs" / f.name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


#: formulas whose last bits changed with the thread count before evaluations ran on a fixed
#: count (a batched matmul and per-layer sums large enough for torch to split across threads)
_THREAD_SENSITIVE = [
    "rank_add(kl_t4(batchnorm(min_max_normalize(mish(k3)))),"
    "mean_layers(znorm(sub(dist_smooth_l1(act,act),l1_norm(weight)))))",
    "rank_add(kl_t8(mm(bmm(ickd(k2)))),mean_layers(dist_kl(relu(log(weight)),sqrt(abs(grad)))))",
    "rank_add(kl_t16(sp(ickd(channel(k1)))),mean_layers(abs(dist_kl(abs(weight),log(grad)))))",
]


def test_scores_do_not_depend_on_the_callers_thread_count(tmp_path: Path) -> None:
    probe = tmp_path / "probe.safetensors"
    g = torch.Generator().manual_seed(0)
    save_tensors(probe, {"images": torch.randn(48, 1, 14, 14, generator=g),
                         "labels": torch.randint(0, 10, (48,), generator=g)})
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=48)
    big = load_cache(tmp_path / "cache", cfg,
                     ["w16-d111-k3", "w16-d211-k3", "w12-d111-k5", "w16-d123-k5"])
    before = torch.get_num_threads()
    scores = {}
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            scores[threads] = Evaluator(big, device="cpu").evaluate(_THREAD_SENSITIVE)
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    for a, b in zip(scores[1], scores[3], strict=True):
        assert a.status == b.status != "runtime_error", (a.formula, a.reason)
        assert a.scores is not None and b.scores is not None
        assert a.scores.tobytes() == b.scores.tobytes(), a.formula


def test_worker_processes_give_the_same_bits_statuses_and_first_causes(cache) -> None:  # type: ignore[no-untyped-def]
    """Chunks spread over worker processes are evaluated exactly as in one process: the same
    score bits, statuses and (first failing chunk's) reasons, across calls, with the teacher
    memo kept and cleared, and with parts reused from an earlier call."""
    formulas = random_formulas(cache, 60, random.Random(11))
    formulas += ["l1(k1)", "rank_add(mse(k2),sum_layers(mean(act)))", "kl_t4(k3", "mean(k1)"]
    runs = {}
    for workers in (1, 2):
        ev = Evaluator(cache, chunk_size=2, device="cpu", threads=1, workers=workers,
                       backend="local" if workers == 1 else "processes")
        assert len(ev.chunks) == (4 if workers == 1 else 0)  # 7 architectures, 2 a chunk
        try:
            first = ev.evaluate(formulas, keep_memo=True)
            ev.clear_memo()
            again = ev.evaluate([*formulas[:20], "mse(k3)"])
        finally:
            ev.close()
        runs[workers] = [(r.formula, r.status, r.reason,
                          None if r.scores is None else r.scores.tobytes())
                         for r in first + again]
    assert runs[1] == runs[2]
    statuses = {r[1] for r in runs[1]}
    assert {"ok", "shape_error", "parse_error"} <= statuses, statuses


def test_a_dead_worker_is_a_one_line_error(cache) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    from gp_proxy.evaluate.backends import Processes
    from primitives import GpProxyError

    ev = Evaluator(cache, chunk_size=2, device="cpu", threads=1, workers=2, backend="processes")
    try:
        assert ev.evaluate(["mse(k3)"])[0].ok
        assert isinstance(ev.backend, Processes)
        pid = next(iter(ev.backend.shards[0].executor._processes))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(GpProxyError, match="worker process died"):
            ev.evaluate(["l1(k3)"])
    finally:
        ev.close()


NAN_PART = "kl_t4(mm(exp(exp(bmm(k2)))))"


@pytest.mark.parametrize("combiner", ["rank_add", "rank_sub", "z_add", "z_sub"])
def test_a_combination_with_a_non_finite_part_fails_naming_it(cache, combiner: str) -> None:  # type: ignore[no-untyped-def]
    """The audit's reproducer: a part that is NaN for every architecture made the combination
    rank exactly like its other part, with status ok."""
    ev = Evaluator(cache, device="cpu")
    alone = ev.evaluate([NAN_PART])[0]
    assert alone.status == "nan"
    res = ev.evaluate([f"{combiner}({NAN_PART},sum_layers(sqrt(l1_norm(grad))))"])[0]
    assert res.status == "nan" and not res.ok
    assert NAN_PART in res.reason, res.reason


def test_proxy_combination_refuses_a_non_finite_part(cache) -> None:  # type: ignore[no-untyped-def]
    from gp_proxy.plugin.proxy import Proxy

    proxy = Proxy.from_string(f"rank_add({NAN_PART},sum_layers(l1_norm(grad)))")
    parts = {NAN_PART: torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64),
             "sum_layers(l1_norm(grad))": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}
    with pytest.raises(primitives.GpProxyError, match=r"kl_t4.*1 of 3 students"):
        proxy.combine(parts)


def test_a_cache_build_shows_progress_in_a_log(probe: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """Not a terminal: one plain line per built architecture on stderr; quiet: none."""
    cfg = CacheConfig("fmnist-cnn", "resnet-t", str(probe), act_samples=2)
    load_cache(tmp_path / "a", cfg, ARCHS[:3])
    err = capfd.readouterr().err
    assert "feature cache (fmnist-cnn" in err and "3/3" in err and err.count("\n") == 3
    load_cache(tmp_path / "b", cfg, ARCHS[:3], quiet=True)
    assert capfd.readouterr().err == ""


def test_closing_an_evaluator_frees_its_features_now(cache) -> None:  # type: ignore[no-untyped-def]
    """The in-process backend and its evaluator refer to each other; closing (the end of a
    ``with`` block) drops the stacked features at once, not when the garbage collector runs,
    and a closed evaluator refuses to evaluate rather than return scores of nothing."""
    import gc
    import weakref

    from primitives import GpProxyError

    gc.disable()
    try:
        with Evaluator(cache, device="cpu") as ev:
            assert ev.evaluate(["sp_dist(k2)"])[0].ok
            stacked = weakref.ref(ev.chunks[0].inputs["k2"])  # type: ignore[index]
        assert stacked() is None and ev.chunks == []
    finally:
        gc.enable()
    with pytest.raises(GpProxyError, match="closed"):
        ev.evaluate(["sp_dist(k2)"])
