"""MLflow as sftlab uses it: runs, tags and metrics (``runs``), and the lease protocol that computes
each cache key once (``claims``)."""
