"""The recovery training loop: a masked adapter trained on token windows, with checkpoints to resume from.

Loss: mean next-token NLL (nats) of each batch of windows, computed like the evaluation's (`metrics.window_nll`,
the LM head on chunks of rows). AdamW on the adapter's A and B only, linear warm-up then cosine decay to 10 %
of the peak rate. Matmuls under bf16 autocast by default (weights and optimizer state stay fp32).

Checkpoint: every `checkpoint_every` steps, and when cancelled, the adapter weights, the optimizer and
scheduler state, the step, the loss history and the RNG state go to `<checkpoint_dir>/checkpoint.pt` (written
to a temporary file, then renamed, so a kill mid-write keeps the previous one). `train_adapter` called again
with the same checkpoint folder continues from there: a cancelled or killed recovery resumes, it does not
start again.
"""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.precision import EVAL_DTYPES, autocast_for
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.units import format_seconds

CHECKPOINT = "checkpoint.pt"
PLAN_AFTER = 3  # steps timed before a time budget decides how many steps fit


@dataclass
class TrainConfig:
    """Recovery training settings.

    steps: optimizer steps; batch_size: windows per step; seqlen: tokens per window; lr: peak learning rate;
    warmup: steps of linear warm-up; weight_decay: AdamW decay on A and B; dtype: compute dtype of the matmuls
    ("bfloat16" autocast or "float32"); seed: window sampling and adapter initialisation; eval_every: steps
    between two quick evaluations for the curve (0 = only before and after); checkpoint_every: steps between
    checkpoints; max_seconds: a training-time budget (None = run all steps): from the third step on the loop
    measures its seconds per step and plans min(steps, what fits) steps, so the learning-rate schedule still
    decays to its end inside the budget; it stops before a step that would end past the budget.
    """

    steps: int = 200
    batch_size: int = 4
    seqlen: int = 256
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    dtype: str = "bfloat16"
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 20
    max_seconds: Optional[float] = None

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "seqlen"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Recovery {name} must be a positive integer, got {getattr(self, name)}.")
        if int(self.seqlen) < 2:
            raise ConfigError("Recovery seqlen must be at least 2 tokens.")
        if not float(self.lr) > 0:
            raise ConfigError(f"The learning rate must be positive, got {self.lr}.")
        if self.dtype not in EVAL_DTYPES:
            raise ConfigError(f"Recovery dtype '{self.dtype}' is unknown; use one of {', '.join(EVAL_DTYPES)}.")
        if int(self.eval_every) < 0 or int(self.checkpoint_every) < 1 or int(self.warmup) < 0:
            raise ConfigError("eval_every must be 0 or more, checkpoint_every 1 or more, warmup 0 or more.")
        if self.max_seconds is not None and not float(self.max_seconds) > 0:
            raise ConfigError(f"max_seconds must be positive, got {self.max_seconds}.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Validated settings from a spec's `train` dict; unknown keys refused with the known ones named."""
        from dataclasses import fields

        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"Unknown training settings {unknown}; known: "
                              f"{', '.join(f.name for f in fields(cls))}.")
        return cls(**d).validate()


