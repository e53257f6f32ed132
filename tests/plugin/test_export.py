"""Exports: the per-model torch reference of every op (generated from the registry), the
self-contained torch module against the evaluator, the sympy mathematics, the CLI."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy as sp
import torch

import primitives
from gp_proxy.bench.benchmark import load_benchmark
from gp_proxy.cli import main
from gp_proxy.config import run_config
from gp_proxy.evaluate.cache import FeatureCache, load_cache
from gp_proxy.evaluate.evaluator import Evaluator
from gp_proxy.plugin.export import export, to_sympy, to_torch
from gp_proxy.plugin.proxy import Calibration, Proxy
from primitives import GpProxyError, Kind, Ragged
from primitives.reference import REFERENCE, generator

from ..conftest import random_formulas
from ..primitives.test_op_properties import VALUE_FAMILIES, _values

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_RUN = ROOT / "results" / "fmnist-reference"
OPS = [op for op in primitives.ops() if op.family not in ("input", "combine")]
CASES = [(op, sig, fam) for op in OPS for sig in op.signatures for fam in VALUE_FAMILIES]


def per_model(value: torch.Tensor | Ragged, a: int) -> Any:
    """Architecture ``a`` of a batched value, as one model's value (ragged layers flat)."""
    if not isinstance(value, Ragged):
        return value[a]
    if value.kind is Kind.LVAL:
        return value.values[value.segment == a]
    layers = torch.split(value.values, value.lengths_list)
    return [t for t, arch in zip(layers, value.segment_arch.tolist(), strict=True) if arch == a]


def _close(got: Any, want: Any, rtol: float) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _close(g.reshape(-1), w, rtol)
        return
    g, w = got.double().reshape(-1), want.double().reshape(-1)
    assert g.shape == w.shape
    scale = float(torch.nan_to_num(w, posinf=0, neginf=0).abs().max()) if w.numel() else 0.0
    torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * (scale + 1e-2), equal_nan=True)


def test_every_op_has_a_per_model_reference() -> None:
    missing = sorted(op.name for op in OPS if op.name not in REFERENCE)
    assert not missing
    assert sorted(REFERENCE) == sorted(op.name for op in OPS)  # and nothing stale


def _double(v: torch.Tensor | Ragged) -> torch.Tensor | Ragged:
    return v.with_values(v.values.double()) if isinstance(v, Ragged) else v.double()


@pytest.mark.parametrize(("op", "sig", "family"), CASES,
                         ids=[f"{o.name}:{s}:{f}" for o, s, f in CASES])
def test_reference_equals_the_kernel(op: primitives.Op, sig: primitives.Signature,
                                     family: str) -> None:
    """The per-model twin of the op, one architecture at a time, computes the batched
    kernel's values: to 1e-9 in float64 (the same mathematics), and in float32 to the
    rounding of the kernels' own order of operations. That is 1e-3: the kernel's KL at T=16
    is the difference of two entropy-sized sums scaled by 256 and on "negative" inputs is
    4.3e-4 (relative) off its float64 value, the reference 1.3e-4. The teacher of a distance
    is a batch of one, as in the evaluator."""
    if op.pairwise:
        args = [_values(sig.inputs[0], family, 0), _values(sig.inputs[0], family, 1, archs=1)]
    else:
        args = [_values(k, family, i) for i, k in enumerate(sig.inputs)]
    for dtype_args, rtol in (([_double(x) for x in args], 1e-9), (args, 1e-3)):
        kwargs = {"generator": torch.Generator().manual_seed(7)} if op.stochastic else {}
        try:
            want = primitives.apply(op.name, *dtype_args, **kwargs)
        except primitives.ShapeError:
            pytest.skip("the kernel refuses these shapes")
        first = dtype_args[0]
        n_arch = first.n_arch if isinstance(first, Ragged) else first.shape[0]
        for a in range(n_arch):
            if op.pairwise:
                ins = [per_model(dtype_args[0], a), per_model(dtype_args[1], 0)]
            else:
                ins = [per_model(x, a) for x in dtype_args]
            if op.stochastic:
                ins.append(generator(7))
            _close(REFERENCE[op.name](*ins), per_model(want, a), rtol)


# ---------------------------------------------------------------- the torch module --------
def load_exported(source: str) -> Any:
    """Run an exported module with gp-proxy, its primitives and einops unimportable."""
    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"torch", "collections", "__future__"}, imported
    blocked = {m: sys.modules.pop(m, None) for m in list(sys.modules)
               if m.split(".")[0] in ("gp_proxy", "primitives", "einops")}
    sys.modules.update({"gp_proxy": None, "primitives": None, "einops": None})  # type: ignore[dict-item]
    try:
        namespace: dict[str, Any] = {"__name__": "exported"}
        exec(compile(source, "<exported>", "exec"), namespace)
    finally:
        for m in ("gp_proxy", "primitives", "einops"):
            sys.modules.pop(m, None)
        sys.modules.update({k: v for k, v in blocked.items() if v is not None})
    return namespace


