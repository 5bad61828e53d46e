"""The search engine (problem / evaluators / strategies / selectors / job) and TPU-MLIR's searchers on it."""

#: ``qsens search --variant`` names besides ``sensitive`` (here, so the CLI lists them without importing JAX)
VARIANTS = ("auto_n", "auto_n_ordered", "neighbour", "leave_one_out", "grad_screen", "threshold_grid",
            "threshold_optax", "cost_aware")
