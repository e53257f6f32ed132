"""The GP loop: the typed DEAP primitive set from the registry, variation, and the campaign
(schemes, checkpoints, reports).
"""
