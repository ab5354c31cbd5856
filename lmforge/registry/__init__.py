"""MLflow: tracking runs, the registry's review tags and card, promotion, reports, the pyfunc model."""
