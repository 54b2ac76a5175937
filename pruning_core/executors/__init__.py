"""How independent units of work (sweep points, map rows, budget rounds) run: locally or on Ray workers."""
