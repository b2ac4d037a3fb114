"""The prepare stage: raw sources into the cached Parquet dataset, recorded as the run's dataset inputs."""

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

import data
from pipelines.build import prepared
from pipelines.config import Config


def prepare_stage(config: Config) -> dict:
    """Prepare (or find) the dataset; log each split as an MLflow dataset input, its counts, the manifest, and what
    building it took (images per second, seconds, peak memory of the driver and of the busiest decoding worker)."""
    folder = prepared(config)
    manifest = data.manifest_of(folder)
    for split in data.split_names(manifest):
        info = manifest["splits"][split]
        source = LocalArtifactDatasetSource(str(folder / info["file"]))
        dataset = MetaDataset(source, name=f"{config.data.name}-{split}", digest=info["sha256"][:16])
        mlflow.log_input(dataset, context=split)
        mlflow.log_metrics({f"{split}_classes": info["classes"], f"{split}_samples_per_class": info["samples_per_class"]})
    mlflow.log_dict(manifest, "manifest.json")
    built = data.preparation_of(folder)
    mlflow.log_metrics({f"prepare_{key}": built[key] for key in ("images_per_s", "seconds", "driver_peak_mib", "worker_peak_mib", "cpus")})
    return {"dataset": str(folder), "digest": manifest["digest"]}
