"""Config loading and validation: every bad value is a one-line error naming its key."""

import pytest

from pipelines.config import CHOICES, ConfigError, load


def test_defaults_and_overrides():
    config = load("sinusoid", ["train.steps=7", "algorithm.name=reptile", "eval.steps=[1, 2]"])
    assert config["train"]["steps"] == 7
    assert config["algorithm"]["name"] == "reptile"
    assert config["eval"]["steps"] == [1, 2]
    assert config["cluster"]["workers"] == 2


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.stepz=3", "train.stepz"),
        ("train.steps=-1", "train.steps"),
        ("train.steps=abc", "train.steps"),
        ("train.meta_batch=2.5", "train.meta_batch"),
        ("algorithm.name=mamba", "algorithm.name"),
        ("algorithm.inner_lr=0", "algorithm.inner_lr"),
        ("model.name=conv4", "model.name"),
        ("cluster.num_gpus=-1", "cluster.num_gpus"),
        ("eval.steps=[0]", "eval.steps"),
        ("train=3", "train"),
        ("seed=true", "seed"),
        ("cluster.aggregation=ring", "cluster.aggregation"),
        ("algorithm.checkpoint_inner=maybe", "algorithm.checkpoint_inner"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load("sinusoid", [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load(str(tmp_path / "nope.yaml"))


def test_malformed_yaml_and_non_mapping_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load(str(bad))
    flat = tmp_path / "flat.yaml"
    flat.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="flat.yaml: expected a mapping"):
        load(str(flat))


def test_override_without_equals_sign_is_explained():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load("sinusoid", ["train.steps"])


def test_every_registered_algorithm_is_a_config_choice():
    from meta_core.algorithms import ALGORITHMS

    assert sorted(CHOICES["algorithm.name"]) == sorted(ALGORITHMS)
