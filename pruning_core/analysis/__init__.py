"""Analysis: sweeps, sensitivity maps (exact, second-order estimate, proxies, refinement), what-if, estimates."""
