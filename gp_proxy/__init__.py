"""gp-proxy: discover training-free proxies for distillation-aware architecture search.

The public API (imported lazily, so ``import gp_proxy`` stays light)::

    from gp_proxy import Proxy, Calibration, make_measure, NASLibPredictor
    from gp_proxy import register_space, get_space, SearchSpace, FeatureNet
    from gp_proxy import register_dataset, register_measure, register_loss
"""

from __future__ import annotations

import importlib
from typing import Any

from primitives.errors import FormulaError, GpProxyError, KindError, ShapeError

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "Proxy": "gp_proxy.plugin.proxy", "Calibration": "gp_proxy.plugin.proxy",
    "make_measure": "gp_proxy.plugin.proxy", "NASLibPredictor": "gp_proxy.plugin.proxy",
    "load_proxy": "gp_proxy.plugin.proxy",
    "SearchSpace": "gp_proxy.spaces", "FeatureNet": "gp_proxy.spaces",
    "get_space": "gp_proxy.spaces", "register_space": "gp_proxy.spaces",
    "register_dataset": "gp_proxy.bench.data", "Split": "gp_proxy.bench.data",
    "register_measure": "gp_proxy.baselines.zerocost", "register_loss": "gp_proxy.distill.losses",
    "zero_cost": "gp_proxy.baselines.zerocost",
    "load_benchmark": "gp_proxy.bench.benchmark",
}

__all__ = ["FormulaError", "GpProxyError", "KindError", "ShapeError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gp_proxy' has no attribute {name!r}")
