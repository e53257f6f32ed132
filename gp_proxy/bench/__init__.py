"""Ground truth: datasets, the training recipe, the benchmark builder and loader (teacher,
students, KD and CE runs, noise ceiling).
"""
