"""The lifelong learners (OML, ANML): their meta-gradient against one written out by hand, the same bits on any
number of workers, and a meta-test that learns each of its new classes once, one example at a time, and leaves
the meta-learned weights alone."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch.func import functional_call

from cluster.worker import readable
from meta_core.algorithms.continual import first_examples
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.step import micro_batch_gradient
from meta_core.tasks import Task, seeded_noise
from meta_core.trajectories import TrajectoryTasks
from pipelines import serving
from pipelines.build import build_learner, task_source
from pipelines.compare import meta_test_tables
from pipelines.config import load
from pipelines.pipeline import run
from tests.cluster_helpers import splits, start, train
from tests.omniglot_data import small_set_overrides
from tests.test_families import one_thread  # noqa: F401  (autouse: tiny models on one thread)
from tests.test_pipeline import child_runs

CLASSES, SIDE, LR = 12, 28, 0.2
NETWORKS = {"oml": ("oml_conv", {"width": 4, "strides": [2, 2, 2]}), "anml": ("anml_net", {"width": 4, "nm_width": 3})}
FAST = {"oml": lambda name: name.startswith("head."), "anml": lambda name: not name.startswith("body.nm.")}


def build(name: str, **options):
    """A learner of 28x28 images with 12 output rows, in float64, so that two ways of computing a gradient agree to
    rounding."""
    model, model_options = NETWORKS[name]
    options = {"classes": CLASSES, "reset": False, **options}
    algo = Learner(ALGORITHMS[name], MODELS[model], "classification", (SIDE, SIDE), 3, 1, LR, options, model_options).build()
    algo.model.double()
    return algo, {k: v.double() for k, v in algo.initial_params(0).items()}


def trajectory(classes=(4, 7, 1), shots=2, queries=5, seed=0) -> Task:
    """A stream of ``shots`` examples of each class in turn, and a query of ``queries`` examples of any class."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(classes) * shots, SIDE, SIDE, generator=gen, dtype=torch.float64)
    y = torch.tensor(classes).repeat_interleave(shots)
    return Task(x, y, torch.rand(queries, SIDE, SIDE, generator=gen, dtype=torch.float64), torch.randint(0, CLASSES, (queries,), generator=gen))


def by_hand_state(algo, params, task: Task, fast, second_order: bool = False) -> dict[str, torch.Tensor]:
    """The weights after one SGD step per stream example, in order, on the ``fast`` weights, written out."""
    weights = dict(params)
    for i in range(len(task.support_y)):
        loss = F.cross_entropy(functional_call(algo.model, weights, (task.support_x[i : i + 1],)), task.support_y[i : i + 1])
        names = [k for k in weights if fast(k)]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, [weights[k] for k in names], create_graph=second_order)
        for k, g in zip(names, grads, strict=True):
            weights[k] = weights[k] - LR * (g if second_order else g.detach())
    return weights


