"""Exceptions with messages a user can act on.

Every error raised on purpose by the core is a `PruneScopeError`; the CLI prints its message and exits
non-zero, the dashboard shows it as a short notice. Messages name the problem and the fix in one sentence.
"""


class PruneScopeError(Exception):
    """Base class of all errors the core raises on purpose (bad input, missing files, offline hub...)."""


class ModelLoadError(PruneScopeError):
    """A model could not be loaded (missing path, corrupt GGUF, offline hub id, unsupported architecture)."""


class CorpusError(PruneScopeError):
    """A corpus could not be read, or is too short for the requested windows."""


class ConfigError(PruneScopeError):
    """A setting is invalid (unknown method or structure, sparsity outside [0, 1), malformed N:M...)."""


class JobCancelled(PruneScopeError):
    """Raised inside long work when the user cancelled it; finished results stay stored."""
