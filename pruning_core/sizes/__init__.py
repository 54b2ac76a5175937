"""What a model weighs as files: bytes measured on what was written, per format, with the runtime that loads it.

- `files`: `saved_size(path)` (bytes of the files on disk) and `FORMATS` (each format and the runtimes that load it).
- `measure`: `sixteen_bit_size(loaded, what, masks, weights, store)` writes a model as 16-bit safetensors with
  `save_pretrained` into a temporary folder and measures it; `measure_by_writing(key, write, store)` does the same
  for any writer (a quantized export: `measurement_key(fingerprint, "compressed-tensors", "quantized", recipe
  digest)`), and `measure_written(folder, fmt, what)` measures a folder that is kept. Measurements are cached in
  the store by model fingerprint + what was saved.
- `records`: the sizes record a result carries (counts and measurements), and reading records stored earlier.
The sentences are `pruning_core.claims`' (`size_sentence`, `size_rows`, `file_format`).
"""
