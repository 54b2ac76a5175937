"""A second-order (Fisher) estimate of the exact sensitivity: one backward pass per probe window, no probes.

The exact metric prunes one module (weights W -> W + d, d the method's actual pruning delta: -W on the pruned
weights, plus SparseGPT's updates on the kept ones) and measures the increase of the mean token NLL L on the
probe windows. A Taylor expansion of L around the dense weights gives

    dL ~ g . d + 1/2 d^T H d,

g the gradient of L on the probe. Like OBD (LeCun et al., 1990) and the Fisher-based pruning literature
(e.g. WoodFisher, Singh & Alistarh 2020) we replace the Hessian H by the diagonal of the empirical Fisher.
Each probe window w gives the gradient g_w of its own mean token NLL; if the T predicted tokens of a window
were independent, the per-token Fisher would be T * E_w[g_w g_w^T], so

    dL ~ mean_w(g_w) . d + T/2 * sum(mean_w(g_w ** 2) * d ** 2)       (nats/token).

Both terms matter: on the embedded model (Wanda 50 %, 8 x 512 wiki probe) the first-order term alone ranks the
210 cells at Spearman 0.50 against the exact map, the Fisher term alone at 0.72, their sum at 0.90 (measured
in docs/runs/; the Taylor proxy |W * G| reaches 0.69). Because the gradients are taken on the same probe
windows as the exact metric, the first-order term is the probe's own slope, not noise.

Cost: n backward passes of seqlen tokens (about 3 forward passes each), shared by every sparsity and module.
Memory: either the two running sums per prunable weight (2 x 4 bytes per weight; each map is then one
elementwise pass over the weights), or, when the maps' masks are known before the passes (`deltas`), only two
numbers per module and map: each module's gradient is folded into them in a hook as soon as backward produces it
and freed at once, so a 3B model's map holds one module's gradient instead of 22 GB of moments (issue 29).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pruning_core.models import LoadedModel, is_transposed
from pruning_core.precision import autocast_for


@dataclass
class GradientMoments:
    """Per prunable module, in the (out, in) layout: mean gradient and mean squared gradient over windows.

    mean: mean_w g_w (fp32); mean_sq: mean_w g_w ** 2 (fp32); tokens: T, predicted tokens per window;
    loss: the dense mean token NLL over the windows (nats/token), a by-product of the forward passes.
    folded: when the changes to score were given to `gradient_moments` (`deltas`), the two sums each estimate
    needs, {(module, key): (sum_w g_w . d, sum_w g_w^2 . d^2)}, and mean / mean_sq are empty: no per-weight
    moments are held (8 bytes per prunable weight, 22 GB for a 3B model).
    """

    mean: dict[str, torch.Tensor]
    mean_sq: dict[str, torch.Tensor]
    tokens: int
    windows: int
    loss: float
    folded: dict[tuple[str, Hashable], tuple[float, float]] = field(default_factory=dict)

    def estimate(self, name: str, delta: torch.Tensor) -> float:
        """Estimated increase of the mean token NLL (nats/token) when module `name` changes by `delta` (out, in)."""
        first = float((self.mean[name] * delta).sum(dtype=torch.float64))
        second = float((self.mean_sq[name] * delta.square()).sum(dtype=torch.float64))
        return first + 0.5 * self.tokens * second

    def estimate_at(self, name: str, key: Hashable) -> float:
        """`estimate` of the change given as `key` for module `name` to `gradient_moments(deltas=...)`."""
        first, second = self.folded[(name, key)]
        return (first + 0.5 * self.tokens * second) / max(self.windows, 1)


@contextlib.contextmanager
def prunable_weight_gradients(model: torch.nn.Module, modules: dict[str, torch.nn.Module]) -> Iterator[None]:
    """Autograd on, with gradients for the prunable weights only (no memory for the other parameters'
    gradients); every requires_grad flag is restored and every .grad cleared on exit."""
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for module in modules.values():
            module.weight.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def gradient_moments(loaded: LoadedModel, probe_ids: torch.Tensor, dtype: str = "float32",
                     tick: Callable[[str], None] | None = None,
                     deltas: Callable[[str], Mapping[Hashable, torch.Tensor]] | None = None) -> GradientMoments:
    """Mean and mean squared gradient of each probe window's mean token NLL w.r.t. every prunable weight.

    probe_ids: (n, seqlen) token ids, one backward pass per window (memory does not grow with n).
    dtype: autocast dtype of the forward/backward ("float32" or "bfloat16"); the sums are fp32.
    deltas: when the changes to score are known before the passes (a map's masks), deltas(module) -> {key: d},
    d in the (out, in) layout, fp32: each module's gradient is then folded into the two sums of each of its
    estimates as soon as backward has produced it, and freed (`GradientMoments.folded`, `estimate_at`), so neither
    per-weight moments nor a whole model's gradients are ever held; d is asked for again in every window (it is
    not kept either). Without it, the per-weight moments are kept for `estimate` of any change.
    The model's requires_grad flags and .grad fields are restored; its weights are never changed.
    """
    tick = tick or (lambda _message: None)
    model = loaded.model
    modules = loaded.adapter.prunable_modules(model)
    windows = int(probe_ids.shape[0])
    keep_moments = deltas is None
    sums = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in modules.items()} \
        if keep_moments else {}
    squares = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in modules.items()} \
        if keep_moments else {}
    folded: dict[tuple[str, Hashable], list[float]] = {}

    def fold(name: str, module: torch.nn.Module) -> Callable[[torch.Tensor], None]:
        flip = is_transposed(module)  # GPT-2's Conv1D stores (in, out); deltas are (out, in)

        def hook(weight: torch.Tensor) -> None:
            grad = weight.grad.float()
            weight.grad = None
            grad = grad.t() if flip else grad
            for key, delta in deltas(name).items():
                sums_ = folded.setdefault((name, key), [0.0, 0.0])
                sums_[0] += float((grad * delta).sum(dtype=torch.float64))
                sums_[1] += float((grad.square() * delta.square()).sum(dtype=torch.float64))
        return hook

    total_loss = 0.0
    with prunable_weight_gradients(model, modules):
        handles = [] if keep_moments else [module.weight.register_post_accumulate_grad_hook(fold(name, module))
                                           for name, module in modules.items()]
        try:
            for w in range(windows):
                tick(f"second-order estimate: backward pass {w + 1}/{windows}")
                batch = probe_ids[w:w + 1]  # (1, T + 1)
                with autocast_for(dtype):
                    logits = model(input_ids=batch, use_cache=False).logits  # (1, T + 1, V)
                loss = F.cross_entropy(logits[0, :-1].float(), batch[0, 1:])  # mean over the window's tokens
                loss.backward()
                total_loss += float(loss.detach())
                del logits, loss
                for name, module in modules.items() if keep_moments else ():
                    grad = module.weight.grad.float()
                    module.weight.grad = None
                    sums[name].add_(grad)
                    squares[name].addcmul_(grad, grad)
        finally:
            for handle in handles:
                handle.remove()
    mean, mean_sq = {}, {}
    for name, module in modules.items() if keep_moments else ():
        flip = is_transposed(module)  # GPT-2's Conv1D stores (in, out)
        mean[name] = (sums[name].t() if flip else sums[name]).div_(windows)
        mean_sq[name] = (squares[name].t() if flip else squares[name]).div_(windows)
    return GradientMoments(mean, mean_sq, tokens=int(probe_ids.shape[1]) - 1, windows=windows,
                           loss=total_loss / max(windows, 1),
                           folded={key: (first, second) for key, (first, second) in folded.items()})


def pruning_delta(weight: torch.Tensor, keep: torch.Tensor, new_weight: torch.Tensor | None) -> torch.Tensor:
    """d = W_pruned - W in the (out, in) layout, fp32 (SparseGPT's updated kept weights included)."""
    pruned = (new_weight if new_weight is not None else weight) * keep
    return pruned - weight

