"""Export of a recovery: the adapter (PEFT files + ranks.json), the merged model and the report's Recovery section.

`export_recovery(loaded, spec, out_dir)` runs `recovery.run.run_recovery` with out_dir (the adapter is copied to
out_dir/adapter) and merged_dir = out_dir/merged-model (a Hugging Face folder whose pruned weights are exactly
zero), then writes the report (`outputs.report.build_report`) with a "Recovery" section: before/after per corpus,
training time and steps, adapter size and its fraction of the model, the merged sparsity and the ranks.
`recovery_report_data(result)` turns any recovery result (a job's, a CLI run's) into the report's document, so the
dashboard's download, the CLI and this export word it the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pruning_core.models import LoadedModel
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated
from pruning_core.outputs.report import build_report
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.provenance import environment
from pruning_core.recovery.report import recovery_report
from pruning_core.recovery.run import RecoverySpec, run_recovery

MERGED_FOLDER = "merged-model"
ADAPTER_FOLDER = "adapter"


def recovery_report_data(result: dict, files: Optional[list] = None) -> dict:
    """`build_report`'s document of a `run_recovery` result: the setting recovered, dense vs pruned perplexity
    (the Quality table) and the whole result under "recovery", with the sections of `recovery.report`."""
    model, spec = result.get("model") or {}, result.get("spec") or {}
    pruned = result.get("pruned") or {}
    from_setting = pruned.get("source", "setting") == "setting"
    return recovery_report({
        "setting": {"model": model.get("name"), "source": model.get("source"),
                    "fingerprint": model.get("fingerprint"),
                    "method": spec.get("method") if from_setting else pruned.get("description"),
                    "structure": spec.get("structure", "unstructured") if from_setting else pruned.get("source"),
                    "sparsity": spec.get("sparsity") if from_setting else pruned.get("sparsity"),
                    "measured_sparsity": (result.get("sparsity") or {}).get("before", pruned.get("sparsity")),
                    "propagation": spec.get("propagation") if from_setting else None},
        "ppl": {"dense": result.get("dense_ppl") or {}, "pruned": result.get("pruned_ppl") or {}},
        "recovery": result,
        "files": files or [],
        "protocol": result.get("protocol") or {},
        "env": environment(),
    })


def report_files(out: Path) -> list[dict]:
    """[{name (relative to out), bytes}] of the adapter and merged-model files written."""
    found = []
    for folder in ("mask", ADAPTER_FOLDER, MERGED_FOLDER):
        if (out / folder).is_dir():
            found += [{"name": f"{folder}/{p.name}", "bytes": p.stat().st_size}
                      for p in sorted((out / folder).iterdir()) if p.is_file()]
    return found


def export_recovery(loaded: Optional[LoadedModel], spec: Union[RecoverySpec, dict], out_dir, store=None,
                    progress: Optional[ProgressFn] = None, pdf: bool = False) -> dict:
    """Recover `spec`'s pruned setting, write out_dir/adapter, out_dir/merged-model and the report beside them.

    Returns {"folder", "adapter" (folder), "merged" (folder), "report" {format: path}, "files" [{name, bytes}],
    "result" (`run_recovery`'s dict)}, every path at its final place. The export is written in a fresh
    temporary folder that replaces out_dir whole at the end (`outputs.files.folder_written_whole`): a killed or
    failed export leaves the earlier one as it was, a re-export leaves nothing of the earlier one, and a folder
    holding files PruneScope did not write is refused before any work."""
    progress = progress or no_progress
    spec = (spec if isinstance(spec, RecoverySpec) else RecoverySpec.from_dict(spec)).validate()
    final = check_output_folder(out_dir, "The export folder")
    with folder_written_whole(final, "The export folder") as out:
        result = run_recovery(spec, loaded=loaded, store=store, progress=sub_progress(progress, 0.0, 0.95),
                              out_dir=out, merged_dir=out / MERGED_FOLDER)
        result = relocated(result, out, final)
        files = report_files(out)
        paths = relocated({k: str(v) for k, v in build_report(recovery_report_data(result, files), out,
                                                               pdf=pdf).items()}, out, final)
    progress(1.0, "recovery export written")
    return {"folder": str(final), "adapter": result["adapter"]["folder"], "merged": str(final / MERGED_FOLDER),
            "report": paths, "files": files, "result": result}
