"""Training-free student search: strategies (a registry) that pick students under a params/FLOPs
budget with any scorer.
"""
