"""What a spec means: its schema, its problems, how it is loaded, the grid of trials it expands to,
and the job each trial runs as.

The floor every other part stands on: nothing here imports any of sftlab but ``errors`` and ``keys``.
"""