def by_hand(algo, params, task: Task, fast, second_order: bool) -> dict[str, torch.Tensor]:
    """The meta-gradient written out: ``by_hand_state``, then the query's cross-entropy differentiated back to every
    parameter with ``torch.autograd.grad``."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    weights = by_hand_state(algo, leaves, task, fast, second_order)
    outer = F.cross_entropy(functional_call(algo.model, weights, (task.query_x,)), task.query_y)
    return dict(zip(leaves, torch.autograd.grad(outer, list(leaves.values())), strict=True))


@pytest.mark.parametrize("name", ["oml", "anml"])
def test_the_meta_gradient_is_the_query_loss_differentiated_through_one_step_per_example(name):
    algo, params = build(name)
    task = trajectory()
    second = by_hand(algo, params, task, FAST[name], second_order=True)
    first = by_hand(algo, params, task, FAST[name], second_order=False)
    grads, _ = algo.task_gradient(params, task)
    for k in params:
        torch.testing.assert_close(grads[k], second[k], rtol=1e-9, atol=1e-12)
    first_order, _ = build(name, first_order=True)[0].task_gradient(params, task)
    for k in params:
        torch.testing.assert_close(first_order[k], first[k], rtol=1e-9, atol=1e-12)
    representation = [k for k in params if not FAST[name](k)]  # reached only through the inner steps' gradients
    assert any(not torch.allclose(second[k], first[k], rtol=1e-6, atol=0) for k in representation)


@pytest.mark.parametrize("name", ["oml", "anml"])
def test_reset_draws_each_class_row_afresh_before_its_first_example_the_same_from_the_same_key(name):
    algo, params = build(name, reset=True)
    task = trajectory(classes=(4, 7, 1))
    with seeded_noise("cpu", 0, 5):
        grads, _ = algo.task_gradient(params, task)
    with seeded_noise("cpu", 0, 5):
        again, _ = algo.task_gradient(params, task)
    for k in params:
        assert torch.equal(grads[k], again[k])
    assert torch.all(grads["head.weight"][4] == 0)  # drawn afresh before the first step: its starting value never counts
    kept, _ = build(name)[0].task_gradient(params, task)
    assert torch.any(kept["head.weight"][4] != 0)
    assert not torch.equal(grads["head.weight"][7], kept["head.weight"][7])  # its own row is drawn before its first example


def test_a_count_is_the_classes_learned_and_one_pass_gives_every_count():
    algo, params = build("oml")
    task = trajectory(classes=(4, 7, 1, 9), shots=3)
    assert first_examples(task.support_y) == [0, 3, 6, 9]
    states = algo.adaptations(params, task, [0, 1, 3, 4])
    alone = [algo.adaptations(params, Task(task.support_x[: 3 * n], task.support_y[: 3 * n], task.query_x, task.query_y), [n])[0] for n in (1, 3)]
    assert all(torch.equal(states[0][k], params[k]) for k in params)
    for state, expected in zip(states[1:3], alone, strict=True):
        assert all(torch.equal(state[k], expected[k]) for k in params)
    assert all(torch.equal(algo.adapt(params, task)[k], states[3][k]) for k in params)  # by default, the whole stream


@pytest.mark.parametrize("name", ["oml", "anml"])
def test_the_meta_test_learns_each_class_once_one_example_at_a_time_and_leaves_the_meta_learned_weights_alone(name, monkeypatch):
    algo, params = build(name, test_lrs=[0.1, 0.3])
    images = (np.random.default_rng(0).random((CLASSES, 6, SIDE, SIDE)) * 255).astype(np.uint8)
    task = TrajectoryTasks(images, 10, 4, 2).sample(np.random.default_rng(1))
    task = Task(*(t.double() if t.is_floating_point() else t for t in task))
    before = {k: v.clone() for k, v in params.items()}
    seen = []
    step = type(algo).inner_step

    def recorded(self, p, weights, x, y):
        seen.append((self.inner_lr, x.shape[0], int(y[0]), x))
        return step(self, p, weights, x, y)

    monkeypatch.setattr(type(algo), "inner_step", recorded)
    with seeded_noise("cpu", 0, 1):
        metrics = algo.evaluate_task(params, task, [2, 5, 10])
    for lr in (0.1, 0.3):  # per rate, one pass over the 10 classes' 4 examples, in stream order, one at a time
        steps = [s for s in seen if s[0] == lr]
        assert [(batch, label) for _, batch, label, _ in steps] == [(1, int(y)) for y in task.support_y]
    assert len(seen) == 2 * 10 * 4
    assert all(torch.equal(params[k], before[k]) for k in params)
    assert {f"lr{j}_steps{n}_{m}" for j in (0, 1) for n in (2, 5, 10) for m in ("train_acc", "acc", "loss")} == set(metrics)
    if name == "oml":  # the representation is never adapted: only the head moves
        adapted = algo.adapt(params, task)
        assert all(torch.equal(adapted[k], params[k]) for k in params if not k.startswith("head."))
        assert not torch.equal(adapted["head.weight"], params["head.weight"])


def test_the_meta_test_scores_each_count_on_its_first_classes_only():
    algo, params = build("oml")
    task = trajectory(classes=(3, 5), shots=2, queries=0)
    held_out = torch.stack([task.support_x[0], task.support_x[2], task.support_x[3]])
    task = Task(task.support_x, task.support_y, held_out, torch.tensor([3, 5, 5]))
    metrics = algo.evaluate_task(params, task, [1, 2])
    state = algo.adaptations(params, task, [1])[0]
    with torch.no_grad():
        first = algo.predict(state, task.support_x[:2]).argmax(-1)
        held = algo.predict(state, held_out[:1]).argmax(-1)
    assert float(metrics["lr0_steps1_train_acc"]) == float((first == 3).double().mean())
    assert float(metrics["lr0_steps1_acc"]) == float((held == 3).double().mean())


@pytest.fixture(scope="module")
def lifelong_config(omniglot, tmp_path_factory):
    # 256 output rows: more than the meta-training characters of either source (the real small sets give 178).
    overrides = [
        *small_set_overrides(omniglot.folder), f"data.cache_dir={tmp_path_factory.mktemp('cache')}", "data.rotations=false", "algorithm.name=oml", "model.name=oml_conv", "model.width=4",
        "model.strides=[2, 2, 2]", "task.ways=2", "task.shots=2", "task.queries=1", "algorithm.remember=3", "algorithm.classes=256",
        "algorithm.inner_lr=0.1", "eval.steps=[2, 4]", "register.metric=eval_steps2_acc", "train.compile=false",
    ]  # fmt: skip
    return lambda *more: load("omniglot", [*overrides, *more])


def test_meta_train_and_meta_test_classes_are_disjoint(lifelong_config):
    config = lifelong_config()
    prepared = {name: readable(source) for name, source in splits(config).items()}

    def pixels(array: np.ndarray) -> set[bytes]:
        return {image.tobytes() for image in array.reshape(-1, SIDE, SIDE)}

    train_images, test_images = pixels(prepared["train"]), pixels(prepared["test"])
    assert not train_images & test_images
    for split, own in (("train", train_images), ("test", test_images)):
        source = task_source(config, prepared[split], split)
        for index in range(5):
            task = source.sample(np.random.default_rng(index))
            drawn = pixels(np.rint(torch.cat([task.support_x, task.query_x]).numpy() * 255).astype(np.uint8))
            assert drawn <= own


def test_workers_give_the_bits_of_one_process(lifelong_config, ray_local):
    """Three trajectories a step (each with its own output rows drawn afresh), on 1 and on 2 workers."""
    config = lifelong_config("train.meta_batch=3", "train.steps=2", "train.optimizer=sgd", "train.outer_lr=0.1")
    examples = readable(splits(config)["train"])
    _, layout, flat, optimizer = start(config)
    for step in range(config.train.steps):  # the meta-batch's mean meta-gradient, every trajectory in this process
        total, _ = micro_batch_gradient(build_learner(config), task_source(config, examples), flat, layout, config.seed, step, range(3), False)
        flat.grad = (total / 3).float()
        optimizer.step()
    expected = flat.detach().numpy()
    for workers in (1, 2):
        np.testing.assert_array_equal(train(config.with_values({"cluster.workers": workers})), expected)


@pytest.mark.slow
def test_a_lifelong_run_logs_its_meta_test_by_classes_learned_and_compare_reads_it_back(lifelong_config, ray_local, tracking, tmp_path):
    """Through every stage: the evaluate run's table is the meta-test's, each row at the rate with the best training
    accuracy and the from-scratch baseline beside it; its ``meta_test_*`` metrics are those rows stepped by classes
    learned, which ``compare`` reads back; the learner is registered."""
    fast = ["train.steps=2", "train.meta_batch=2", "eval.tasks=3", "experiment=lifelong", "algorithm.test_lrs=[0.1, 0.001]"]
    run_id = run(lifelong_config(*fast), tracking)
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    stages = {r.data.tags["stage"]: r for r in child_runs(run_id)}
    assert set(stages) == {"prepare", "train", "evaluate", "register"}
    evaluate = stages["evaluate"]
    table = mlflow.load_table("evaluation.json", run_ids=[evaluate.info.run_id])
    assert table.classes.tolist() == [2, 4] and set(table.lr) <= {0.1, 0.001}
    assert {"scratch_acc", "scratch_acc_ci95", "scratch_train_acc"} <= set(table.columns)
    for _, row in table.iterrows():
        assert evaluate.data.metrics[f"eval_steps{int(row.classes)}_acc"] == pytest.approx(row.acc, rel=1e-8)  # the JSON table holds 10 digits
    assert "classes_learned.png" in {a.path for a in MlflowClient().list_artifacts(evaluate.info.run_id)}
    (read_back,) = meta_test_tables(mlflow.search_runs(filter_string=f"attributes.run_id = '{run_id}'")).values()
    pd.testing.assert_frame_equal(read_back[table.columns], table, check_dtype=False)
    assert stages["register"].data.tags["registered_model"]


def test_the_served_learner_learns_the_request_stream_in_order_and_answers_its_queries(lifelong_config):
    """Through the served model's predict: labels beyond the trained trajectory's ways, every class of the stream
    learned by default, in request order (the stream reversed gives another answer)."""
    config = lifelong_config("algorithm.reset=false", "algorithm.classes=12")
    algo, params = build("oml")
    algo.model.float()  # as served: float32 requests
    params = {k: v.float() for k, v in params.items()}
    model = serving.FewShotModel()
    model.config, model.algo, model.params, model.shape = config, algo, params, (SIDE, SIDE)
    model.max_steps = serving.max_adapt_steps(config)
    task = Task(*(t.float() if t.is_floating_point() else t for t in trajectory(classes=(9, 2, 11), shots=2, queries=4)))
    answered = model.predict(None, serving.request(task.support_x.numpy(), task.support_y.numpy(), task.query_x.numpy()))
    state = by_hand_state(algo, {k: v.clone().requires_grad_() for k, v in params.items()}, task, FAST["oml"])
    with torch.no_grad():
        expected = F.softmax(functional_call(algo.model, state, (task.query_x,)), -1)
    np.testing.assert_allclose(np.stack(answered["probabilities"]), expected.double().numpy(), rtol=1e-4, atol=1e-6)
    backwards = Task(task.support_x.flip(0), task.support_y.flip(0), task.query_x, task.query_y)
    reversed_answer = model.predict(None, serving.request(backwards.support_x.numpy(), backwards.support_y.numpy(), task.query_x.numpy()))
    assert not np.allclose(np.stack(reversed_answer["probabilities"]), np.stack(answered["probabilities"]))


# The authors' code, read independently of the configs: mrcl's oml_omniglot.py and README command (--tasks 3
# --update_step 5 --update_lr 0.03 --meta_lr 1e-4, a random batch of 15, 5 new images per class, 1,000 outputs, six
# convolutions of 256 at 84x84); ANML's mrcl_classification.py and README command (one class, --update_step 20,
# --update_lr 0.1, --meta_lr 0.001, 20,000 steps, 64 to remember with the trajectory's own 20, 256 and 112 filters).
AUTHORS = {
    "oml": {"task.ways": 3, "task.shots": 5, "task.queries": 5, "algorithm.inner_lr": 0.03, "train.outer_lr": 1e-4, "algorithm.remember": 15,
            "algorithm.replay": False, "algorithm.classes": 1000, "model.width": 256, "model.strides": [2, 1, 2, 1, 2, 2], "data.image_size": 84,
            "train.meta_batch": 1, "algorithm.first_order": False},
    "anml": {"task.ways": 1, "task.shots": 20, "task.queries": 0, "algorithm.inner_lr": 0.1, "train.outer_lr": 1e-3, "algorithm.remember": 64,
             "algorithm.replay": True, "algorithm.classes": 1000, "model.width": 256, "model.nm_width": 112, "data.image_size": 28,
             "train.meta_batch": 1, "train.steps": 20000},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_the_shipped_configs_hold_the_authors_hyperparameters_and_the_meta_test_protocol(name):
    from pipelines.config import dotted_keys

    keys = dotted_keys(load(name).as_dict())
    assert {k: keys[k] for k in AUTHORS[name]} == AUTHORS[name]
    assert keys["eval.steps"] == [10, 50, 100, 200, 600] and keys["algorithm.test_shots"] == 15 and keys["algorithm.test_queries"] == 5