def model_inputs(cache: FeatureCache, i: int) -> tuple[dict, dict, dict]:
    s = cache.students[i]
    layers = {"weight": s.weights, "grad": s.grads, "act": s.acts, "params": s.params}
    return dict(cache.teacher), dict(s.features), layers


def _evaluated(cache: FeatureCache, formulas: list[str], seed: int = 0
               ) -> dict[str, torch.Tensor] | None:
    results = Evaluator(cache, device="cpu", seed=seed).evaluate(formulas)
    if not all(r.ok and np.isfinite(r.scores).all() for r in results):
        return None
    return {f: torch.from_numpy(np.asarray(r.scores)).double()
            for f, r in zip(formulas, results, strict=True)}


def _agree(got: list[float], want: list[float], what: str = "") -> None:
    """Float32 agreement: 1e-4 relative, 1e-5 absolute on the scale of the scores (a small KL
    is the difference of two entropy-sized float32 sums: kl_t4(sigmoid(sqrt(k3))) is 0.003,
    1.6e-6 apart in the kernel's and the reference's order of operations)."""
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, max(map(abs, want))),
                               err_msg=what)


def check_export(cache: FeatureCache, formula: str, sign: int = 1, seed: int = 0) -> str:
    """The exported module against the evaluator on every student of ``cache``; says what
    was compared ("": the formula does not evaluate there; "scores": end to end; "parts":
    a combination's parts and its combine). A plain formula: its scores. A rank/z combination
    (calibrated on these students, as a campaign calibrates on its benchmark): each part's
    raw score, and ``combine`` of the evaluator's parts gives Calibration.place's values to
    the last bit (z: to 1e-12); end to end, where every part's students are apart by more than
    rounding (a rank placement between neighbours 1 ulp apart turns a rounding difference
    into a whole step), the same order and scores within 1e-3."""
    proxy = Proxy(formula, sign=sign, seed=seed)
    if not proxy.cross_arch:
        values = _evaluated(cache, [proxy.node.text], seed)
        if values is None:
            return ""
        module = load_exported(to_torch(formula, sign=sign, seed=seed))
        got = [module["proxy"](*model_inputs(cache, i)) for i in range(len(cache.students))]
        _agree(got, (sign * values[proxy.node.text]).tolist(), formula)
        return "scores"
    texts = [p.text for p in proxy.parts()]
    values = _evaluated(cache, texts, seed)
    if values is None:
        return ""
    cal = Calibration.from_parts(proxy.node, values)
    want = (sign * cal.place(proxy.node, values)).tolist()
    # a calibration of these students is their ranking (z: mean and std summed in sorted order)
    np.testing.assert_allclose(want, proxy.combine(values), rtol=1e-12, atol=1e-12)
    module = load_exported(to_torch(formula, sign=sign, seed=seed, calibration=cal))
    got_parts = [module["parts"](*model_inputs(cache, i)) for i in range(len(cache.students))]
    for t in texts:
        _agree([float(g[t]) for g in got_parts], values[t].tolist(), t)
    alone = [module["combine"]({t: v[i].reshape(1) for t, v in values.items()})
             for i in range(len(cache.students))]
    assert alone == want
    def separated(v: torch.Tensor) -> bool:
        gaps = torch.diff(torch.sort(v).values)
        # (a part of pure rounding, as mean_layers(znorm(x)) ~ 1e-8, is never separated)
        return bool((gaps > 1e-3 * v.abs().max().clamp_min(1e-3)).all())

    if all(separated(v) for v in cal.reference.values()):  # every level placed
        # a part's rounding (1e-7 relative) moves its placement by that over the gap to the
        # nearest reference neighbour: with neighbours a thousandth of the scale apart, the
        # same order and scores within a thousandth
        got = [module["proxy"](*model_inputs(cache, i)) for i in range(len(cache.students))]
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert all(got[i] < got[j] for i in range(len(want)) for j in range(len(want))
                   if want[i] < want[j] - 1e-9), (got, want)  # every strict order kept
        return "scores"
    return "parts"


@pytest.mark.parametrize("formula", [
    "sp_dist(k2)", "kl_t4(softmax_c(k3))", "sp_dist(mask(k1))", "sp_dist(drop(channel(k2)))",
    "mean_layers(fro_norm(mul(grad,weight)))", "sum_layers(dist_kl(act,znorm(act)))",
    "log_params", "rank_sub_w2(cosine(satt(k2)),sum_layers(sqrt(l1_norm(weight))))",
    "z_add(rank_add(kl_t4(k3),hard(k3)),mean_layers(mean(grad)))",
])
def test_exported_module_scores_as_the_evaluator(cache: FeatureCache, formula: str) -> None:
    # hard(k3) ties students (a fraction of 12 samples), so that combination is compared by
    # its parts and combine only
    want = "parts" if "hard" in formula else "scores"
    assert check_export(cache, formula, sign=-1, seed=3) == want


