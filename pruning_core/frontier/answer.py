"""The frontier's answer in one sentence a manager understands, and the budgets it answers for.

"Stored as compressed-tensors 4-bit (loaded by transformers, vLLM), this model weighs 79.3 MB instead of
269.1 MB, at +8.4 % perplexity on wiki, with GPTQ 4-bit, groups of 64, symmetric: the smallest file within
+10 %."
Every figure in it is a point's: its bytes measured on the files, the dense model's measured files, its measured
perplexity on the worst chosen corpus (`pareto.judge`). Budgets are parsed from what a user types: "10%" or
"0.1" (a perplexity increase), "100MB", "95.5 MiB" or "2GB" (a size on disk; MB = 1000^2 bytes, MiB = 1024^2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Optional

from pruning_core.errors import ConfigError
from pruning_core.frontier.pareto import Judged, best_within_bytes, smallest_within
from pruning_core.outputs.figures import perplexity_change
from pruning_core.units import format_bytes

_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_increase(text: str | float) -> float:
    """'10%' / '+10 %' -> 0.10; '0.1' -> 0.1 (a bare number is a fraction). Refused in one sentence otherwise."""
    raw = str(text).strip().replace(" ", "").lstrip("+")
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"Perplexity budget '{text}' is not understood; give a percentage such as 10% "
                          "(or a fraction such as 0.1).") from None
    if not 0.0 <= value < 100.0:
        raise ConfigError(f"Perplexity budget '{text}' must be a positive percentage such as 10%.")
    return value


def parse_bytes(text: str | int) -> int:
    """'100MB' -> 100_000_000; '95.5 MiB' -> 100_139_008; '2GB'; a bare number is bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = (match.group(2) or "b").lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"Size budget '{text}' is not understood; give a size such as 100MB, 95MiB or 1.5GB.")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"Size budget '{text}' must be more than 0 bytes.")
    return value


def _on(corpus: str, corpora: Sequence[str], labels: Mapping[str, str]) -> str:
    name = labels.get(corpus, corpus)
    if len(corpora) == 1:
        return f"on {name}"
    return f"on {name} (the worst of {', '.join(labels.get(c, c) for c in corpora)})"


def point_sentence(judged: Judged, dense_bytes: int, dense_ppl: Mapping[str, float], corpora: Sequence[str],
                   labels: Optional[Mapping[str, str]] = None) -> str:
    """'Stored as <format> (loaded by <runtimes>), this model weighs N MB instead of M MB, at +P % perplexity on
    <corpus>, with <technique>'; no final stop, so a caller can say why this point."""
    labels = labels or {}
    point = judged.point
    change = perplexity_change(judged.ppl, float(dense_ppl[judged.corpus]))
    return (f"Stored as {point.format_words()}, this model weighs {format_bytes(judged.bytes)} instead of "
            f"{format_bytes(dense_bytes)}, at {change} perplexity {_on(judged.corpus, corpora, labels)}, with "
            f"{point.technique}")


def answer(judged: Sequence[Judged], dense: Judged, corpora: Sequence[str], max_increase: Optional[float] = None,
           max_bytes: Optional[int] = None, labels: Optional[Mapping[str, str]] = None) -> dict:
    """The answer for one budget: exactly one of `max_increase` (a fraction) or `max_bytes` (bytes).

    dense: the dense model, judged (its bytes are the "instead of" size). Returns {"question" (words),
    "budget" {"max_increase" or "max_bytes"}, "point" (the answer's `Judged`, or None), "sentence" (one or two
    sentences), "found" (bool: a point other than the dense model answers), "note" (the point's note, e.g. the
    embedded model's Q4_1 origin beside a 4-bit figure, or None)}."""
    if (max_increase is None) == (max_bytes is None):
        raise ConfigError("Give one budget: a perplexity increase (--max-increase 10%) or a size (--max-bytes 100MB).")
    labels = labels or {}
    dense_ppl = dense.point.ppl
    others = [j for j in judged if j.point.key != dense.point.key]
    if max_increase is not None:
        question = f"the smallest file within +{100 * max_increase:g} % perplexity"
        best = smallest_within([*others, dense], max_increase)
        found = best is not None and best.point.key != dense.point.key and best.bytes < dense.bytes
        if found:
            sentence = (f"{point_sentence(best, dense.bytes, dense_ppl, corpora, labels)}: the smallest file "
                        f"within +{100 * max_increase:g} %.")
        else:
            closest = min(others, key=lambda j: (j.change, j.bytes), default=None)
            sentence = (f"No smaller file stays within +{100 * max_increase:g} % perplexity: keep the dense model, "
                        f"{format_bytes(dense.bytes)} as {dense.point.format_words()}.")
            if closest is not None:
                sentence += (f" The closest measured: {closest.point.technique}, {format_bytes(closest.bytes)}, "
                             f"{perplexity_change(closest.ppl, float(dense_ppl[closest.corpus]))} "
                             f"{_on(closest.corpus, corpora, labels)}.")
            best = dense if not found else best
        budget = {"max_increase": float(max_increase)}
    else:
        question = f"the best perplexity within {format_bytes(max_bytes)}"
        best = best_within_bytes([*others, dense], int(max_bytes))
        found = best is not None and best.point.key != dense.point.key
        if best is not None:
            sentence = (f"{point_sentence(best, dense.bytes, dense_ppl, corpora, labels)}: the best perplexity "
                        f"within {format_bytes(max_bytes)}.")
        else:
            smallest = min(judged, key=lambda j: (j.bytes, j.change))
            sentence = (f"No measured file fits in {format_bytes(max_bytes)}; the smallest measured is "
                        f"{format_bytes(smallest.bytes)} ({smallest.point.technique}), at "
                        f"{perplexity_change(smallest.ppl, float(dense_ppl[smallest.corpus]))} perplexity "
                        f"{_on(smallest.corpus, corpora, labels)}.")
        budget = {"max_bytes": int(max_bytes)}
    note = best.point.note if best is not None and found else None
    return {"question": question, "budget": budget, "point": best, "sentence": sentence, "found": bool(found),
            "note": note}
