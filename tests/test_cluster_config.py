"""The cluster launcher config against Ray's own schema; the RayJob manifest runs a config the pipeline accepts."""

import json
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

from pipelines.config import load
from tests.conftest import ROOT


def test_ray_cluster_yaml_is_valid_for_the_installed_ray():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"]["gpu_worker"]["min_workers"] <= config["max_workers"]
    assert any("requirements.txt" in c for c in config["setup_commands"])


def test_rayjob_entrypoint_is_a_valid_pipeline_config():
    job = yaml.safe_load((ROOT / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipelines", "run"]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    config = load(argv[4], overrides)
    gpus_per_node = int(
        job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert config.cluster.workers * config.cluster.num_gpus <= gpus_per_node
