"""Weight-only quantization: round-to-nearest and GPTQ, 2-8 bits, per output channel or in groups, symmetric or
asymmetric; on the dense model, a pruned mask, a structurally pruned folder, or pruned and quantized in one pass.

Modules, one concern each: `scheme` (the setting and its integer convention), `quantizer` (the math: scales,
RTN, GPTQ through SparseGPT's OBS sweep), `model` (a whole model through THE layer walk), `run` (one point:
quantize, evaluate, store; the job), `export` (the compressed-tensors folder and the 16-bit one, sizes measured
on the files).
"""

from pruning_core.quantization.quantizer import QuantizedMatrix, gptq, gptq_group, round_to_nearest
from pruning_core.quantization.scheme import QuantScheme, parse_group_size

__all__ = ["QuantScheme", "QuantizedMatrix", "gptq", "gptq_group", "parse_group_size", "round_to_nearest"]
