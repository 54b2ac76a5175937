"""Helpers shared by the `prunescope` sub-commands: argument parsing, console progress, output folders."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from pruning_core.errors import ConfigError
from pruning_core.outputs.files import write_json  # noqa: F401 - re-exported for the commands


# ------------------------------------------------------------------------------------------------ helpers

def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _csv(text))
    except ValueError:
        raise ConfigError(f"Sparsities '{text}' must be comma-separated numbers such as 0.5,0.7.") from None


class ConsoleProgress:
    """Progress callback printing one line per step to stderr (at most a few lines a second)."""

    def __init__(self, stream=None, interval: float = 0.5):
        self.stream = stream  # None: sys.stderr at each call (it may be replaced after import, e.g. by pytest)
        self.interval = interval
        self._last = 0.0
        self._last_message = ""
        self.start = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter()
        if message == self._last_message and now - self._last < self.interval and fraction < 1.0:
            return
        if message != self._last_message or now - self._last >= self.interval:
            elapsed = now - self.start
            print(f"[{fraction * 100:5.1f}% {elapsed:7.1f}s] {message}", file=self.stream or sys.stderr, flush=True)
            self._last, self._last_message = now, message


def prepare_out_dir(out: str) -> Path:
    """Create --out if needed; refuse a path that is an existing file (nothing is deleted)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{out}' is an existing file; give a folder path.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    """Model, calibration and protocol options shared by sub-commands."""
    parser.add_argument("--model", default="embedded", help="'embedded', a model folder, a .gguf file or a hub id")
    parser.add_argument("--calib", default="wiki", help="calibration corpus: wiki, news, pydocs, a file, or a hub set")
    parser.add_argument("--calib-column", default=None, help="text column of a .csv/.parquet/.jsonl calibration file")
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    parser.add_argument("--eval-windows", type=int, default=64, help="evaluation windows per corpus")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="evaluation compute dtype (default float32 on the CPU, bfloat16 autocast on CUDA)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (memory only)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    add_memory_args(parser)
    parser.add_argument("--device", default="cpu", metavar="auto|cpu|cuda[:N]",
                        help="where pruning and evaluation compute (export, sweep): on cuda the model stays in host memory "
                             "and one decoder layer at a time visits the GPU; auto = cuda if present, else cpu")


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    """--ignore-memory-limit: the explicit escape from the memory check (`check_run_fits`)."""
    parser.add_argument("--ignore-memory-limit", action="store_true",
                        help="start the run even when its estimated peak memory exceeds the memory available "
                             "($PRUNESCOPE_MEMORY_LIMIT, else what this machine has free); the system may kill it")


def estimate_words(estimate: dict) -> str:
    """The estimate line a command prints before its work: time and peak memory (and GPU memory), with the first
    of its assumptions (what was counted)."""
    from pruning_core.units import format_bytes, format_seconds

    gpu = estimate.get("gpu_peak_memory_bytes")
    seconds = estimate.get("seconds")
    return (f"estimate: {format_seconds(seconds) if seconds is not None else 'time unknown'}, peak memory "
            f"{format_bytes(estimate['peak_memory_bytes'])}" + (f" (GPU {format_bytes(gpu)})" if gpu else "")
            + f" [{str(estimate.get('assumptions') or '').split(';')[0]}]")


def check_run_fits(args, kind: str, spec: dict, loaded, store=None, *, device=None,
                   workers: Optional[int] = None) -> Optional[dict]:
    """THE step every command that runs a job takes once its model is loaded, before any work: print the run's
    estimate (time and peak memory, `jobs.estimates.estimate_job`, or `memory_estimate` for a kind without a
    time estimate) and refuse it in one sentence (`jobs.memory_check.MemoryRefused`) when its peak exceeds the
    memory available to this process, unless --ignore-memory-limit. Returns the estimate (None without one)."""
    from pruning_core.jobs.estimates import estimate_job, memory_estimate
    from pruning_core.jobs.memory_check import check_fits

    found = estimate_job(kind, spec, loaded, store, device=device, workers=workers) or memory_estimate(kind, spec,
                                                                                                       loaded)
    if found is not None:
        print(estimate_words(found), flush=True)
    check_fits(kind, found, in_process=True, spec=spec, force=bool(getattr(args, "ignore_memory_limit", False)),
               force_hint="pass --ignore-memory-limit")
    return found


