"""MLflow: a run per evaluated classifier and the champion registered as a pyfunc. No Dagster import."""
