"""The mask export capability: a chosen setting out of PruneScope as masks, model, recipe and report."""
