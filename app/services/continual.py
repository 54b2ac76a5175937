"""Continual: the continual job spec and its form, the corpora a domain sequence can use, and the result's
figures, tables, answer, report and command lines (re-run, per-domain adapters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from app.formats import MISSING, table_number
from app.services.corpora import EMBEDDED_CORPORA, corpus_labels, is_file, uploaded_corpora
from app.services.export import report_html
from app.services.forms import PageForm
from app.services.jobs import latest_result, recent_results
from app.services.models import model_identity
from app.services.settings import protocol_of, with_executor
from pruning_core import command_lines
from pruning_core.continual import figures
from pruning_core.continual.export import continual_report_data
from pruning_core.continual.run import BWT_NOTE, ContinualSpec
from pruning_core.continual.strategies import STRATEGIES as _CONTINUAL_STRATEGIES
from pruning_core.continual.strategies import strategy_descriptions
from pruning_core.errors import ConfigError

#: The strategies of continual pruning, in the registry's order (the page offers them all by default).
CONTINUAL_STRATEGIES = tuple(_CONTINUAL_STRATEGIES)
#: Methods whose masks depend on the calibration data (magnitude's would be the same at every step).
CONTINUAL_METHODS = ("wanda", "sparsegpt")


def continual_strategy_descriptions() -> dict[str, dict]:
    """{name: {"description", "continual"}} of the registered strategies (`continual.strategies`)."""
    return strategy_descriptions()


def continual_bwt_note() -> str:
    """The BWT sign convention every continual figure states (`continual.run.BWT_NOTE`)."""
    return BWT_NOTE


def continual_corpora(settings: dict) -> list[str]:
    """The corpora a domain sequence can use: the embedded ones, the files uploaded on the Setup page (newest
    first) and the shared settings' own file corpora."""
    chosen = [c for c in [settings.get("calib"), *(settings.get("eval_corpora") or [])] if c and is_file(c)]
    return list(dict.fromkeys([*EMBEDDED_CORPORA, *uploaded_corpora(), *chosen]))


def continual_spec(settings: dict, domains, method: str, sparsity: float, strategies, structure: str = "unstructured",
                   allocation: str = "uniform") -> dict:
    """A continual job spec (`ContinualSpec.to_dict()`, see `pruning_core.continual.run.run_continual`),
    validated (every domain read) before anything runs. domains: corpora in arrival order; the protocol
    (windows, seqlen, seed, evaluation windows) is the dashboard's."""
    domains, strategies = tuple(domains or ()), tuple(strategies or ())
    if not domains:
        raise ConfigError("Choose the domains in the order they arrive, e.g. wiki, then news, then pydocs.")
    if not strategies:
        raise ConfigError("Choose at least one strategy; 'joint' alone is only the reference line.")
    spec = ContinualSpec(model=settings["model"], protocol=protocol_of(settings), domains=domains, method=method,
                         sparsity=float(sparsity), structure=structure, allocation=allocation,
                         strategies=strategies, model_identity=model_identity(settings["model"]))
    return with_executor(spec.validate().to_dict())


@dataclass
class ContinualForm(PageForm):
    """The Continual form: widgets "continual_<field>"."""

    PREFIX: ClassVar[str] = "continual_"
    domains: tuple = EMBEDDED_CORPORA
    method: str = "wanda"
    sparsity: float = 0.5
    strategies: tuple = CONTINUAL_STRATEGIES

    def to_spec(self, settings: dict) -> dict:
        """The continual job spec of these choices (`continual_spec`)."""
        return continual_spec(settings, self.domains, self.method, self.sparsity, self.strategies)

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a continual job's spec (a page re-attaching to it shows how it was made)."""
        if not spec:
            return {}
        values = {}
        if spec.get("domains"):
            values["domains"] = list(spec["domains"])
        if spec.get("method") in CONTINUAL_METHODS:
            values["method"] = spec["method"]
        if spec.get("sparsity") is not None:
            values["sparsity"] = float(spec["sparsity"])
        known = [s for s in spec.get("strategies") or [] if s in CONTINUAL_STRATEGIES]
        if known:
            values["strategies"] = known
        return cls.widgets(**values)


def latest_continual_result(model: str) -> Optional[dict]:
    """The newest finished continual job's result for the model source `model` (`run_continual`'s dict), or
    None when this model has none."""
    return latest_result("continual", model)


def continual_figures(result: dict) -> dict:
    """{"R": {strategy: heatmap spec}, "transfer": BWT/average bars, "overlap": mask overlap lines}
    (`outputs.continual_figures`), domains named as the Setup page names them."""
    labels = corpus_labels(list(result["domains"]))
    return {"R": {name: figures.r_matrix_figure(result, name, labels) for name in result["strategies"]},
            "transfer": figures.transfer_figure(result), "overlap": figures.overlap_figure(result)}


def continual_rows(result: dict) -> list[dict]:
    """The strategies table, least forgetting first: BWT, average perplexity after the last step, FWT and the
    rule of each strategy in words (`outputs.continual_figures.strategy_rows`)."""
    return [{"strategy": r["strategy"] + ("" if r["continual"] else " (reference, not continual)"),
             "BWT (positive = forgetting)": table_number(r["bwt"], True),
             "average perplexity": table_number(r["average"]), "FWT": table_number(r["fwt"], True),
             "rule": r["rule"]} for r in figures.strategy_rows(result)]


