"""gp-proxy: discover training-free proxies for distillation-aware architecture search."""

from primitives.errors import FormulaError, GpProxyError, KindError, ShapeError

__all__ = ["FormulaError", "GpProxyError", "KindError", "ShapeError", "__version__"]

__version__ = "0.1.0"
