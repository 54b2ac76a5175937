"""GGUF export: llama-family models (dense, pruned, structurally smaller, layers dropped) as files llama.cpp runs.

`write.export_gguf` writes one file; `architecture` says which llama.cpp architecture and hyperparameters (per-layer
widths through llama.cpp's `deci` block); `vocabulary` the tokenizer keys; `tensors` llama.cpp's names and rope
layout; `types` the tensor types and block-size rules; `read` turns a written file back into the model's weights
(to measure PruneScope's perplexity of exactly the weights llama.cpp runs); `runtime` runs a file in llama.cpp
through the optional `llama-cpp-python` package.
"""
