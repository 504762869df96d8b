"""Warm starts for local stage processes: a pre-imported server forks each one.

A local sweep runs every stage (and every local model server) as its own process, as on a
cluster. Started cold, each of those spends about 9 s of this machine's 2 cores importing torch,
transformers, TRL and MLflow and another 2 s tearing the interpreter down, for a stage whose own
work can take 3 s. The server (``server.py``) imports all of that once per sweep and forks a child
per request; a thin client (``client.py``, stdlib only) stands in for the child where a process is
expected: it passes its standard streams, environment and working directory, forwards the
signals it gets, and exits with the child's status. Without a server (``SFTLAB_WARM_SOCKET``
unset, as on a cluster) everything starts cold, exactly as before.
"""

SOCKET_ENV = "SFTLAB_WARM_SOCKET"