@dataclass
class TrainHistory:
    """loss: [(step, mean NLL of that step's batch)]; evals: [(step, {corpus: perplexity})] of the quick
    evaluations; seconds: training wall time (evaluations excluded); steps_done; resumed_from: the step a
    checkpoint gave (0 = fresh start); stopped: "done" | "time budget"; planned_steps: the steps the loop
    aims for (`steps`, or fewer when a time budget was set and measured to allow fewer)."""

    loss: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    seconds: float = 0.0
    steps_done: int = 0
    resumed_from: int = 0
    stopped: str = "done"
    planned_steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def training_windows(token_ids: torch.Tensor, seqlen: int, count: int, seed: int) -> torch.Tensor:
    """`count` windows of `seqlen` tokens drawn uniformly from a 1-D token sequence, in epochs of at most
    ntokens // seqlen windows (each epoch its own seed), so a short corpus is revisited instead of refused."""
    from pruning_core.data import random_token_windows

    ntokens = int(token_ids.numel())
    per_epoch = max(1, ntokens // int(seqlen) - 1)
    chunks, epoch = [], 0
    while sum(c.shape[0] for c in chunks) < count:
        n = min(per_epoch, count - sum(c.shape[0] for c in chunks))
        chunks.append(random_token_windows(token_ids, n, seqlen, seed + 7919 * epoch, source="training split"))
        epoch += 1
    return torch.cat(chunks)[:count]


def _schedule(config: TrainConfig, history: "TrainHistory") -> Callable[[int], float]:
    warm = int(config.warmup)

    def factor(step: int) -> float:
        total = int(history.planned_steps or config.steps)  # read at each step: a time budget may shorten it
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _adapter_state(peft_model) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, peft_model, optimizer, scheduler, step: int, history: TrainHistory,
                     key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save({"key": key, "step": step, "adapter": _adapter_state(peft_model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history.to_dict(),
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, folder / CHECKPOINT)


def _load_checkpoint(folder: Optional[Path], key: str):
    if folder is None or not (folder / CHECKPOINT).exists():
        return None
    path = folder / CHECKPOINT
    try:
        # weights_only: a checkpoint holds tensors and plain values; a file replaced under $PRUNESCOPE_HOME
        # must never run code when a user resumes (a full unpickler would).
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same one sentence
        raise ConfigError(f"The recovery checkpoint {path} cannot be read as plain tensors and values "
                          f"({type(exc).__name__}); delete it to train this adapter from the start.") from None
    if not isinstance(state, dict):
        raise ConfigError(f"The recovery checkpoint {path} is not a PruneScope checkpoint; delete it to train "
                          "this adapter from the start.")
    return state if state.get("key") == key else None  # another setting's checkpoint: start fresh


def batch_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL (nats) over the batch's predicted tokens (as the evaluation computes it)."""
    from pruning_core.metrics import window_nll

    # window_nll reads only `.model` of a LoadedModel
    return window_nll(SimpleNamespace(model=model), batch).sum() / (batch.shape[0] * (batch.shape[1] - 1))


def train_adapter(peft_model, hf_model: torch.nn.Module, windows: torch.Tensor, config: TrainConfig, *,
                  checkpoint_dir=None, key: str = "", progress: Optional[ProgressFn] = None,
                  evaluate: Optional[Callable[[], dict]] = None,
                  clock: Callable[[], float] = time.perf_counter) -> TrainHistory:
    """Train the masked adapter of `peft_model` on `windows` (steps x batch_size rows of seqlen tokens).

    hf_model: the Hugging Face model inside `peft_model` (its LoRA layers injected), used for the loss.
    checkpoint_dir / key: where checkpoints go and what they must match to be resumed from (the setting's hash).
    evaluate: () -> {corpus: perplexity}, called every `eval_every` steps and at the end (for the curve).
    progress: (fraction, message) with the loss and the time left; may raise `JobCancelled`, which saves a
    checkpoint first (so the work done is kept) and re-raises.
    clock: seconds (monotonic) for the time budget and the history; tests inject one that counts steps.
    """
    config = config.validate()
    progress = progress or no_progress
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("The adapter has no trainable parameter; give at least one target with rank >= 1.")
    optimizer = torch.optim.AdamW(params, lr=float(config.lr), weight_decay=float(config.weight_decay))
    history = TrainHistory(planned_steps=int(config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, history))
    start_step = 0
    state = _load_checkpoint(folder, key)
    if state is not None:
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in state["adapter"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, value in state["history"].items():  # in place: the schedule reads this object
            setattr(history, name, value)
        torch.set_rng_state(state["rng"])
        start_step = history.resumed_from = int(state["step"])
    elif evaluate is not None:
        history.evals.append((0, evaluate()))
    peft_model.train()
    hf_model.config.use_cache = False
    step = start_step
    trained_before = history.seconds
    try:
        for step in range(start_step, int(config.steps)):
            if step >= history.planned_steps:
                break
            rows = windows[step * config.batch_size:(step + 1) * config.batch_size]
            tick = clock()
            with autocast_for(config.dtype):
                loss = batch_loss(hf_model, rows)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.seconds += clock() - tick
            history.loss.append((step + 1, float(loss.detach())))
            history.steps_done = step + 1
            done = step + 1 - start_step
            per_step = (history.seconds - trained_before) / max(1, done)
            if config.max_seconds is not None and done >= PLAN_AFTER:
                # Measured, not guessed: plan the steps that fit, re-planned every step as the pace changes
                # (another process on the cores), so the schedule still decays to its end inside the budget.
                fits = int(float(config.max_seconds) / per_step)
                history.planned_steps = max(step + 1, min(int(config.steps), fits))
            left = per_step * (history.planned_steps - step - 1)
            if evaluate is not None and config.eval_every and (step + 1) % config.eval_every == 0 \
                    and step + 1 < history.planned_steps:
                peft_model.eval()
                history.evals.append((step + 1, evaluate()))
                peft_model.train()
            if (step + 1) % config.checkpoint_every == 0 and folder is not None:
                _save_checkpoint(folder, peft_model, optimizer, scheduler, step + 1, history, key)
            # Stop before a step that would end past the budget (the budget is a promise, not a hint).
            over_time = config.max_seconds is not None and history.seconds + per_step > float(config.max_seconds)
            progress((step + 1) / history.planned_steps,
                     f"recovery step {step + 1}/{history.planned_steps}, loss {float(loss.detach()):.3f}, "
                     f"{format_seconds(left)} left")
            if over_time:
                history.stopped = "time budget"
                break
    except JobCancelled:
        if folder is not None:
            _save_checkpoint(folder, peft_model, optimizer, scheduler, history.steps_done, history, key)
        raise
    if history.steps_done < int(config.steps):
        history.stopped = "time budget"
    peft_model.eval()
    if evaluate is not None:
        history.evals.append((history.steps_done, evaluate()))
    if folder is not None:
        _save_checkpoint(folder, peft_model, optimizer, scheduler, history.steps_done, history, key)
    return history
