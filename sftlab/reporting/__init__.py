"""The cross-trial report: trial rows from MLflow, statistics, sections, rendering."""
