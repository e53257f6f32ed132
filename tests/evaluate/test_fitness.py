"""Fitness metrics beyond plain τ: τ within #params bins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gp_proxy.config import ConfigError, load_config
from gp_proxy.evolve.campaign import Campaign

from ..conftest import _cfg


def test_fitness_within_params_bins(bench: Path, tmp_path: Path) -> None:
    cfg = load_config(None, _cfg(bench, tmp_path / "cache", generations=1,
                                 fitness="tau_params_bins"))
    c = Campaign(cfg, tmp_path / "bins")
    c.run()
    best = json.loads((tmp_path / "bins" / "best_proxy.json").read_text())
    assert best["fitness"] == pytest.approx(best["train_tau_in_params_bins"])
    with pytest.raises(ConfigError, match="fitness"):
        load_config(None, ["fitness=spearman"])
