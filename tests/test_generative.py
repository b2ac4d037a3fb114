"""The generation-based learners: what defines each method, the same training on 1 and 3 workers, and a served model."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import data
from meta_core.algorithms.base import PREDICTION_SEED, answer
from meta_core.algorithms.generative import GENERATOR
from meta_core.algorithms.gradient import GradientLearner
from meta_core.models import forward
from meta_core.registry import ALGORITHMS, MODELS, Learner
from meta_core.tasks import ClassificationTasks, seeded_noise, task_rng
from pipelines.build import build_learner, prepared, task_source
from pipelines.config import load
from pipelines.pipeline import run
from pipelines.serving import request
from tests.cluster_helpers import config, start, train
from tests.test_data import png
from tests.test_families import WAYS, class_images, episode, logits, one_thread  # noqa: F401  (one_thread: an autouse fixture)


def make(name: str, inner_steps: int = 1, inner_lr: float = 0.01, **options):
    """A learner for 3-way 28x28 episodes (conv4 of width 8) and its initial parameters."""
    algo = Learner(ALGORITHMS[name], MODELS["conv4"], "classification", (28, 28), WAYS, inner_steps, inner_lr, options, {"width": 8}).build()
    return algo, algo.initial_params(1)


def generator_grads(grads: dict) -> dict:
    return {k: g for k, g in grads.items() if k.startswith(GENERATOR)}


def seeded(fn, *args):
    with seeded_noise("cpu", 0, 0):
        return fn(*args)


# -- hallucination -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, base", [("hallucination", "protonet"), ("hallucination_matchingnet", "matchingnet")])
def test_zero_hallucinated_examples_is_the_base_learner_exactly(name, base):
    algo, params = make(name, generated=0)
    plain, plain_params = make(base)
    assert plain_params.keys() < params.keys() and all(torch.equal(plain_params[k], params[k]) for k in plain_params)
    task = episode()
    assert torch.equal(seeded(logits, algo, params, task), logits(plain, plain_params, task))
    grads, _ = seeded(algo.task_gradient, params, task)
    expected, _ = plain.task_gradient(plain_params, task)
    assert all(torch.equal(grads[k], expected[k]) for k in expected)
    assert all(not g.any() for g in generator_grads(grads).values())


@pytest.mark.parametrize("name", ["hallucination", "hallucination_matchingnet"])
def test_hallucinated_examples_join_the_support_set_and_the_generator_learns_through_the_query_loss(name):
    algo, params = make(name, generated=4)
    task = episode(shots=2)
    embeddings = forward(algo.model, params, task.support_x)
    support, labels = seeded(algo.support_set, params, embeddings, task.support_y)
    assert len(support) == len(task.support_y) + WAYS * 4
    assert torch.equal(support[: len(embeddings)], embeddings)
    assert torch.equal(labels[len(embeddings) :].bincount(), torch.full((WAYS,), 4))  # 4 of each class, labelled as their seeds
    none, _ = make(name, generated=0)
    assert not torch.allclose(seeded(logits, algo, params, task), logits(none, params, task))  # they move the prototypes / attention
    grads, _ = seeded(algo.task_gradient, params, task)
    assert generator_grads(grads) and all(g.abs().sum() > 0 for g in generator_grads(grads).values())


def test_each_hallucination_is_seeded_by_a_support_example_of_its_own_class():
    algo, _ = make("hallucination", generated=50)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1])  # in any order, with uneven shots
    seeds = seeded(algo.seeds, labels)
    assert torch.equal(labels[seeds], torch.arange(WAYS).repeat_interleave(50))
    assert set(seeds.tolist()) == set(range(len(labels)))  # every member of a class gets drawn


# -- MetaGAN ---------------------------------------------------------------------------------------------


def metagan():
    """MetaGAN with 2 fakes per class and a fixed noise sequence (``algo.noise_batches``), and one episode."""
    algo, params = make("metagan", inner_steps=1, inner_lr=0.4, generated=2)
    batches = [torch.randn(WAYS * 2, algo.noise, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    algo.noise_batches = batches
    queue = iter(batches)
    algo.draw = lambda like: next(queue)
    return algo, params, episode()


def reference(algo, params, task, support_noise, query_noise) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """MetaGAN written out: one inner SGD step of the ``ways + 1``-way learner on real support plus fakes, then the
    generator's loss, ``-log P(real)`` of fresh fakes under the adapted learner, and its gradient by plain autograd;
    with the adapted learner's logits on the real queries."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    gen = {k.removeprefix(GENERATOR): v for k, v in leaves.items() if k.startswith(GENERATOR)}
    learner = {k: v for k, v in leaves.items() if not k.startswith(GENERATOR)}
    fakes = torch.func.functional_call(algo.model.generator, gen, (task.support_x, support_noise))
    x = torch.cat([task.support_x, fakes])
    y = torch.cat([task.support_y, torch.full((len(fakes),), WAYS)])
    inner = F.cross_entropy(forward(algo.model, {**learner, **{GENERATOR + k: v for k, v in gen.items()}}, x), y)
    steps = torch.autograd.grad(inner, list(learner.values()), create_graph=True)
    adapted = {**{k: w - 0.4 * g for (k, w), g in zip(learner.items(), steps, strict=True)}, **{GENERATOR + k: v for k, v in gen.items()}}
    fresh = torch.func.functional_call(algo.model.generator, gen, (task.support_x, query_noise))
    loss = -forward(algo.model, adapted, fresh).softmax(-1)[:, :WAYS].sum(-1).log().mean()
    grads = dict(zip(gen, torch.autograd.grad(loss, list(gen.values()), retain_graph=True), strict=True))
    return grads, loss.detach(), forward(algo.model, adapted, task.query_x).detach()


