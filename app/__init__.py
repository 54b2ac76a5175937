"""PruneScope's dashboard layer: Streamlit entry point (`app/main.py`), theme, chart wrappers, launcher.

Dependencies run one way: pages -> app -> pruning_core. Chart *specifications* live in
`pruning_core.outputs.figures` (plain dicts, shared with the report); this package only turns them into Plotly
figures with the dashboard's theme and shows them.
"""
