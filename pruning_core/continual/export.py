"""Export of a continual-pruning run: the mask of every step of every strategy, continual.json and the report.

`export_continual(loaded, spec, out_dir)` runs `continual.run.run_continual` with out_dir, so every step's mask is
written in the export format under out_dir/<strategy>/step-<t> (t from 1; `mask_files.save_masks`, with the
strategy, step, domain and domains seen in its manifest), then writes out_dir/continual.json and the report
(`outputs.report.build_report`) with its "Continual pruning" section (`continual.report`): the R matrix of each
strategy as a table, BWT (with its sign convention: positive = forgetting), forward transfer, average perplexity
and the rule of each strategy, and the charts of `continual.figures`. `continual_report_data(result)` turns any
continual result (a job's, a CLI run's) into the report's document, so the dashboard's download, the CLI's
--report and this export word it the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pruning_core.continual.report import continual_report
from pruning_core.continual.run import ContinualSpec, run_continual
from pruning_core.models import LoadedModel
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated, write_json
from pruning_core.outputs.report import build_report
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.provenance import environment

RESULT_FILE = "continual.json"


def continual_report_data(result: dict, files: Optional[list] = None) -> dict:
    """`build_report`'s document of a `run_continual` result: the setting every step prunes to and the whole
    result under "continual", with the sections of `continual.report` (its Continual pruning section)."""
    model, spec = result.get("model") or {}, result.get("spec") or {}
    return continual_report({
        "setting": {"model": model.get("name"), "source": model.get("source"), "fingerprint": model.get("fingerprint"),
                    "method": spec.get("method"), "structure": spec.get("structure", "unstructured"),
                    "sparsity": spec.get("sparsity"), "allocator": spec.get("allocation"),
                    "measured_sparsity": _mean_sparsity(result),
                    "propagation": "dense (statistics of each domain from the dense model, shared by the strategies)"},
        "continual": result,
        "files": files or [],
        "protocol": result.get("protocol") or {},
        "env": environment(),
    })


def _mean_sparsity(result: dict) -> Optional[float]:
    """The measured sparsity averaged over every step of every strategy (each is within rounding of the target)."""
    values = [float(step["sparsity"]) for figures in (result.get("strategies") or {}).values()
              for step in figures.get("steps") or [] if step.get("sparsity") is not None]
    return sum(values) / len(values) if values else None


def _files(out: Path) -> list[dict]:
    """[{name (relative to out), bytes}] of continual.json and every step's mask files."""
    return [{"name": str(p.relative_to(out)), "bytes": p.stat().st_size}
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith("report.")]


def export_continual(loaded: Optional[LoadedModel], spec: Union[ContinualSpec, dict], out_dir, store=None,
                     progress: Optional[ProgressFn] = None, pdf: bool = False) -> dict:
    """Run `spec` with every step's mask written under out_dir/<strategy>/step-<t>, then continual.json and the
    report beside them. Returns {"folder", "report" {format: path}, "masks" {strategy: [folder per step]},
    "files" [{name, bytes}], "result" (`run_continual`'s dict)}, every path at its final place. The export is
    written in a fresh temporary folder that replaces out_dir whole at the end
    (`outputs.files.folder_written_whole`): a killed or failed export leaves the earlier one as it was, a
    re-export leaves nothing of the earlier one, and a folder holding files PruneScope did not write is refused
    before any work."""
    progress = progress or no_progress
    spec = (spec if isinstance(spec, ContinualSpec) else ContinualSpec.from_dict(spec)).validate()
    final = check_output_folder(out_dir, "The export folder")
    with folder_written_whole(final, "The export folder") as out:
        result = run_continual(spec, loaded=loaded, store=store, progress=sub_progress(progress, 0.0, 0.95),
                               out_dir=out)
        result = relocated(result, out, final)
        write_json(out / RESULT_FILE, result)
        files = _files(out)
        paths = relocated({k: str(v) for k, v in build_report(continual_report_data(result, files), out,
                                                               pdf=pdf).items()}, out, final)
    progress(1.0, "continual export written")
    masks = {name: [step["mask_dir"] for step in figures["steps"]] for name, figures in result["strategies"].items()}
    return {"folder": str(final), "report": paths, "masks": masks, "files": files, "result": result}
