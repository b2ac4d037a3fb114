"""Config loading and validation: every bad value is a one-line error naming its key."""

import re

import pytest

from pipelines.config import ConfigError, load


def test_defaults_and_overrides():
    config = load("sinusoid", ["train.steps=7", "algorithm.name=reptile", "eval.steps=[1, 2]"])
    assert config.train.steps == 7
    assert config.algorithm.name == "reptile"
    assert config.eval.steps == (1, 2)
    assert config.cluster.workers == 2


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


def test_an_algorithms_own_options_come_from_its_spec_and_no_other_algorithm_takes_them():
    config = load("imaml", ["algorithm.cg_steps=3"])
    assert config.algorithm.options == {"lam": 2.0, "cg_steps": 3}  # imaml.yaml's lam, the override, no others
    with pytest.raises(ConfigError, match=r"'algorithm.lam': not an option of algorithm 'maml' \(its options: none\)"):
        load("sinusoid", ["algorithm.lam=2.0"])
    with pytest.raises(ConfigError, match=r"'algorithm.cg_steps': expected a positive integer, got 0"):
        load("imaml", ["algorithm.cg_steps=0"])
    assert load("imaml").as_dict()["algorithm"]["lam"] == 2.0  # written back inside its section


def test_the_model_defaults_to_the_data_sets_own_and_must_read_what_the_data_set_gives():
    assert load("sinusoid", ["model.name=null"]).model.name == "mlp"
    assert load("omniglot", ["model.name=null"]).model.options == {"width": 64}
    with pytest.raises(ConfigError, match=r"'model.name': model 'conv4' reads images, data set 'sinusoid' gives vectors"):
        load("sinusoid", ["model.name=conv4"])
    with pytest.raises(ConfigError, match=r"'model.width': not an option of model 'mlp'"):
        load("sinusoid", ["model.width=8"])


def test_a_config_written_out_reads_back_the_same():
    from pipelines.config import from_dict

    for name in ("sinusoid", "omniglot", "imaml", "mann", "pointnav"):
        config = load(name)
        assert from_dict(config.as_dict()) == config


def test_selecting_on_validation_needs_a_validation_split_and_patience_needs_selecting():
    with pytest.raises(ConfigError, match=r"^config key 'train.select_on': .*omniglot has none here; set data.val_size") as error:
        load("omniglot", ["train.select_on=val"])
    assert len(str(error.value).splitlines()) == 1
    assert load("omniglot", ["train.select_on=val", "data.val_size=0.2"]).train.select_on == "val"
    assert load("sinusoid", ["train.select_on=val", "train.patience=3"]).train.patience == 3  # a formula's tasks have a validation stream
    with pytest.raises(ConfigError, match=r"'train.patience': counts validations, which needs train.select_on: val"):
        load("sinusoid", ["train.patience=3"])
    with pytest.raises(ConfigError, match=r"'train.patience': expected a positive integer or null, got 0"):
        load("sinusoid", ["train.select_on=val", "train.patience=0"])


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("omniglot", ["published.acc=1.5", "published.source=P"], "'published.acc': expected a fraction between 0 and 1 or null, got 1.5"),
        ("omniglot", ["published.acc=0.9", "published.source=P", "published.ci95=-0.1"], "'published.ci95': expected a non-negative number"),
        ("omniglot", ["published.acc=0.9"], "'published.source': required with published.acc"),
        ("omniglot", ["published.acc=0.9", "published.source=''"], "'published.source': expected a non-empty string or null"),
        ("omniglot", ["published.ci95=0.01"], "'published.ci95': describes published.acc, which is null"),
        ("sinusoid", ["published.acc=0.9", "published.source=P"], "'published.acc': an accuracy, and sinusoid tasks report only losses"),
    ],
)
def test_a_published_figure_is_an_accuracy_with_its_source(name, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(name, overrides)
    paper = ["published.acc=0.488", "published.ci95=0.006", "published.source=Finn et al. 2017, Table 1", "published.steps=1"]
    assert load("omniglot", paper).published.acc == 0.488
