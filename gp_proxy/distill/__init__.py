"""Distillation: fixed losses, the distiller grammar, Auto-KD's search, DistPro's learned process,
and their comparison.
"""
