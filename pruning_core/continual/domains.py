"""Domain sequences of continual pruning: the corpora D1..DT that arrive in order.

A `Domain` is one corpus (an embedded name: wiki, news, pydocs; or the path of a user file) with the split of
`data.py`: its calibration split feeds the statistics of its step, its evaluation split gives one column of the
R matrix. Both come from `protocol.calibration_ids` / `protocol.evaluation_ids` with a `Protocol` whose `calib` is
the domain, so a continual run uses exactly the windows a plain prune on that corpus would.

A `DomainSequence` is the ordered, checked list: at least one domain, no repeats, every split readable. It is
checked before any model work so that a typo in the third domain fails in a second, not after two steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import torch

from pruning_core import data
from pruning_core.errors import ConfigError, CorpusError
from pruning_core.models import LoadedModel
from pruning_core.protocol import Protocol, calibration_ids, corpus_key, evaluation_ids


@dataclass(frozen=True)
class Domain:
    """One corpus of the sequence.

    name: an embedded corpus (`data.EMBEDDED_CORPORA`), a hub corpus (online only) or a user file path; it is
    also the domain's key in every result (R matrix columns, perplexity dicts).
    column: the text column of a .csv/.parquet/.jsonl user file (None = the file's default).
    """

    name: str
    column: Optional[str] = None

    @property
    def label(self) -> str:
        """Short display name (`data.corpus_display_name`): the corpus name, or a user file's own name."""
        return data.corpus_display_name(self.name)

    def protocol(self, base: Protocol) -> Protocol:
        """`base` with this domain as the calibration corpus (nsamples, seqlen, seed... unchanged)."""
        return replace(base, calib=self.name, calib_column=self.column)

    def calibration_ids(self, loaded: LoadedModel, base: Protocol) -> torch.Tensor:
        """(nsamples, seqlen) calibration windows of this domain under `base`."""
        return calibration_ids(loaded, self.protocol(base))

    def evaluation_ids(self, loaded: LoadedModel, base: Protocol) -> torch.Tensor:
        """(n <= eval_windows, seqlen) evaluation windows of this domain under `base`."""
        return evaluation_ids(loaded, self.name, base, self.column)

    def identity(self) -> dict:
        """Content identity of both splits (sha256 of the text), for store keys."""
        return {"calibration": corpus_key(self.name, "calibration", self.column),
                "evaluation": corpus_key(self.name, "evaluation", self.column)}

    def check_readable(self) -> "Domain":
        """Read both splits once; a missing or unreadable corpus raises ConfigError naming this domain."""
        for split in data.SPLITS:
            try:
                data.load_corpus_text(self.name, split, self.column)
            except CorpusError as exc:
                raise ConfigError(f"Domain '{self.name}' cannot be read ({split} split): {exc}") from None
        return self


class DomainSequence:
    """The ordered domains D1..DT of a continual run (checked on construction).

    domains: names (or `Domain` objects), in arrival order; a string "wiki,news,pydocs" is split at commas.
    check: read every split now (default); tests of pure logic may skip it.
    """

    def __init__(self, domains, check: bool = True):
        if isinstance(domains, str):
            domains = [part.strip() for part in domains.split(",") if part.strip()]
        self.domains: tuple[Domain, ...] = tuple(d if isinstance(d, Domain) else Domain(str(d)) for d in domains)
        if not self.domains:
            raise ConfigError("A continual run needs at least one domain; give e.g. --domains wiki,news,pydocs.")
        names = [d.name for d in self.domains]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"Domain(s) {', '.join(repeated)} appear more than once in the sequence; give each "
                              "corpus once (a repeated domain would be calibrated on twice).")
        if check:
            for domain in self.domains:
                domain.check_readable()

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def __len__(self) -> int:
        return len(self.domains)

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains)

    def __getitem__(self, index: int) -> Domain:
        return self.domains[index]

    def identity(self) -> list[dict]:
        """Every domain's name and split hashes, in order (what a stored step depends on)."""
        return [{"name": d.name, "column": d.column, **d.identity()} for d in self.domains]

    def evaluation_ids(self, loaded: LoadedModel, base: Protocol) -> dict[str, torch.Tensor]:
        """{domain name: evaluation windows}, read before any pruning so a too-short split fails first."""
        return {d.name: d.evaluation_ids(loaded, base) for d in self.domains}


def domain_sequence(domains: Sequence[str] | str, check: bool = True) -> DomainSequence:
    """`DomainSequence(domains, check)`: the checked sequence of corpora, in arrival order."""
    return DomainSequence(domains, check)
