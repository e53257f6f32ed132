"""Using a discovered proxy elsewhere: the Proxy API (per model, calibrated), NAS adapters and the
torch/sympy/LaTeX export.
"""
