"""Chart specifications (plain Plotly dicts) and words of a recovery run, for the Recovery page and the report.

Everything here reads `recovery.run.run_recovery`'s result dict; nothing is computed anew:

- `before_after(result)`: per corpus the dense, pruned and recovered (merged model) perplexity and the share of
  the gap won back, as `run_recovery` measured them with THE evaluation;
- `loss_figure(result)`: training loss (mean token NLL of each step's batch) against the optimizer step;
- `perplexity_figure(result)`: the quick evaluations during training (the first `curve_windows` evaluation
  windows of each corpus) against the step, with the dense and the pruned model's full-evaluation perplexity as
  reference lines and the merged model's full evaluation at the end;
- `recovery_sentences(result)`, `sparsity_sentence`, `adapter_sentence`, `ranks_sentence`: the facts in words.

A step-wise run (prune, recover, prune further, recover...) has one training history per step; the charts draw
them one after the other on a common step axis, one trace per step.
"""

from __future__ import annotations

from typing import Any, Optional

from pruning_core import claims
from pruning_core.data import corpus_display_name
from pruning_core.outputs.figures import COLORWAY, axis, base_layout, finite, legend_below
from pruning_core.units import format_seconds

LOSS_COLOR = "#1F77B4"


def corpus_color(corpora: list[str], corpus: str) -> str:
    """One colour per evaluated corpus, in the result's order."""
    return COLORWAY[corpora.index(corpus) % len(COLORWAY)] if corpus in corpora else COLORWAY[0]


def before_after(result: dict) -> list[dict]:
    """[{"corpus", "dense", "pruned", "recovered", "share"}] per evaluated corpus: perplexities (token-level,
    lower is better) and share = (pruned - recovered) / (pruned - dense), the fraction of the gap won back
    (None when pruning cost nothing on that corpus)."""
    rows = []
    for corpus, dense in (result.get("dense_ppl") or {}).items():
        rows.append({"corpus": corpus, "dense": finite(dense),
                     "pruned": finite((result.get("pruned_ppl") or {}).get(corpus)),
                     "recovered": finite((result.get("recovered_ppl") or {}).get(corpus)),
                     "share": finite((result.get("recovered_share") or {}).get(corpus))})
    return rows


def _stage_histories(result: dict) -> list[tuple[int, str, dict]]:
    """[(step offset, label, history)]: the training histories on one step axis."""
    stages = result.get("stages") or []
    if len(stages) <= 1:
        return [(0, "training loss", result.get("history") or {})]
    out, offset = [], 0
    for i, stage in enumerate(stages):
        out.append((offset, f"step {i + 1}: {100 * float(stage['sparsity']):.0f} % sparse", stage["history"]))
        offset += int(stage.get("steps") or (stage["history"].get("steps_done") or 0))
    return out


def total_steps(result: dict) -> int:
    """Optimizer steps run, over every step of a step-wise schedule."""
    return sum(int((h or {}).get("steps_done") or 0) for _, _, h in _stage_histories(result))


def loss_figure(result: dict) -> dict:
    """Training loss (mean token NLL of the step's batch, nats) against the optimizer step."""
    data = []
    for i, (offset, label, history) in enumerate(_stage_histories(result)):
        points = [(offset + int(step), finite(loss)) for step, loss in history.get("loss") or []]
        points = [(x, y) for x, y in points if y is not None]
        color = LOSS_COLOR if i == 0 else COLORWAY[i % len(COLORWAY)]
        data.append({"type": "scatter", "mode": "lines", "name": label, "x": [x for x, _ in points],
                     "y": [y for _, y in points], "line": {"color": color, "width": 2},
                     "hovertemplate": "step %{x}: loss %{y:.4f}<extra>" + label + "</extra>",
                     "meta": {"role": "loss"}})
    layout = base_layout("Training loss against step", xaxis=axis("Optimizer step"),
                          yaxis=axis("Training loss (mean token NLL, nats)"),
                          showlegend=len(data) > 1, **legend_below(len(data), per_row=2))
    return {"data": data, "layout": layout}


