"""Outputs: the export pipeline, masks and models on disk, the report, the llm-compressor recipe, chart specs."""