def test_metagan_trains_the_generator_on_its_adversarial_loss_through_the_adapted_learner():
    algo, params, task = metagan()
    grads, metrics = algo.task_gradient(params, task)
    support_noise, query_noise = algo.noise_batches[:2]
    expected, loss, _ = reference(algo, params, task, support_noise, query_noise)
    got = {k.removeprefix(GENERATOR): g for k, g in generator_grads(grads).items()}
    assert got.keys() == expected.keys() and all(g.abs().sum() > 0 for g in got.values())
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(metrics["generator_loss"], loss, rtol=1e-5, atol=1e-6)


def test_metagan_fakes_change_the_adapted_learner():
    algo, params, task = metagan()
    with_fakes = algo.adapt(params, task)
    real_only = GradientLearner.adaptations(algo, params, task, [algo.inner_steps])[0]
    assert not torch.allclose(with_fakes["head.weight"], real_only["head.weight"])
    assert all(torch.equal(with_fakes[k], params[k]) for k in params if k.startswith(GENERATOR))  # never adapted


def test_metagan_trains_a_ways_plus_one_head_and_predicts_over_the_real_classes():
    algo, params, task = metagan()
    assert algo.model.head.out_features == WAYS + 1 and params["head.weight"].shape[0] == WAYS + 1
    grads, _ = algo.task_gradient(params, task)
    assert grads["head.weight"][WAYS].abs().sum() > 0  # the "fake" class's row is trained
    # a "fake" logit that wins every query: counted, it would make every answer wrong; the metrics leave it out
    fake_wins = {**params, "head.bias": params["head.bias"].clone().index_fill(0, torch.tensor([WAYS]), 100.0)}
    queue = iter(algo.noise_batches[2:])
    algo.draw = lambda like: next(queue)
    _, metrics = algo.task_gradient(fake_wins, task)
    _, _, logits = reference(algo, fake_wins, task, *algo.noise_batches[2:4])
    assert (logits.argmax(-1) == WAYS).all()
    accuracy = (logits[:, :WAYS].argmax(-1) == task.query_y).float().mean()
    assert accuracy > 0 and metrics["post_adapt_acc"] == accuracy
    torch.testing.assert_close(metrics["post_adapt_loss"], F.cross_entropy(logits[:, :WAYS], task.query_y), rtol=1e-4, atol=1e-6)
    del algo.draw  # the learner's own noise again
    with seeded_noise("cpu", PREDICTION_SEED):  # the noise predict draws, to rebuild its answer
        adapted = algo.adapt(params, task)
    full = forward(algo.model, adapted, task.query_x)
    out = answer(algo, params, task.support_x, task.support_y, task.query_x)
    assert out.shape == (len(task.query_x), WAYS)
    assert torch.equal(out.argmax(-1), full[:, :WAYS].argmax(-1))
    assert torch.equal(out, answer(algo, params, task.support_x, task.support_y, task.query_x))  # the same noise each time


def test_metagan_checkpointed_inner_loop_gives_the_same_meta_gradient():
    task = episode()
    grads = {}
    for checkpointed in (False, True):
        algo, params = make("metagan", inner_steps=2, inner_lr=0.4, checkpoint_inner=checkpointed)
        grads[checkpointed], _ = seeded(algo.task_gradient, params, task)
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6)


def test_noise_follows_the_task_key_not_the_worker():
    """A task's noise comes from its key: the same task on another worker, in any order, gets the same gradient."""
    algo, params = make("hallucination", generated=2)
    source = ClassificationTasks(class_images(), WAYS, 1, 2)
    tasks = [source.sample(task_rng(0, 0, 5, i)) for i in range(2)]
    first = [seeded_noise("cpu", 0, 0, 5, i) for i in range(2)]
    with first[1]:
        late, _ = algo.task_gradient(params, tasks[1])
    with first[0]:
        algo.task_gradient(params, tasks[0])
    with seeded_noise("cpu", 0, 0, 5, 1):
        again, _ = algo.task_gradient(params, tasks[1])
    with seeded_noise("cpu", 0, 0, 5, 0):
        other_noise, _ = algo.task_gradient(params, tasks[1])
    assert all(torch.equal(late[k], again[k]) for k in late)
    assert not torch.equal(late["generator.0.weight"], other_noise["generator.0.weight"])


