"""The `prunescope` command line, one module per command group; nothing in the library imports it."""

from pruning_core.cli.main import EXIT_BAD_INPUT, main

__all__ = ["EXIT_BAD_INPUT", "main"]
