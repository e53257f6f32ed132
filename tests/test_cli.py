"""The command line: real invocations, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gp_proxy.cli import main

from .conftest import _cfg


def test_formula_command_prints_canonical_form_and_latex(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["formula", "rank_add(sum_layers(fro_norm(weight)),l1(nop(k2)))"]) == 0
    out = capsys.readouterr().out
    assert "canonical   rank_add(l1(k2),sum_layers(fro_norm(weight)))" in out
    assert "kind        score" in out
    assert r"\ell_1" in out


def test_bad_formula_is_one_line_with_position(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["formula", "l1(mask(k3))"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "mask does not accept (vec)" in err and "position 3" in err
    assert "Traceback" not in err


def test_primitives_listing_filters_by_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["primitives", "--family", "distance"]) == 0
    out = capsys.readouterr().out
    assert "kl_t16" in out and "relu" not in out
    assert main(["primitives", "--family", "nope"]) == 2


def test_console_script_runs_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "gp_proxy.cli", "formula", "kl_t4(k3)"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "kind        score" in proc.stdout


def test_table_lists_every_op() -> None:
    import primitives

    text = primitives.table()
    for op in primitives.ops():
        assert f"\n{op.name} " in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import gp_proxy

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gp-proxy {gp_proxy.__version__}"


def test_config_keys_are_listed_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.config import CampaignConfig

    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for key in CampaignConfig.model_fields:
        assert key in out
    assert main(["evolve", "--help"]) == 0
    assert "valid_for" in capsys.readouterr().out.replace("\n", " ")

def test_cli_evolve_inspectable_run(bench: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gp_proxy.cli import main

    run = tmp_path / "run"
    code = main(["evolve", *_cfg(bench, tmp_path / "cache", generations=2), "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "#params" in out and "held-out" in out
    for name in ("config.yaml", "history.jsonl", "hall_of_fame.csv", "best_proxy.json",
                 "checkpoint.json", "env.json", "pareto.csv"):
        assert (run / name).exists(), name
    assert main(["resume", str(run), "generations=3"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["generation"] == 3
    capsys.readouterr()
    assert main(["inspect", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "hall of fame" in out and "\\operatorname" in out
    for pic in ("evolution.png", "scatter.png", "tree.png"):
        assert (run / pic).stat().st_size > 1000, pic
    assert main(["inspect", str(tmp_path)]) == 2
    assert main(["evolve", "populaton=3"]) == 2
    assert "did you mean 'population'" in capsys.readouterr().err


def test_score_command_prints_formula_next_to_baselines(bench: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from gp_proxy.cli import main

    cache = str(tmp_path / "cache")
    assert main(["score", "autodas-resnet-instinct", "--benchmark", str(bench),
                 "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "formula: sum_layers(fro_norm(logsoftmax(grad)))" in out
    assert "#params" in out and "FLOPS" in out and "held-out" in out
    assert "Kendall τ between the formula and #params" in out
    assert main(["score", "sum_layers(fro_norm(logsoftmax(grad))", "--benchmark", str(bench),
                 "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "position" in err
