"""Campaign configuration: every bad key or value is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gp_proxy.config import ConfigError, load_config


def test_config_errors_name_the_key_and_suggest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'populaton' \\(did you mean 'population'"):
        load_config(None, ["populaton=10"])
    with pytest.raises(ConfigError, match="population: Input should be greater than or equal"):
        load_config(None, ["population=2"])
    with pytest.raises(ConfigError, match="scheme"):
        load_config(None, ["scheme=annealing"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["population"])
    p = tmp_path / "c.yaml"
    p.write_text("population: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    p.write_text("population: 8\nseed: 3\n")
    cfg = load_config(p, ["seed=4"])
    assert cfg.population == 8 and cfg.seed == 4
