"""Allocation: where the zeros go. Sparsity plans (`plan`), the registry of allocators that make them
(`allocators`), and the search for the most sparsity a quality budget allows (`budget`)."""