#: The protocol fields a sweep point must share with a continual run to be the same measurement of step 1.
_SAME_PROTOCOL = ("nsamples", "seqlen", "seed", "eval_windows", "dtype", "calib_column")


def curves_step_one(result: dict, sweeps: list[dict]) -> dict[str, float]:
    """{propagation: perplexity on D1} of the sweep points (Curves page) that measure the setting of the continual
    run's first step: same model weights, D1 as the calibration corpus, same protocol, same method, unstructured,
    uniform, the same sparsity, perplexity measured on D1. `sweeps`: sweep results, newest first (the newest
    value of each propagation is kept)."""
    spec, protocol = result["spec"], result.get("protocol") or {}
    first = result["domains"][0]
    found: dict[str, float] = {}
    for sweep in sweeps:
        other = sweep.get("protocol") or {}
        if (sweep.get("model") or {}).get("fingerprint") != (result.get("model") or {}).get("fingerprint") or \
                other.get("calib") != first or any(other.get(k) != protocol.get(k) for k in _SAME_PROTOCOL):
            continue
        for point in sweep.get("points") or []:
            if point.get("method") == spec["method"] and point.get("structure", "unstructured") == "unstructured" \
                    and (point.get("allocation") or "uniform") == "uniform" \
                    and abs(float(point.get("target_sparsity") or -1) - float(spec["sparsity"])) < 1e-9 \
                    and (point.get("ppl") or {}).get(first) is not None:
                found.setdefault(point.get("propagation") or other.get("propagation") or "pruned",
                                 float(point["ppl"][first]))
    return found


def propagation_note(result: dict, model: str) -> str:
    """Why this page's perplexities can differ from the Curves page's for the same method and sparsity, with both
    numbers when the store holds a sweep of the same first step (`curves_step_one`).

    Every continual step prunes from statistics of the dense model (dense propagation); the Curves page's
    default recomputes each layer's statistics after the earlier layers are pruned (pruned propagation, as in the
    papers). Step 1 of a continual strategy equals exactly the Curves point with dense propagation (measured on
    the tiny model: tests/app/test_continual_page.py)."""
    spec = result["spec"]
    first = result["domains"][0]
    name, label = next(((n, s) for n, s in result["strategies"].items() if s.get("continual", True)),
                       next(iter(result["strategies"].items())))
    here = (label.get("R") or [[None]])[0][0]
    curves = curves_step_one(result, [job["result"] for job in recent_results("sweep", model, limit=50)])
    setting = f"{spec['method']} at {float(spec['sparsity']):.0%}"
    words = ["Every step here prunes from statistics of the dense model (dense propagation). The Curves page's "
             "default, pruned propagation, recomputes each layer's statistics after the earlier layers are pruned, "
             "so the same method and sparsity measure a little differently there."]
    if here is not None and curves:
        domain = corpus_labels([first])[first]
        words = [f"Step 1 ({name}, calibrated on {domain}) measures {setting} at **{here:,.2f}** on {domain}, "
                 "pruned from statistics of the dense model (dense propagation)."]
        if "pruned" in curves:
            words.append(f"The Curves page measured **{curves['pruned']:,.2f}** for the same setting with its default, "
                         "pruned propagation (each layer's statistics recomputed after the earlier layers are "
                         "pruned): a different mask, so a different perplexity.")
        if "dense" in curves:
            same = abs(curves["dense"] - here) <= 1e-6 * max(1.0, abs(here))
            words.append(f"With dense propagation the Curves page measured **{curves['dense']:,.2f}**"
                         + (", the same value." if same else "."))
    return " ".join(words)


def continual_answer(result: dict) -> str:
    """The page's one-sentence answer, "X forgets least: BWT ... (positive = forgetting) ...", from the result."""
    return figures.answer_sentence(result)


def continual_report_html(result: dict) -> str:
    """The report (HTML, self-contained) of a continual result, with its "Continual pruning" section
    (`outputs.continual_export.continual_report_data`), as the export and `prunescope continual --report` write it."""
    return report_html(continual_report_data(result))


def latest_continual_adapters_result(model: str) -> Optional[dict]:
    """The newest finished per-domain adapters job's result for the model source `model`
    (`continual.adapters.run_continual_adapters`'s dict), or None."""
    return latest_result("continual_adapters", model)


def continual_adapter_rows(result: dict) -> list[dict]:
    """One row per adapter mode of a per-domain adapters result: BWT (positive = forgetting), average perplexity
    after the last step and, for per-domain adapters, the router's measured accuracy on held-out windows."""
    selector = result.get("selector") or {}

    def share(value: Optional[float]) -> str:
        return MISSING if value is None else f"{value:.0%}"

    rows = []
    for mode, numbers in (result.get("modes") or {}).items():
        per_domain = mode == "per_domain"
        rows.append({"adapters": "one per domain, routed" if per_domain else "one shared adapter",
                     "BWT": table_number(numbers.get("bwt"), signed=True),
                     "average": table_number(numbers.get("average")),
                     "router accuracy": share(selector.get("accuracy")) if per_domain else MISSING,
                     "prefix-loss accuracy": share(selector.get("prefix_accuracy")) if per_domain else MISSING})
    return rows


def continual_command(result: dict, adapters: bool = False) -> str:
    """The `prunescope continual` command that re-runs this result and writes its masks and report; with
    `adapters`, the one that trains the per-domain adapters of the same sequence
    (`pruning_core.command_lines.continual_command`)."""
    return command_lines.continual_command(result["spec"], adapters=adapters)
