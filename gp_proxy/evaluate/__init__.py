"""Formulas to scores: the feature cache, the batched evaluator and its backends (local, processes,
Dask) and fitness.
"""
