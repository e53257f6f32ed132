"""Plumbing every stage uses: the plug-in registry idiom, artifact schemas, atomic files, rank
correlations (numba), provenance, progress.
"""
