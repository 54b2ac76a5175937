"""What a model weighs as files: bytes measured on what was written, per format, with the runtime that loads it."""
