"""The paper configs (`pipelines/configs/papers/`): each follows its paper's stated protocol, its published figure is
compared with ours only at that protocol, and docs/papers.md's table says what the YAML files say."""

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines import tracking as tracking_module
from pipelines.compare import table
from pipelines.config import CONFIG_DIR, ConfigError, load

PAPER_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "papers").glob("*.yaml"))

# What each paper states about its protocol, transcribed from the paper (not from the YAML files). `None`: the paper
# does not state it. Keys: image side, conv width, inner rate, inner steps in training and at test, meta-batch,
# queries a class, meta-steps, and the test tasks its figure averages.
FINN_2017 = {"image_size": 84, "width": 32, "inner_lr": 0.01, "inner_steps": 5, "test_steps": 10, "queries": 15, "steps": 60000}
PAPERS = {
    # Finn et al. 2017, Section 5.2 (mini-ImageNet): 32 filters, 5 steps of 0.01 in training and 10 at test, 4 tasks a
    # meta-batch for 1-shot and 2 for 5-shot, 15 queries a class, 60,000 iterations; Table 1 is averaged over 600 test
    # tasks (the authors' code, NUM_TEST_POINTS).
    ("maml", "mini_imagenet", 1): FINN_2017 | {"meta_batch": 4, "tasks": 600},
    ("maml", "mini_imagenet", 5): FINN_2017 | {"meta_batch": 2, "tasks": 600},
    ("fomaml", "mini_imagenet", 1): FINN_2017 | {"meta_batch": 4, "tasks": 600},
    ("fomaml", "mini_imagenet", 5): FINN_2017 | {"meta_batch": 2, "tasks": 600},
    # Raghu et al. 2020 take MAML's mini-ImageNet hyperparameters (their appendix); the task count is not stated.
    ("anil", "mini_imagenet", 1): FINN_2017 | {"meta_batch": 4, "tasks": None},
    ("anil", "mini_imagenet", 5): FINN_2017 | {"meta_batch": 2, "tasks": None},
    # Bertinetto et al. 2019, Table 1's MAML rows on CIFAR-FS: MAML's settings at 32x32; the task count is not stated.
    ("maml", "cifar_fs", 1): FINN_2017 | {"image_size": 32, "meta_batch": 4, "tasks": None},
    ("maml", "cifar_fs", 5): FINN_2017 | {"image_size": 32, "meta_batch": 2, "tasks": None},
    # Snell et al. 2017, Section 3.2: 64 filters, 15 queries a class, no gradient steps, 600 test episodes.
    # (The paper trains on 30- and 20-way episodes; the configs train on the 5-way ones they test.)
    ("protonet", "mini_imagenet", 1): {"image_size": 84, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": 600},
    ("protonet", "mini_imagenet", 5): {"image_size": 84, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": 600},
    # Bertinetto et al. 2019, Table 1's Prototypical Networks rows on CIFAR-FS; the task count is not stated.
    ("protonet", "cifar_fs", 1): {"image_size": 32, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": None},
    ("protonet", "cifar_fs", 5): {"image_size": 32, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": None},
    # Lee et al. 2019 (MetaOptNet), Section 4: ResNet-12 of 64-160-320-640 filters, 15 queries, 1,000 test episodes.
    ("protonet_resnet12", "mini_imagenet", 1): {"image_size": 84, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": 1000},
    ("protonet_resnet12", "mini_imagenet", 5): {"image_size": 84, "width": 64, "inner_steps": 0, "test_steps": 0, "queries": 15, "tasks": 1000},
}


def paper_of(name: str) -> tuple[str, str, int]:
    method, dataset, shots = re.fullmatch(r"(\w+?)_(mini_imagenet|cifar_fs)_(\d)shot", name).groups()
    return method, dataset, int(shots)


def config_of(name: str, tmp_path: Path):
    return load(f"papers/{name}", [f"data.source={tmp_path}"])


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_each_paper_config_takes_every_hyperparameter_its_paper_states(tmp_path, name):
    cfg = config_of(name, tmp_path)
    method, dataset, shots = paper_of(name)
    assert (cfg.data.name, cfg.task.ways, cfg.task.shots, cfg.train.select_on) == (dataset, 5, shots, "val")
    paper = PAPERS.get((method, dataset, shots))
    if paper is None:  # FOMAML and ANIL on CIFAR-FS: no paper, so no figure to stand beside ours
        assert cfg.published.acc is None
        return
    ours = {
        "image_size": cfg.data.image_size,
        "width": cfg.model.options["width"],
        "inner_lr": cfg.algorithm.inner_lr,
        "inner_steps": cfg.algorithm.inner_steps,
        "test_steps": cfg.published.steps,
        "meta_batch": cfg.train.meta_batch,
        "queries": cfg.task.queries,
        "steps": cfg.train.steps,
        "tasks": cfg.published.tasks,
    }
    assert {key: ours[key] for key in paper} == paper
    assert cfg.published.acc is not None and cfg.published.source is not None
    assert cfg.published.steps in {0, cfg.algorithm.inner_steps, *cfg.eval.steps}  # ours is evaluated at their steps
    assert cfg.published.tasks in (None, cfg.eval.tasks)  # and over as many tasks, where they say how many


def docs_table() -> dict[str, list[str]]:
    """docs/papers.md's table of the paper configs, by config name."""
    text = (Path(__file__).parent.parent / "docs" / "papers.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")]
    return {cells[0].strip().strip("`"): [c.strip() for c in cells[1:]] for cells in rows}


def test_the_docs_table_lists_each_paper_config_as_its_yaml_says(tmp_path):
    rows = docs_table()
    assert sorted(rows) == PAPER_CONFIGS
    names = {"mini_imagenet": "mini-ImageNet", "cifar_fs": "CIFAR-FS"}
    for name, (dataset, shots, algorithm, model, published, protocol, source, _ours) in rows.items():
        cfg, p = config_of(name, tmp_path), config_of(name, tmp_path).published
        assert (dataset, shots, algorithm) == (names[cfg.data.name], str(cfg.task.shots), cfg.algorithm.name)
        assert model == f"{cfg.model.name} ({cfg.model.options['width']})"
        if p.acc is None:
            assert (published, protocol, source) == ("none published", "—", "—")
            continue
        assert published == f"{100 * p.acc:.2f} ± {100 * p.ci95:.2f}%" and source == p.source
        assert protocol == f"{p.steps} steps, " + (f"{p.tasks} tasks" if p.tasks else "tasks not stated")


def runs_frame(**tags_and_metrics) -> pd.DataFrame:
    """A pipeline run as `mlflow.search_runs` returns it: MAML evaluated after 5 (its inner steps) and 10 steps."""
    base = {
        "run_id": "r1",
        "status": "FINISHED",
        "start_time": pd.Timestamp(0),
        "end_time": pd.Timestamp(1),
        "metrics.eval_post_adapt_acc": 0.45,
        "metrics.eval_post_adapt_acc_ci95": 0.02,
        "metrics.eval_steps5_acc": 0.45,
        "metrics.eval_steps10_acc": 0.47,
        "metrics.eval_steps10_acc_ci95": 0.021,
        "metrics.published_acc": 0.487,
        "metrics.published_acc_ci95": 0.0184,
        "tags.published_source": "Finn et al. 2017, Table 1",
        "tags.published_steps": "10",
        "tags.published_tasks": "600",
        "params.eval.tasks": "600",
    }
    return pd.DataFrame([base | tags_and_metrics])


def test_compare_puts_ours_beside_the_published_figure_at_its_protocol():
    row = table(runs_frame()).iloc[0]
    assert row.value == 0.45  # the headline stays ours after the trained number of steps
    assert (row.at_published, row.at_published_ci95, row.published_protocol) == (0.47, 0.021, "10 steps, 600 tasks")
    assert row.vs_published == pytest.approx(0.47 - 0.487)  # after 10 steps, as the paper tests, not after 5


@pytest.mark.parametrize(
    "change, says",
    [
        ({"params.eval.tasks": "100"}, "10 steps, 600 tasks; ours on 100 tasks: not compared"),
        ({"metrics.eval_steps10_acc": float("nan")}, "10 steps, 600 tasks; ours not evaluated after 10 steps: not compared"),
        ({"tags.published_tasks": None}, "10 steps, tasks not stated: not compared"),
        ({"tags.published_steps": None, "tags.published_tasks": None}, "not recorded: not compared"),
    ],
    ids=["other task count", "other steps", "unstated task count", "protocol not recorded"],
)
def test_compare_compares_nothing_at_another_protocol_and_says_so(change, says):
    row = table(runs_frame(**change)).iloc[0]
    assert row.published == 0.487 and row.published_protocol == says
    assert pd.isna(row.at_published) and pd.isna(row.vs_published)


def test_a_run_without_a_published_figure_has_no_comparison():
    row = table(runs_frame(**{"metrics.published_acc": float("nan")})).iloc[0]
    assert row.published_protocol is None and pd.isna(row.vs_published)


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["published.steps=10"], r"^config key 'published.steps': describes published.acc, which is null$"),
        (["published.acc=0.5", "published.source=P"], r"^config key 'published.steps': required with published.acc"),
        (["published.acc=0.5", "published.source=P", "published.steps=1", "published.tasks=0"], r"^config key 'published.tasks': expected"),
    ],
)
def test_a_published_figure_names_its_protocol(overrides, error):
    with pytest.raises(ConfigError, match=error):
        load("omniglot", overrides)
    assert load("omniglot", ["published.acc=0.5", "published.source=P", "published.steps=0"]).published.tasks is None
    # a run may evaluate less than the figure's protocol (compare then says ours is not evaluated there)
    assert load("omniglot", ["published.acc=0.5", "published.source=P", "published.steps=10", "eval.steps=[1, 3]"]).published.steps == 10


def test_a_paper_configs_figure_and_its_protocol_reach_the_columns_compare_reads(tracking, tmp_path):
    cfg = config_of("maml_mini_imagenet_1shot", tmp_path)
    with mlflow.start_run() as active:
        tracking_module.log_config(cfg)
        tracking_module.log_published(cfg)
        mlflow.log_metrics({"eval_post_adapt_acc": 0.45, "eval_post_adapt_acc_ci95": 0.02, "eval_steps10_acc": 0.47, "eval_steps10_acc_ci95": 0.02})
    row = table(mlflow.search_runs([active.info.experiment_id])).iloc[0]
    assert (row.published, row.published_protocol, row.at_published) == (0.487, "10 steps, 600 tasks", 0.47)


# The meta-RL configs (`pipelines/configs/`), transcribed from each source (not from the YAML files): episodes per
# round, their horizon, tasks a meta-step, the inner step and its count, the policy's hidden units, meta-steps; for
# ProMP also its outer rate, outer steps per sampled batch, clipping range, inner KL coefficient and GAE lambda.
# ProMP: jonasrothfuss/ProMP, run_scripts/pro-mp_run_mujoco.py (Rothfuss et al. 2019 use it for Figure 2).
PROMP_2019 = {"episodes": 20, "horizon": 100, "meta_batch": 40, "inner_lr": 0.1, "inner_steps": 1, "width": 64, "steps": 1001}
PROMP_2019 |= {"outer_lr": 1e-3, "outer_steps": 5, "clip_eps": 0.3, "kl_coeff": 5e-4, "gae_lambda": 1.0}
# MAML-TRPO: tristandeleu/pytorch-maml-rl, configs/maml/halfcheetah-{dir,vel}.yaml, and its trust region.
TRPO_MAML = {"episodes": 20, "horizon": 100, "meta_batch": 40, "inner_lr": 0.1, "inner_steps": 1, "width": 64, "steps": 500, "gae_lambda": 1.0}
TRPO_MAML |= {"max_kl": 1e-2, "cg_iters": 10, "cg_damping": 1e-5, "ls_max_steps": 15, "ls_backtrack": 0.8}
# RL2 with PPO: jonasrothfuss/ProMP's full_code branch, configs/rl2_config.json (rollouts_per_meta_task 2: one trial
# of 2 episodes per task, so 1 episode read before the trial's last; max_epochs 5) and maml_zoo/algos/ppo.py (clip 0.2).
RL2_PROMP = {"episodes": 1, "horizon": 100, "meta_batch": 200, "inner_steps": 1, "width": 64, "steps": 1000, "outer_lr": 1e-3}
RL2_PROMP |= {"outer_steps": 5, "clip_eps": 0.2, "gae_lambda": 1.0}
RL_PAPERS = {
    "halfcheetah_dir": PROMP_2019,
    "halfcheetah_vel": PROMP_2019,
    "halfcheetah_dir_trpo": TRPO_MAML,
    "halfcheetah_vel_trpo": TRPO_MAML,
    "rl2_halfcheetah_dir": RL2_PROMP,
    # Finn et al. 2017, section 5.3: 20 trajectories of 100 steps, one inner step of 0.1, 20 tasks a meta-batch, two
    # hidden layers of 100 units; 100 iterations in the authors' code (cbfinn/maml_rl, maml_trpo_point.py).
    "pointnav": {"episodes": 20, "horizon": 100, "meta_batch": 20, "inner_lr": 0.1, "inner_steps": 1, "width": 100, "steps": 100},
}


@pytest.mark.parametrize("name", sorted(RL_PAPERS))
def test_each_meta_rl_config_takes_every_hyperparameter_its_source_states(name):
    cfg = load(name)
    ours = {
        "episodes": cfg.task.shots, "horizon": cfg.task.horizon, "meta_batch": cfg.train.meta_batch, "inner_lr": cfg.algorithm.inner_lr,
        "inner_steps": cfg.algorithm.inner_steps, "width": cfg.model.options["width"], "steps": cfg.train.steps, "outer_lr": cfg.train.outer_lr,
        **{k: cfg.algorithm.options.get(k) for k in ("outer_steps", "clip_eps", "kl_coeff", "gae_lambda", "max_kl", "cg_iters", "cg_damping")},
        **{k: cfg.algorithm.options.get(k) for k in ("ls_max_steps", "ls_backtrack")},
    }  # fmt: skip
    assert {k: ours[k] for k in RL_PAPERS[name]} == RL_PAPERS[name]


# The lifelong configs' published figures, from each source (not from the YAML files): the authors publish none as a
# number (khurramjaved96/mrcl's README plots OML's curves; uvm-neurobotics-lab/ANML's states none), and Numenta's
# replication (numenta/nupic.research, projects/meta_cl/experiments/{oml,anml}_replicate.py) ran the authors' code for
# 20,000 steps, as the shipped configs train, and reports held-out accuracy after 600 classes: OML 0.55, ANML 0.64.
LIFELONG_PUBLISHED = {"oml": (0.55, 600, 20000), "anml": (0.64, 600, 20000)}


@pytest.mark.parametrize("name", sorted(LIFELONG_PUBLISHED))
def test_each_lifelong_config_holds_its_sources_figure_at_its_protocol(name):
    cfg = load(name)
    assert (cfg.published.acc, cfg.published.steps, cfg.train.steps) == LIFELONG_PUBLISHED[name]
    assert cfg.published.steps in cfg.eval.steps and cfg.published.tasks is None  # ours is evaluated after as many classes
