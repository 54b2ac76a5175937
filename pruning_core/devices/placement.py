"""Where the work runs: `--device auto|cpu|cuda[:N]`, and layer-by-layer offload for models larger than GPU memory.

The layer walk touches one decoder layer at a time, so a model need not fit on the GPU: with a `LayerOffload`
the model stays on its *home* device (the CPU, bounded by host memory) and each decoder layer visits the
*compute* device (the GPU) only while it is walked: its statistics forward, its pruning math and its
recomputation run there, then it goes home. Peak GPU memory is then one layer's weights, the carried hidden
states of the calibration (or evaluation) windows and the layer's statistics, whatever the model's depth.

`LayerOffload` records every move it makes (`moves`), so its logic is tested everywhere: with both devices the
CPU the moves are real `.to()` calls that leave the data where it is.

Dtype policy (`default_dtype`): forwards run under bf16 autocast on CUDA (weights stay fp32; ~2x the fp32
rate on tensor cores) and in fp32 on the CPU. "With verified agreement": `evaluate.bf16_agreement` measures the
relative perplexity gap between the two on a few windows; the caller decides whether the gap is acceptable
(and records it), this module does not (it lives in `evaluate`, the one home of perplexity calls).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import nn

from pruning_core.errors import ConfigError

#: The names `--device` accepts (cuda may carry an index: cuda:1).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(name: str) -> torch.device:
    """The torch device for a `--device` value: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu",
    "cuda" or "cuda:N". Raises ConfigError, in one sentence, for an unknown name, a CUDA request on a machine
    without CUDA, or a GPU index this machine does not have."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.match(text)
    if match is None:
        raise ConfigError(f"--device '{name}' is unknown; use auto, cpu, cuda or cuda:N (N = a GPU index).")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {text} needs a CUDA GPU, and torch sees none on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu or auto.")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {text} names GPU {index}, but this machine has {count} "
                          f"(indices 0-{count - 1}); use one of cuda:0 to cuda:{count - 1}.")
    return torch.device("cuda", index)


#: CPU flags of native bf16 arithmetic (bf16 dot products, AMX tiles): there bf16 autocast runs about twice as fast
#: as fp32 (benchmarks/first_map.py records both rates); elsewhere bf16 is emulated and no faster.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (one of NATIVE_BF16_FLAGS in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def default_dtype(device: torch.device) -> str:
    """The compute dtype a run gets when it names none: "bfloat16" (autocast) on CUDA, "float32" on the CPU."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def move_tensors(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (nested in tuples, lists and dicts) on `device`; other values as they are.

    Layer kwargs hold tuples (Llama's `position_embeddings` = (cos, sin)) and None entries (an sdpa causal
    mask), so the walk moves them through this one function.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(move_tensors(v, device) for v in value)
    if isinstance(value, list):
        return [move_tensors(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move_tensors(v, device) for k, v in value.items()}
    return value


@dataclass
class LayerOffload:
    """Move one module at a time between its home device and the compute device, recording each move.

    compute: where the layer's work runs (e.g. cuda:0); home: where the model lives (the CPU).
    max_windows: most evaluation windows whose hidden states one layer-by-layer evaluation carries on the
    compute device; None = as many as fit in half its free memory (`windows_that_fit`).
    moves: (what, from device, to device) per move, in order; `what` is the name given by the caller
    ("layer 3", "head", "inputs"...). Tests read it; a run may ignore it.
    """

    compute: torch.device
    home: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_windows: Optional[int] = None
    moves: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.compute, self.home = torch.device(self.compute), torch.device(self.home)

    def _move(self, what: str, module: nn.Module, device: torch.device, source: torch.device) -> None:
        # Never make parameters inference tensors (a caller may be inside inference_mode): the model may later
        # be trained (recovery) or have masks written in outside it.
        with torch.inference_mode(False):
            module.to(device)
        self.moves.append((what, str(source), str(device)))

    @contextlib.contextmanager
    def visiting(self, what: str, *modules: nn.Module) -> Iterator[None]:
        """Inside the block `modules` are on the compute device; on exit (even on error) they are home again.

        Parameters keep their identity (`Module.to` replaces `.data`), so masks, hooks and saved weights
        that refer to the modules stay valid.
        """
        try:
            for module in modules:
                self._move(what, module, self.compute, self.home)
            yield
        finally:  # also after a failed move (out of GPU memory): nothing stays on the compute device
            for module in modules:
                self._move(what, module, self.home, self.compute)

    def to_compute(self, value: Any, what: str = "inputs") -> Any:
        """`value` (a tensor, or tuples/lists/dicts of them) on the compute device; the move is recorded."""
        self.moves.append((what, str(self.home), str(self.compute)))
        return move_tensors(value, self.compute)

    def to_home(self, value: Any, what: str = "outputs") -> Any:
        """`value` on the home device; the move is recorded."""
        self.moves.append((what, str(self.compute), str(self.home)))
        return move_tensors(value, self.home)

    def moved(self, what: str) -> list[tuple[str, str]]:
        """The (from, to) moves recorded for `what`, in order."""
        return [(source, target) for name, source, target in self.moves if name == what]


def device_key(offload: Optional[LayerOffload]) -> Optional[str]:
    """What a store key records of where a result was computed: the compute device's kind ("cuda") when an
    offload sends the work off the CPU, else None. GPU kernels sum in another order, so a GPU figure must not
    stand in for a CPU one; CPU keys carry no device field, as before devices existed, so stored results stay
    valid. The kind, not the index: two GPUs of one machine agree."""
    if offload is None or offload.compute.type == "cpu":
        return None
    return offload.compute.type


def windows_that_fit(device: torch.device, window_bytes: int, windows: int, batch_size: int,
                     share: float = 0.5) -> int:
    """How many of `windows` windows may be carried at once on `device`: all of them on the CPU; on CUDA as many
    whose `window_bytes` each fit in `share` of the free memory (torch.cuda.mem_get_info), rounded down to whole
    batches of `batch_size` (so the batches stay those of a whole-model forward), at least one batch."""
    device = torch.device(device)
    if device.type != "cuda":
        return windows
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free * share) // max(int(window_bytes), 1)
    return min(windows, max(batch_size, fit // batch_size * batch_size))


def offload_for(device: torch.device, home: Optional[torch.device] = None) -> Optional[LayerOffload]:
    """The offload a run on `device` needs: None on the CPU (the model computes where it lives, as before),
    else a `LayerOffload` from `home` (default the CPU) to `device`."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    return LayerOffload(device, torch.device(home) if home is not None else torch.device("cpu"))

