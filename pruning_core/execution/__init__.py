"""Execution: long work as jobs in worker processes, and the SQLite store that holds results and artifacts."""
