"""Running a sweep: plan the grid, hand each trial to a ``TrialLauncher``, resume from MLflow, build
the report."""
