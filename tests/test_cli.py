"""The command line: real invocations, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gp_proxy.cli import main


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
