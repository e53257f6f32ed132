"""Typed genetic programming over the primitive registry (DEAP)."""
