"""Data profiling measures, one small module each; ``sftlab.stages.profile`` wires them together.

Every measure that can run over the whole dataset does so in one streaming pass with bounded
memory (``stream``); the expensive ones (perplexity, embeddings) run on seeded samples.
"""
