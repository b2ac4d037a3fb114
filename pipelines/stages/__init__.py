"""Pipeline stages; each is a function run inside its own MLflow child run."""