# -- users' tables, through the cluster and the pipeline -------------------------------------------------


def user_table(folder, images: bool):
    """A table of 6 classes, 4 rows each: two numeric features, or 28x28 PNG bytes (each class its own grey)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([f"c{i}" for i in range(6)], 4)
    if images:
        pd.DataFrame({"label": labels, "image": [png(int(v), 28) for v in np.repeat(range(0, 240, 40), 4)]}).to_parquet(folder / "t.parquet")
        return folder / "t.parquet", ["model.name=null"]
    pd.DataFrame({"label": labels, "f1": rng.normal(size=24), "f2": rng.normal(size=24)}).to_csv(folder / "t.csv", index=False)
    return folder / "t.csv", ["data.features=[f1, f2]", "model.name=null", "model.width=null"]


@pytest.mark.parametrize("images", [False, True], ids=["features", "images"])
@pytest.mark.parametrize("name", ["hallucination", "hallucination_matchingnet", "metagan"])
def test_a_users_table_of_features_or_images(tmp_path, name, images):
    source, columns = user_table(tmp_path, images)
    table = ["data.name=table", f"data.source={source}", "data.split=class", "data.test_size=0.5", "data.rotations=false", *columns]
    shipped = "metagan" if name == "metagan" else "hallucination"
    cfg = load(shipped, [*table, f"algorithm.name={name}", f"data.cache_dir={tmp_path}", "task.ways=2", "task.shots=1", "task.queries=2"])
    algo, splits = build_learner(cfg), data.load_splits(prepared(cfg))
    assert cfg.model.name == ("conv4" if images else "mlp")
    task = task_source(cfg, splits["train"]).sample(task_rng(0, 0, 0, 0))
    grads, metrics = seeded(algo.task_gradient, algo.initial_params(0), task)
    assert all(g.abs().sum() > 0 for g in generator_grads(grads).values()) and np.isfinite(float(metrics["meta_loss"]))
    assert answer(algo, algo.initial_params(0), task.support_x, task.support_y, task.query_x).shape == (4, 2)


# -- through the cluster and the pipeline ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One prepared Omniglot for every run here."""
    return tmp_path_factory.mktemp("cache")


def small(omniglot, cache) -> list[str]:
    return [*omniglot.overrides(omniglot.zips[0]), "data.rotations=false", "model.width=8", "task.queries=2", f"data.cache_dir={cache}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hallucination", "metagan"])
def test_one_and_three_workers_train_the_same_parameters(ray_local, omniglot, cache, name):
    cfg = {w: config(*small(omniglot, cache), f"cluster.workers={w}", "train.steps=2", name=name) for w in (1, 3)}
    one, three = train(cfg[1]), train(cfg[3])
    assert not np.allclose(one, start(cfg[1])[2].numpy())  # it trained
    np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hallucination", "metagan"])
def test_a_generative_learner_is_tracked_registered_and_served(ray_local, tracking, omniglot, cache, name):
    overrides = ["train.steps=3", "train.meta_batch=4", "eval.tasks=4", "eval.steps=[1]", "cluster.workers=2", "train.compile=false"]
    cfg = load(name, [*small(omniglot, cache), *overrides, f"register.model_name=served-{name}"])
    parent = mlflow.get_run(run(cfg, tracking))
    assert parent.info.status == "FINISHED" and parent.data.tags["algorithm"] == name
    assert np.isfinite(parent.data.metrics["eval_post_adapt_acc"])
    model = mlflow.pyfunc.load_model(f"models:/served-{name}@champion")
    task = ClassificationTasks(class_images(12, 4), 5, 1, 2).sample(task_rng(0, 1, 0, 0))
    frame = request(task.support_x.numpy(), task.support_y.numpy(), task.query_x.numpy())
    answers = [model.predict(frame, params={"adapt_steps": steps}) for steps in (1, 1, 3)]
    assert all(len(a) == len(task.query_x) and len(a["probabilities"][0]) == 5 for a in answers)  # the real classes only
    once, again, longer = (np.stack(a["probabilities"]) for a in answers)
    assert np.array_equal(once, again)  # the same request, the same generated examples, the same answer
    # adapt_steps: MetaGAN's inner steps on real plus generated examples; seeing the support set is all hallucination does
    assert np.allclose(once, longer) == (name == "hallucination")
