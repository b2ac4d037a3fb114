"""The pipeline: CLI, configs, stages and MLflow tracking."""