def test_random_formulas_of_the_campaigns_generator_export_exactly(cache: FeatureCache) -> None:
    """A property test over the trees campaigns grow: every formula that evaluates exports
    to a module giving the same scores."""
    formulas = random_formulas(cache, 40, random.Random(11))
    checked = [check_export(cache, f) for f in formulas]
    assert checked.count("scores") >= 20, checked


def test_committed_reference_run_exports_to_the_evaluators_scores(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The issue's bar: the export of the committed reference campaign scores students of the
    embedded benchmark as the evaluator does (its calibration placing them, per model)."""
    bench = load_benchmark(ROOT / "benchmarks" / "fmnist")
    run = run_config(REFERENCE_RUN)
    assert run is not None
    archs = list(bench.truth.archs)[::12]  # 14 of the 162, across the space
    cfg = bench.cache_config(run.teacher_init, run.init_seed, run.act_samples)
    cache = load_cache(tmp_path_factory.mktemp("refcache"), cfg, archs)
    best = json.loads((REFERENCE_RUN / "best_proxy.json").read_text())
    cal = Calibration.load(REFERENCE_RUN / "calibration.json")
    proxy = Proxy.load(REFERENCE_RUN)
    parts = Evaluator(cache, device="cpu").evaluate([p.text for p in proxy.parts()])
    values = {p.text: torch.from_numpy(np.asarray(r.scores)).double()
              for p, r in zip(proxy.parts(), parts, strict=True)}
    want = (best["sign"] * cal.place(proxy.node, values)).tolist()
    exported = load_exported(export(REFERENCE_RUN, "torch"))
    got = [exported["proxy"](*model_inputs(cache, i)) for i in range(len(archs))]
    _agree(got, want)


def test_exported_module_runs_as_a_file_with_torch_alone(cache: FeatureCache,
                                                         tmp_path: Path) -> None:
    source = to_torch("kl_t4(k3)", sign=-1)
    path = tmp_path / "my_proxy.py"
    path.write_text(source)
    t, s, _ = model_inputs(cache, 0)
    torch.save({"t": t, "s": s}, tmp_path / "inputs.pt")
    code = ("import sys; sys.modules.update(gp_proxy=None, primitives=None, einops=None); "
            "import torch, my_proxy; d = torch.load('inputs.pt'); "
            "print(repr(my_proxy.proxy(d['t'], d['s'], {})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    want = _evaluated(cache, ["kl_t4(k3)"])
    assert want is not None
    _agree([float(out)], [-float(want["kl_t4(k3)"][0])])
    compile(source, "my_proxy.py", "exec")  # and it is valid, readable Python
    assert "def proxy(" in source and "kl_t4(k3)" in source


@pytest.mark.parametrize("formula", ["mean_layers(fro_norm(mul(grad,weight)))",
                                     "rank_add(sp_dist(k2),sum_layers(l1_norm(act)))"])
def test_exported_module_scores_models_as_proxy_score(formula: str) -> None:
    """From models, as a user would: the teacher's features in eval mode, the student's in
    train mode, its layers from the exported collect_student_layers; the scores are
    Proxy.score's (a combination calibrated on the same reference models)."""
    from gp_proxy.spaces import get_space

    space = get_space("fmnist-cnn")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 14, 14, generator=g), torch.randint(0, 10, (8,), generator=g)
    teacher = space.build_teacher(seed=0).eval()
    archs = ["w8-d111-k3", "w12-d211-k5", "w16-d121-k3", "w8-d333-k5", "w12-d123-k3"]
    models = [space.build(a) for a in archs]
    proxy = Proxy(formula, sign=-1, act_samples=4)
    cal = proxy.calibrate(teacher, models, x, y) if proxy.cross_arch else None
    module = load_exported(to_torch(formula, sign=-1, calibration=cal, act_samples=4))
    new = space.build("w16-d333-k3", seed=3)
    with torch.no_grad():
        t_feats = teacher.features(x)
    for model in [*models, new]:
        want = proxy.score(teacher, model, x, y)
        model.train()
        with torch.no_grad():
            s_feats = model.features(x)
        layers = module["collect_student_layers"](model, x, y, act_samples=4)
        np.testing.assert_allclose(module["proxy"](t_feats, s_feats, layers), want,
                                   rtol=1e-4, atol=1e-3 if cal is not None else 1e-6)


def test_combined_formula_without_calibration_is_refused() -> None:
    with pytest.raises(GpProxyError, match="calibration"):
        to_torch("rank_add(kl_t4(k3),sp_dist(k2))")