def perplexity_figure(result: dict) -> dict:
    """Quick-evaluation perplexity per corpus against the step, with dense / pruned reference lines and the
    merged model's full evaluation at the last step (see the module docstring)."""
    corpora = list(result.get("dense_ppl") or {})
    histories = _stage_histories(result)
    last = max([total_steps(result)] + [offset + int(s) for offset, _, h in histories for s, _ in
                                         h.get("evals") or []])
    windows = (result.get("spec") or {}).get("curve_windows")
    quick = f"quick evaluation, first {windows} windows" if windows else "quick evaluation"
    data = []
    for corpus in corpora:
        color, label = corpus_color(corpora, corpus), corpus_display_name(corpus)  # a file's name, not its path
        xs, ys = [], []
        for offset, _, history in histories:
            for step, values in history.get("evals") or []:
                y = finite((values or {}).get(corpus))
                if y is not None:
                    xs.append(offset + int(step)), ys.append(y)
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{label} during training", "x": xs,
                     "y": ys, "line": {"color": color, "width": 2}, "marker": {"color": color, "size": 7},
                     "hovertemplate": f"{label}, step %{{x}}: perplexity %{{y:,.2f}}<extra>{quick}</extra>",
                     "meta": {"role": "curve", "corpus": corpus}})
        for role, key, dash, words in (("dense", "dense_ppl", "dash", "dense model"),
                                       ("pruned", "pruned_ppl", "dot", "pruned, before recovery")):
            value = finite((result.get(key) or {}).get(corpus))
            if value is None:
                continue
            data.append({"type": "scatter", "mode": "lines", "name": f"{label}: {words}", "x": [0, last],
                         "y": [value, value], "line": {"color": color, "dash": dash, "width": 1.5},
                         "hovertemplate": f"{label}, {words}: %{{y:,.2f}}<extra>full evaluation</extra>",
                         "meta": {"role": role, "corpus": corpus}})
        after = finite((result.get("recovered_ppl") or {}).get(corpus))
        if after is not None:
            data.append({"type": "scatter", "mode": "markers", "name": f"{label}: recovered (merged)",
                         "x": [last], "y": [after],
                         "marker": {"color": color, "size": 12, "symbol": "star"},
                         "hovertemplate": f"{label}, merged model: %{{y:,.2f}}<extra>full evaluation</extra>",
                         "meta": {"role": "recovered", "corpus": corpus}})
    layout = base_layout("Perplexity against step", xaxis=axis("Optimizer step"),
                          yaxis=axis("Perplexity (lower is better)"),
                          **legend_below(len(data), per_row=2))  # under the axis title, never over it
    return {"data": data, "layout": layout}


def sparsity_sentence(result: dict) -> str:
    """The measured sparsity before and after merging the adapter, in words."""
    sparsity = result.get("sparsity") or {}
    before, merged = finite(sparsity.get("before")), finite(sparsity.get("merged"))
    if before is None or merged is None:
        return "The sparsity after merging was not measured."
    if before == merged and sparsity.get("pruned_weights_zero"):
        return (f"Sparsity is exactly {100 * before:.1f} % before and after merging the adapter: every pruned "
                "weight is still 0.0.")
    zeros = "every pruned weight is still 0.0" if sparsity.get("pruned_weights_zero") else \
        "some pruned weights are no longer zero"
    return f"Sparsity was {100 * before:.2f} % before merging and is {100 * merged:.2f} % after; {zeros}."


def adapter_sentence(result: dict) -> str:
    """The adapter's trainable parameters and file size (bytes of its PEFT files), against the model's."""
    adapter = result.get("adapter") or {}
    words = f"The adapter trains {int(adapter.get('parameters') or 0):,} parameters"
    if adapter.get("bytes"):
        fraction = adapter.get("fraction_of_model")
        share = f" ({100 * fraction:.2f} % of the model's {claims.format_bytes(adapter.get('model_bytes'))})" \
            if fraction is not None else ""
        return f"{words}; its files take {claims.format_bytes(adapter['bytes'])}{share}."
    return f"{words}; it was not saved to a file in this run."


def ranks_summary(ranks: dict) -> dict:
    """{"allocation", "modules", "min", "max", "mean", "parameters", "budget"} of a `RankPlan.to_dict()`."""
    values = [int(r) for r in (ranks.get("ranks") or {}).values()]
    return {"allocation": ranks.get("allocation"), "modules": len(values), "min": min(values) if values else 0,
            "max": max(values) if values else 0, "mean": sum(values) / len(values) if values else 0.0,
            "parameters": ranks.get("parameters"), "budget": ranks.get("budget")}


