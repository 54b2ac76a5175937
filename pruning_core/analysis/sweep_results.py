"""Sweep results read together: a point's allocation, and several sweeps of one model and protocol as one.

A sweep result is `analysis.sweep.run_sweep`'s dict ({"model", "dense", "points", "protocol"}). Sweeps of the
same model weights (fingerprint) and the same protocol measure comparable points, so they can be drawn on one
chart and recommended from together; any other sweep is left out of a merge.
"""

from __future__ import annotations

from typing import Optional

#: The protocol fields two sweeps must share for their points to be comparable.
PROTOCOL_FIELDS = ("calib", "nsamples", "seqlen", "seed", "eval_windows", "dtype", "propagation")


def point_allocation(point: dict) -> str:
    """The allocator a sweep point's plan came from ("uniform" for points stored before allocations existed)."""
    return str(point.get("allocation") or "uniform")


def protocol_core(results: dict) -> tuple:
    """The values of `PROTOCOL_FIELDS` of a sweep result's protocol (None where one is missing)."""
    protocol = results.get("protocol") or {}
    return tuple(protocol.get(k) for k in PROTOCOL_FIELDS)


def merge_sweeps(results: list[dict]) -> Optional[dict]:
    """All points of several sweep results of the first one's model and protocol in one results dict.

    results: newest first; a point (method, structure, allocation, target sparsity) measured twice keeps the
    newest measurement, and so does each dense perplexity. None for an empty list."""
    if not results:
        return None
    base = results[0]
    fingerprint = (base.get("model") or {}).get("fingerprint")
    same = [r for r in results if (r.get("model") or {}).get("fingerprint") == fingerprint
            and protocol_core(r) == protocol_core(base)]
    seen, points = set(), []
    for r in same:
        for p in r.get("points", []):
            key = (p["method"], p["structure"], point_allocation(p), round(float(p.get("target_sparsity") or 0), 4))
            if key not in seen:
                seen.add(key)
                points.append(p)
    dense: dict = {"ppl": {}}
    for r in reversed(same):
        dense["ppl"].update((r.get("dense") or {}).get("ppl") or {})
    return {**base, "dense": dense, "points": points}