# ---------------------------------------------------------------- sympy and latex ---------
def _defined(eq: sp.Eq) -> str:
    """The op an ``Eq`` defines: f(X)[i] = ... or f(S, T) = ..."""
    lhs = eq.lhs.base.label if isinstance(eq.lhs, sp.Indexed) else eq.lhs
    return str(lhs.func)


def test_sympy_export_is_mathematics() -> None:
    expr, defs = to_sympy("rank_sub_w2(mse(batchnorm(k1)),sum_layers(fro_norm(tanh(weight))))",
                          -1)
    names = {str(f.func) for f in expr.atoms(sp.Function)}
    assert "rank_sub_w2" not in names and "rank" in names  # a combiner is arithmetic on ranks
    assert "tanh" in names  # element-wise ops are sympy's own functions
    assert expr == -(sp.Function("rank")(sp.Function("mse")(
        sp.Function("batchnorm")(sp.Symbol("k1_S")), sp.Function("batchnorm")(
            sp.Symbol("k1_T")))) - 2 * sp.Function("rank")(sp.Function("sum_layers")(
                sp.Function("fro_norm")(sp.tanh(sp.Symbol("weight"))))))
    assert {"mse", "batchnorm", "sum_layers", "fro_norm", "rank"} == {_defined(d) for d in defs}
    for d in defs:  # every definition is a closed form: no undefined function on its right
        assert isinstance(d, sp.Eq)
        undefined = [f for f in d.rhs.atoms(sp.Function)
                     if isinstance(f, sp.core.function.AppliedUndef)]
        assert not undefined, d


def test_definitions_compute_what_the_kernels_do() -> None:
    """Spot checks of the index notation against numbers: the MSE, the per-layer Frobenius
    norm and the rank normaliser evaluated by sympy on small arrays."""
    from primitives.definitions import DEFINITIONS

    N, C, P = sp.symbols("N C P", positive=True, integer=True)
    s_, t_ = [[[1.0, 2.0]], [[3.0, -1.0]]], [[[0.0, 2.0]], [[1.0, 1.0]]]
    rhs = DEFINITIONS["mse"].rhs.subs({N: 2, C: 1, P: 2})
    got = rhs.doit().replace(lambda x: isinstance(x, sp.Indexed), lambda x: (
        s_ if str(x.base) == "S" else t_)[int(x.indices[0]) - 1][int(x.indices[1]) - 1][
            int(x.indices[2]) - 1])
    assert float(got) == pytest.approx(float(primitives.apply(
        "mse", torch.tensor([s_]), torch.tensor([t_]))[0]))
    x = [3.0, 1.0, 3.0, 7.0]
    rank = DEFINITIONS["rank01"].rhs.subs(sp.Symbol("A", positive=True, integer=True), 4)
    ranks = [float(rank.subs(sp.Symbol("a", integer=True), i).doit().replace(
        lambda v: isinstance(v, sp.Indexed), lambda v: x[int(v.indices[0]) - 1]))
        for i in range(1, 5)]
    from primitives.instinct import NORMALISERS

    assert ranks == NORMALISERS["rank01"][0](torch.tensor(x, dtype=torch.float64)).tolist()


@pytest.mark.parametrize("op", [op for op in OPS if op.family != "elementwise"],
                         ids=lambda o: o.name)
def test_every_tensor_op_has_a_definition(op: primitives.Op) -> None:
    sig = op.signatures[0]
    arg = {Kind.FMAP: "k1", Kind.VEC: "k3", Kind.SEQ: "channel(k1)", Kind.WSET: "weight",
           Kind.ASET: "act", Kind.LVAL: "l1_norm(weight)"}
    formula = f"{op.name}({','.join(arg[k] for k in sig.inputs)})"
    if sig.output is not Kind.SCORE:
        formula = {Kind.LVAL: "sum_layers({})", Kind.WSET: "sum_layers(mean({}))",
                   Kind.ASET: "sum_layers(mean({}))"}.get(sig.output, "mse({})").format(formula)
    expr, defs = to_sympy(formula)
    assert defs and all(isinstance(d, sp.Eq) for d in defs)
    assert sp.latex(expr)


def test_cli_exports_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proxy.py"
    assert main(["export", str(REFERENCE_RUN), "--to", "torch", "--out", str(out)]) == 0
    assert "def proxy(" in out.read_text()
    assert main(["export", str(REFERENCE_RUN), "--to", "latex"]) == 0
    assert "\\operatorname{rank}" in capsys.readouterr().out
    assert main(["export", str(REFERENCE_RUN), "--to", "sympy"]) == 0
    assert "where" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothing"), "--to", "torch"]) != 0
    assert "no best_proxy.json" in capsys.readouterr().err
    assert main(["export", str(REFERENCE_RUN), "--to", "onnx"]) != 0