def ranks_sentence(ranks: dict) -> str:
    """Where the adapter's parameters went: the rank allocation in words."""
    s = ranks_summary(ranks or {})
    spread = f"rank {s['max']}" if s["min"] == s["max"] else f"ranks {s['min']}-{s['max']} (mean {s['mean']:.1f})"
    return (f"{s['allocation'] or 'uniform'} rank allocation: {s['modules']} linears adapted with {spread}, "
            f"{int(s['parameters'] or 0):,} trainable parameters for a budget of {int(s['budget'] or 0):,}.")


def loss_trend_sentence(result: dict) -> Optional[str]:
    """A warning when the training loss rose: the mean of the last tenth of the steps' losses above the first
    tenth's (nats), else None. A rising loss means the adapter learned nothing useful (learning rate too high,
    too few steps, or a corpus unlike the evaluation's)."""
    losses = [finite(loss) for _, _, history in _stage_histories(result) for _, loss in history.get("loss") or []]
    losses = [loss for loss in losses if loss is not None]
    if len(losses) < 4:
        return None
    tenth = max(2, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    if last <= first:
        return None
    return (f"The training loss rose ({first:.3f} -> {last:.3f} nats, first and last {tenth} steps): the adapter "
            "learned nothing useful; lower the learning rate, train more steps, or train on text like the "
            "evaluation's.")


def recovery_sentences(result: dict) -> list[str]:
    """The recovery in plain words: training, the gap won back per corpus, sparsity, adapter, ranks."""
    steps = total_steps(result)
    out = [f"A masked LoRA adapter was trained for {steps:,} steps ({format_seconds(result.get('train_seconds'), estimate=False)} "
           f"of training) on the pruned model ({(result.get('pruned') or {}).get('description', '?')})."]
    for row in before_after(result):
        if None in (row["dense"], row["pruned"], row["recovered"]):
            continue
        won = (f": {100 * row['share']:.0f} % of the gap won back" if row["share"] is not None else "")
        out.append(f"Perplexity on {row['corpus']}: dense {row['dense']:,.2f}, pruned {row['pruned']:,.2f}, "
                   f"after recovery {row['recovered']:,.2f}{won}.")
    out += [sparsity_sentence(result), adapter_sentence(result)]
    rising = loss_trend_sentence(result)
    if rising:
        out.append(rising)
    if result.get("ranks"):
        out.append(ranks_sentence(result["ranks"]))
    return out


def recovery_facts(result: dict) -> list[list[Any]]:
    """[[label, value]] rows of the report's recovery table: steps, training time, adapter, sparsity, ranks."""
    adapter, sparsity = result.get("adapter") or {}, result.get("sparsity") or {}
    ranks = ranks_summary(result.get("ranks") or {})
    train = (result.get("spec") or {}).get("train") or {}
    fraction = adapter.get("fraction_of_model")
    return [["optimizer steps", f"{total_steps(result):,}"],
            ["training time", format_seconds(result.get("train_seconds"), estimate=False)],
            ["windows per step x tokens", f"{train.get('batch_size', '?')} x {train.get('seqlen', '?')}"],
            ["trained on", (result.get("spec") or {}).get("train_corpus", "?")],
            ["adapter parameters", f"{int(adapter.get('parameters') or 0):,}"],
            ["adapter files", claims.format_bytes(adapter.get("bytes")) if adapter.get("bytes") else "not saved"],
            ["adapter / model size", f"{100 * fraction:.2f} %" if fraction is not None else "–"],
            ["sparsity before merging", f"{100 * float(sparsity.get('before') or 0):.2f} %"],
            ["sparsity after merging", f"{100 * float(sparsity.get('merged') or 0):.2f} %"],
            ["every pruned weight still zero", "yes" if sparsity.get("pruned_weights_zero") else "no"],
            ["rank allocation", f"{ranks['allocation']}: {ranks['modules']} linears, ranks {ranks['min']}-"
                                f"{ranks['max']}"]]
