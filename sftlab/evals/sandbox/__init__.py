"""The sandbox model-written code runs in: ``runner`` starts and watches each program, ``launcher`` is
the stdlib-only script that sets up namespaces, limits and the guard inside the child."""
