"""Continual pruning: domains arrive in order (D1..DT), strategies prune at every step, R matrix and BWT.

`domains` (the checked sequence of corpora), `strategies` (latest, sequential, accumulated, copal, joint: which
model and statistics each step prunes with), `metrics` (R matrix, BWT, forward transfer, mask overlap) and
`run` (`run_continual`, the entry of the CLI, the job kind "continual" and the benchmark).
"""

from pruning_core.continual.domains import Domain, DomainSequence, domain_sequence
from pruning_core.continual.metrics import average_perplexity, backward_transfer, forward_transfer, mask_overlap
from pruning_core.continual.strategies import STRATEGIES, Strategy, get_strategy

__all__ = ["Domain", "DomainSequence", "STRATEGIES", "Strategy", "average_perplexity", "backward_transfer",
           "domain_sequence", "forward_transfer", "get_strategy", "mask_overlap"]
