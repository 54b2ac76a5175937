"""The bytes-versus-quality frontier: every technique and combination (dense, pruned, structured, quantized,
structured + quantized, pruned + quantized) as a point of (bytes on disk, perplexity), the Pareto front, and the
two answers a user asks: "the smallest file within +X % perplexity" and "the best perplexity within N MB".

Modules, one concern each: `points` (the frontier point record, built from each capability's stored results),
`pareto` (judging on the worst chosen corpus, the front, the two answers), `answer` (the answer in one sentence a
manager understands, and budgets parsed from "10%" / "100MB"), `techniques` (the settings a frontier is made of
and their short names), `collect` (points from the store and finished jobs), `run` (the `prunescope frontier`
command's work and the "frontier" job: measure the missing points, then answer), `figures` (the chart: bytes
against perplexity, both log), `report` (the report section).
"""