def check_runs_fit_then_free(args, kind: str, specs: list[dict], store) -> None:
    """`check_run_fits` for jobs that load their model themselves (`JobRunner.run_inline`): the model is loaded
    for the estimate, every spec checked, then the model released before the job loads its own."""
    import gc

    loaded = load_model_from_args(args)
    try:
        for spec in specs:
            check_run_fits(args, kind, spec, loaded, store)
    finally:
        del loaded
        gc.collect()


#: Commands whose pruning and evaluation honour --device (layer offload); the others compute on the CPU.
DEVICE_COMMANDS = ("export", "sweep")


def device_from_args(args):
    """The torch device of --device: ConfigError in one sentence for cuda without a GPU, a bad name or index,
    or a GPU asked of a command that computes on the CPU only (--device auto then means the CPU)."""
    import torch

    from pruning_core.devices.placement import resolve_device

    name = getattr(args, "device", "cpu")
    device = resolve_device(name)
    command = getattr(args, "command", None)
    if device.type != "cpu" and command not in DEVICE_COMMANDS:
        if str(name).strip().lower() == "auto":
            return torch.device("cpu")
        raise ConfigError(f"`prunescope {command}` computes on the CPU for now (--device applies to "
                          f"{', '.join(DEVICE_COMMANDS)}); drop --device {name} or use --device cpu.")
    return device


def offload_from_args(args):
    """The `LayerOffload` for --device (the model stays on the CPU, layers visit the GPU), or None on the CPU."""
    from pruning_core.devices.placement import offload_for

    return offload_for(device_from_args(args))


def protocol_from_args(args):
    from pruning_core.devices.placement import default_dtype
    from pruning_core.protocol import Protocol

    dtype = args.dtype or default_dtype(device_from_args(args))  # also checks --device before any work
    return Protocol(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                    eval_windows=args.eval_windows, dtype=dtype, batch_size=args.batch_size,
                    calib_column=args.calib_column).validate()


def store_from_args(args):
    """The user's store (results reused across runs), or None with --no-store."""
    if getattr(args, "no_store", False):
        return None
    from pruning_core.store import Store

    return Store()


def load_model_from_args(args, progress=None):
    from pruning_core.models import load_model

    return load_model(args.model, trust_remote_code=args.trust_remote_code, progress=progress)


def add_executor_args(parser: argparse.ArgumentParser, work: str = "points") -> None:
    """--executor, --ray-address, --workers: where the command's units of `work` are computed (the numbers
    and store keys do not depend on it). Unset flags default to PRUNESCOPE_EXECUTOR / PRUNESCOPE_RAY_ADDRESS /
    PRUNESCOPE_WORKERS (`ExecutorConfig.from_env`), then to local: the environment is read here only."""
    parser.add_argument("--executor", default=None, choices=["local", "ray"],
                        help=f"where {work} are computed: local (this process) or ray (parallel Ray workers, needs "
                             "pip install '.[ray]'); default $PRUNESCOPE_EXECUTOR, else local")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="Ray cluster to join (e.g. auto, ray://head:10001); default $PRUNESCOPE_RAY_ADDRESS, "
                             "else start Ray on this machine")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers, each holding one copy of the model (default $PRUNESCOPE_WORKERS, else 2)")


def executor_config_from_args(args):
    """The validated `ExecutorConfig` of --executor/--ray-address/--workers, unset flags taken from the
    environment (`ExecutorConfig.from_env`). Ray workers load the model themselves, without remote code, so
    --trust-remote-code with Ray is refused in one sentence."""
    from pruning_core.executors.base import ExecutorConfig

    env = ExecutorConfig.from_env()
    kind = args.executor or env.kind
    address = args.ray_address if args.ray_address is not None else env.address if kind == "ray" else None
    workers = args.workers if args.workers is not None else env.workers
    if kind == "ray" and getattr(args, "trust_remote_code", False):
        raise ConfigError("Ray workers load the model without remote code; drop --trust-remote-code or use "
                          "--executor local.")
    # A command computing on a GPU (--device cuda) gives each Ray worker one GPU of its own.
    gpus = 1.0 if kind == "ray" and device_from_args(args).type == "cuda" else 0.0
    return ExecutorConfig(kind=kind, address=address, workers=workers, gpus_per_task=gpus).validate()
