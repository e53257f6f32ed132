"""Distillation losses on tiny tensors and a resumable distillation run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gp_proxy.bench.data import Split
from gp_proxy.distill.losses import LOSSES, build_loss
from gp_proxy.distill.runner import DistillConfig, _read_checkpoint, distill
from gp_proxy.spaces import get_space
from primitives import GpProxyError

G = torch.Generator().manual_seed(0)
S = {"k1": torch.randn(4, 3, 4, 4, generator=G), "k2": torch.randn(4, 5, 2, 2, generator=G),
     "k3": torch.randn(4, 6, generator=G)}
T = {"k1": torch.randn(4, 7, 4, 4, generator=G), "k2": torch.randn(4, 8, 2, 2, generator=G),
     "k3": torch.randn(4, 6, generator=G)}
Y = torch.tensor([0, 1, 2, 3])
SHAPES = {k: (tuple(S[k].shape), tuple(T[k].shape)) for k in S}


def _needs_a_spec(name: str) -> bool:
    """Losses built from a spec the config must supply (a formula, a distiller, a process
    file; tested in their own files) rather than from shapes alone."""
    defaults = DistillConfig()
    return any(getattr(defaults, field) is None
               for field in getattr(LOSSES.get(name), "hyperparameters", {}).values())


@pytest.mark.parametrize("name", sorted(n for n in LOSSES if not _needs_a_spec(n)))
def test_every_loss_is_finite_differentiable_and_zero_on_itself(name: str) -> None:
    loss = build_loss(name, SHAPES)
    value = loss({k: v.clone().requires_grad_(True) for k, v in S.items()}, T, Y)
    assert value.dim() == 0 and math.isfinite(value.item())
    value.backward()
    if name not in ("fitnet", "ickd"):  # those map the student through a learned regressor
        same = build_loss(name, {k: (v[0], v[0]) for k, v in SHAPES.items()})
        assert same(S, S, Y).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_and_dkd_by_hand() -> None:
    t4 = 4.0
    pt, log_ps = F.softmax(T["k3"] / t4, 1), F.log_softmax(S["k3"] / t4, 1)
    want = t4**2 * (pt * (pt.log() - log_ps)).sum(1).mean()
    assert build_loss("kd", SHAPES)(S, T, Y).item() == pytest.approx(want.item(), rel=1e-5)
    # DKD with alpha = beta = 1 and no target-class split difference: TCKD + NCKD, checked
    # against its definition for one sample
    dkd = build_loss("dkd", SHAPES, alpha=1.0, beta=1.0, t=1.0)
    s, t = S["k3"][:1], T["k3"][:1]
    ps, pt1 = s.softmax(1)[0], t.softmax(1)[0]
    bs = torch.stack([ps[0], 1 - ps[0]])
    bt = torch.stack([pt1[0], 1 - pt1[0]])
    tckd = (bt * (bt.log() - bs.log())).sum()
    qs, qt = ps[1:] / ps[1:].sum(), pt1[1:] / pt1[1:].sum()
    nckd = (qt * (qt.log() - qs.log())).sum()
    got = dkd({"k3": s}, {"k3": t}, Y[:1]).item()
    assert got == pytest.approx((tckd + nckd).item(), rel=1e-4)


def test_at_and_sp_by_hand() -> None:
    at = build_loss("at", SHAPES)(S, T, Y).item()
    want = 0.0
    for k in ("k1", "k2"):
        a = F.normalize(S[k].pow(2).mean(1).flatten(1), dim=1)
        b = F.normalize(T[k].pow(2).mean(1).flatten(1), dim=1)
        want += float((a - b).pow(2).mean())
    assert at == pytest.approx(want, rel=1e-5)
    gs = F.normalize(S["k2"].flatten(1) @ S["k2"].flatten(1).T, dim=1)
    gt = F.normalize(T["k2"].flatten(1) @ T["k2"].flatten(1).T, dim=1)
    assert build_loss("sp", SHAPES)(S, T, Y).item() == pytest.approx(
        float((gs - gt).pow(2).sum() / 16), rel=1e-5)


def test_formula_loss_uses_the_distance_part_and_refuses_non_differentiable_ops() -> None:
    loss = build_loss("formula", SHAPES,
                      formula="rank_add(sp_dist(k2),mean_layers(fro_norm(weight)))")
    gs = F.normalize(S["k2"].flatten(1) @ S["k2"].flatten(1).T, dim=1)
    assert loss(S, T, Y).item() > 0 and math.isfinite(float((gs ** 2).sum()))
    with pytest.raises(GpProxyError, match="hard is not differentiable"):
        build_loss("formula", SHAPES, formula="hard(k3)")
    with pytest.raises(GpProxyError, match="mask"):
        build_loss("formula", SHAPES, formula="sp_dist(mask(k2))")


def _data(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 14, 14, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        x[i, 0, c] += 2.0
    return Split(x, y)


def test_distillation_resumes_to_identical_weights(tmp_path: Path) -> None:
    space = get_space("fmnist-cnn")
    train, test = _data(96, 0), _data(40, 1)
    teacher = space.build_teacher(seed=0)
    cfg = DistillConfig(epochs=2, batch_size=32, losses={"kd": 0.9, "at": 1.0, "fitnet": 0.5})
    full = space.build("w8-d111-k3", seed=0)
    distill(full, teacher, train, test, cfg, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop(epoch: int, loss: float) -> None:
        raise Stop

    part = space.build("w8-d111-k3", seed=0)
    with pytest.raises(Stop):
        distill(part, teacher, train, test, cfg, tmp_path / "part", on_epoch=stop)
    assert _read_checkpoint(tmp_path / "part" / "checkpoint.safetensors")[1]["epoch"] == 1
    assert not (tmp_path / "part" / "checkpoint.json").exists()  # one file: no torn pair
    resumed = space.build("w8-d111-k3", seed=0)
    metrics = distill(resumed, teacher, train, test, cfg, tmp_path / "part")
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert 0 <= metrics["test_acc"] <= 1 and len(metrics["train_loss"]) == 2
    with pytest.raises(GpProxyError, match="other settings"):
        distill(resumed, teacher, train, test, DistillConfig(epochs=3), tmp_path / "part")


def test_a_checkpoint_without_its_epoch_record_is_one_clear_error(tmp_path: Path) -> None:
    from gp_proxy.core.files import save_tensors

    run = tmp_path / "run"
    save_tensors(run / "checkpoint.safetensors", {"rng": torch.zeros(3)},
                 {"state": '{"format": 2, "epoch": "abc", "history": [], "seconds": 0.0}'})
    with pytest.raises(GpProxyError, match=r"checkpoint\.safetensors: not a checkpoint"):
        _read_checkpoint(run / "checkpoint.safetensors")


def test_formula_loss_is_divided_by_its_first_batch_value() -> None:
    """An evolved distance at 1e15 no longer swamps the other terms: each part starts at 1,
    and the unit is a buffer (saved with the checkpoint, kept on resume)."""
    from gp_proxy.distill.losses import FormulaLoss

    loss = FormulaLoss({}, formula="rank_add(mse(k2),mean_layers(fro_norm(weight)))")
    g = torch.Generator().manual_seed(0)
    s = {"k2": torch.randn(4, 8, 3, 3, generator=g) * 1e4}
    t = {"k2": torch.randn(4, 8, 3, 3, generator=g) * 1e4}
    first = loss(s, t, torch.zeros(4))
    assert float(first) == pytest.approx(1.0)
    raw = float(loss.scale[0])
    assert raw > 1e7  # what the raw distance was (features at 1e4: squared errors at 1e8)
    half = {"k2": s["k2"] * 0.5 + t["k2"] * 0.5}
    assert 0 < float(loss(half, t, torch.zeros(4))) < 1  # later batches in the same unit
    assert "scale" in loss.state_dict()


def test_distill_cli_on_fake_idx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    from gp_proxy.cli import main

    from ..bench.test_bench_and_data import _fake_fmnist
    from ..tiny_benchmark import make_tiny_benchmark

    data = tmp_path / "idx"
    data.mkdir()
    _fake_fmnist(data, 60, gz=True)
    bench = make_tiny_benchmark(tmp_path / "bench", n_archs=4)
    argv = ["distill", "--student", "w8-d111-k3", "--out", str(tmp_path / "run"),
            "--benchmark", str(bench), "--data", str(data), "--losses", "kd=0.9,sp=1",
            "--epochs", "1", "--train-size", "40"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
    assert main([*argv[:-4], "--losses", "kd=oops"]) == 2


def test_pipeline_report_on_a_tiny_benchmark(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    from ..bench.test_bench_and_data import _fake_fmnist
    from ..tiny_benchmark import make_tiny_benchmark

    data = tmp_path / "idx"
    data.mkdir()
    _fake_fmnist(data, 60, gz=True)
    bench = make_tiny_benchmark(tmp_path / "bench", n_archs=8)
    out = tmp_path / "pipe"
    code = main(["pipeline", "--out", str(out), "--proxy", "sp_dist(k2)", "--benchmark",
                 str(bench), "--data", str(data), "--max-params", "60000", "--seeds", "0,1",
                 "--epochs", "1", "--strategy", "random", "--iterations", "6"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"discovered proxy", "#params", "DisWOT", "random",
                                      "ground-truth best"}
    for r in report["results"].values():
        assert r["params"] <= 60000 and len(r["kd_acc_per_seed"]) == 2
    assert report["results"]["ground-truth best"]["ground_truth_rank_within_budget"] == 1
    assert "| selector |" in (out / "report.md").read_text()
    import csv as _csv

    with (bench / "ground_truth.csv").open() as fh:
        accs = [float(r["kd_mean"]) for r in _csv.DictReader(fh) if int(r["params"]) <= 60000]
    e = report["random_expectation"]
    assert e["ground_truth_kd_mean"] == pytest.approx(sum(accs) / len(accs))
    assert e["rank_within_budget"] == (len(accs) + 1) / 2
    assert "in expectation" in (out / "report.md").read_text()
    # every selector restricted to a campaign's held-out architectures
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_proxy.json").write_text(json.dumps({"formula": "sp_dist(k2)", "sign": 1}))
    (run / "splits.json").write_text(json.dumps({"train": [0, 1, 2, 3, 4], "test": [5, 6, 7]}))
    held = out.parent / "held"
    code = main(["pipeline", "--out", str(held), "--proxy", str(run), "--benchmark", str(bench),
                 "--data", str(data), "--seeds", "0", "--epochs", "1", "--held-out-only"])
    assert code == 0, capsys.readouterr().err
    with (bench / "ground_truth.csv").open() as fh:
        archs = [r["arch"] for r in _csv.DictReader(fh)]
    rep = json.loads((held / "report.json").read_text())
    assert {r["arch"] for r in rep["results"].values()} <= set(archs[5:])
    assert rep["architectures_within_budget"] == 3 and "held-out" in rep["candidates"]
    (run / "splits.json").write_text(json.dumps({"train": [0], "test": [99]}))
    assert main(["pipeline", "--out", str(held), "--proxy", str(run), "--benchmark",
                 str(bench), "--data", str(data), "--held-out-only"]) == 2
    assert main(["pipeline", "--out", str(held), "--proxy", "sp_dist(k2)", "--benchmark",
                 str(bench), "--data", str(data), "--held-out-only"]) == 2


def test_committed_distillation_records_match_the_current_config() -> None:
    """A distillation resumes only if its config.json equals the settings asked for: every
    committed pipeline run must still read as the DistillConfig the pipeline builds (so a
    change of the config's fields or defaults cannot silently orphan them)."""
    root = Path(__file__).resolve().parents[2] / "results"
    records = sorted(root.glob("*/distill/*/config.json"))
    assert len(records) >= 20
    for path in records:
        saved = json.loads(path.read_text())
        assert saved == DistillConfig(epochs=saved["epochs"], seed=saved["seed"]).record(), path


def test_accuracy_per_epoch_is_reported_without_changing_the_training(tmp_path: Path) -> None:
    space = get_space("fmnist-cnn")
    train, test = _data(96, 0), _data(40, 1)
    teacher = space.build_teacher(seed=0)
    cfg = DistillConfig(epochs=2, batch_size=32)
    plain = space.build("w8-d111-k3", seed=0)
    distill(plain, teacher, train, test, cfg, tmp_path / "a")
    seen: list[tuple[int, float]] = []
    watched = space.build("w8-d111-k3", seed=0)
    distill(watched, teacher, train, test, cfg, tmp_path / "b",
            on_accuracy=lambda e, acc: seen.append((e, acc)))
    assert [e for e, _ in seen] == [1, 2] and all(0 <= a <= 1 for _, a in seen)
    for (k, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
