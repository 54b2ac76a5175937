"""The adapters in the store: one row per stored recovery, with the setting it recovers and what it measured.

`run_recovery` stores each finished recovery as a run and a result of kind "recovery" and keeps its adapter
(PEFT files + ranks.json) in `run.adapter_folder(store, key)`. `list_adapters` reads them back for the CLI
(`prunescope recover --list`) and the Recovery page; `adapter_table` is the same rows as printable lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pruning_core.recovery.run import ADAPTER_FILES, RUN_KIND, adapter_folder


def _rank_words(ranks: dict) -> str:
    """"uniform, rank 2 on 14 linears" or "gradient, ranks 1-6 on 12 linears" from a `RankPlan.to_dict()`."""
    values = [int(r) for r in (ranks.get("ranks") or {}).values()]
    if not values:
        return str(ranks.get("allocation") or "?")
    spread = f"rank {values[0]}" if min(values) == max(values) else f"ranks {min(values)}-{max(values)}"
    return f"{ranks.get('allocation') or 'uniform'}, {spread} on {len(values)} linears"


def list_adapters(store, model_fingerprint: Optional[str] = None) -> list[dict]:
    """Every stored recovery whose adapter folder is still on disk (of the model with weight fingerprint
    `model_fingerprint`, when given), newest first.

    One dict per adapter: "key", "setting" (the pruned setting it recovers, in words), "model" (name),
    "fingerprint", "train_corpus", "steps" (optimizer steps run, every step-wise stage counted), "schedule"
    (step-wise sparsities before the final one, [] for one-shot), "rank_allocation" (words), "parameters"
    (trainable), "dense_ppl" / "pruned_ppl" / "recovered_ppl" ({corpus: perplexity}, the recovered one is the
    merged model's), "merged_sparsity", "folder" (the store's adapter folder), "bytes" (its PEFT files on
    disk now, as the result counts them), "created" (unix seconds the result was made)."""
    rows = []
    for run in store.list_runs(RUN_KIND):
        folder = adapter_folder(store, run["key"])
        result = store.get_result(run["key"])
        if result is None or not (folder / ADAPTER_FILES[1]).is_file():  # unfinished, or the files were removed
            continue
        model = result.get("model") or {}
        if model_fingerprint is not None and model.get("fingerprint") != model_fingerprint:
            continue
        spec = result.get("spec") or run["spec"]
        stages = result.get("stages") or []
        steps = sum(int((s.get("history") or {}).get("steps_done") or 0) for s in stages)
        rows.append({
            "key": run["key"], "setting": (result.get("pruned") or {}).get("description", "?"),
            "model": model.get("name"), "fingerprint": model.get("fingerprint"),
            "train_corpus": spec.get("train_corpus"), "steps": steps, "schedule": list(spec.get("schedule") or []),
            "rank_allocation": _rank_words(result.get("ranks") or {}),
            "parameters": (result.get("adapter") or {}).get("parameters"),
            "dense_ppl": dict(result.get("dense_ppl") or {}), "pruned_ppl": dict(result.get("pruned_ppl") or {}),
            "recovered_ppl": dict(result.get("recovered_ppl") or {}),
            "merged_sparsity": (result.get("sparsity") or {}).get("merged"),
            "folder": str(folder),
            "bytes": sum((folder / name).stat().st_size for name in ADAPTER_FILES if (folder / name).is_file()),
            "created": float(result.get("created") or run["created"]),
        })
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def perplexity_words(row: dict) -> str:
    """"news 40.1 -> 28.3 (dense 25.0); pydocs ..." of a `list_adapters` row: pruned -> recovered per corpus."""
    parts = []
    for corpus, recovered in row["recovered_ppl"].items():
        pruned, dense = row["pruned_ppl"].get(corpus), row["dense_ppl"].get(corpus)
        parts.append(f"{corpus} {pruned:,.2f} -> {recovered:,.2f}" if pruned is not None
                     else f"{corpus} {recovered:,.2f}")
        if dense is not None:
            parts[-1] += f" (dense {dense:,.2f})"
    return "; ".join(parts)


def adapter_table(rows: list[dict]) -> list[str]:
    """`list_adapters` rows as printable lines (a header, then two lines per adapter), for `recover --list`."""
    import time

    if not rows:
        return ["No recovery adapters in the store yet; run `prunescope recover` to make one."]
    lines = [f"{'created (UTC)':<16}  {'key':<12}  {'model':<16}  {'steps':>6}  {'size':>10}  setting"]
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["created"]))
        path = "step-wise " + " -> ".join(f"{s:.0%}" for s in row["schedule"]) + " -> " if row["schedule"] else ""
        lines.append(f"{created:<16}  {row['key'][:12]:<12}  {str(row['model'])[:16]:<16}  {row['steps']:>6}  "
                     f"{row['bytes'] / 1e6:>7.2f} MB  {path}{row['setting']}")
        lines.append(f"{'':<16}  trained on {row['train_corpus']}, {row['rank_allocation']}; "
                     f"{perplexity_words(row)}; {Path(row['folder'])}")
    return lines
