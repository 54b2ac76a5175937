"""Where computation runs: device placement and layer offload, CPU/GPU kernels, malloc settings (the bottom floor)."""
