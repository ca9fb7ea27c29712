"""simulations/ — floor 4: populations, baselines, engines, metrics, plots, and the `homebody` CLI root.

May import every other folder.
"""
