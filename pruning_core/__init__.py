"""PruneScope's pruning core: models, corpora, the layer walk, pruning methods, metrics, store.

Pure library code: no streamlit, no plotly imports. Every long function takes a progress callback
(`pruning_core.progress.Progress`) and raises `PruneScopeError` subclasses with messages a user can act on.
"""

__version__ = "0.1.0"
