"""Plumbing every stage uses: the plug-in registry idiom, artifact schemas, atomic files,
provenance, progress.
"""
