"""qsens: INT8 sensitive-layer search for BM1684 in JAX."""
