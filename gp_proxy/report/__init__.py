"""Pictures a person would rather look at: evolution curves, proxy-vs-accuracy scatters, formula
trees, processes.
"""
