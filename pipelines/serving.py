"""The few-shot model MLflow serves: adapt to a request's support set, then predict its queries.

Logged as code (MLflow models-from-code): this file is the model. Its only
artifact is the trained learner's folder (``params.pt`` + ``config.yaml``),
rebuilt by ``read_trained`` without unpickling anything.

A request is one task, one row per example:

    set      "support" or "query"
    x        the example's flattened features, or pixels in [0, 1] (a 28x28 image is 784 floats; a colour
             image is channels first, 3x84x84); images are normalised as in training
    y        class id (0..ways-1) or regression target; null for queries

The answer has one row per query, in request order: ``prediction`` (class id
or value) and, for classification, ``probabilities`` over the ways.

A meta-RL policy adapts to a task's recorded transitions instead: each support
row is one step, ``x`` its observation and action side by side and ``y`` its
reward, in time order, in whole episodes of the trained ``task.horizon``
steps; each query row's ``x`` is an observation, and the answer's ``action``
is the adapted policy's mean action there. Each adaptation step is a
policy-gradient step on those episodes; for RL2 it is one more of them (the
first ``adapt_steps``) read by the recurrent policy, and each query is the
first step of the next episode.
``adapt_steps`` (a predict-time param) defaults to the trained inner steps and
may not exceed the maximum registered with the model (``max_adapt_steps``);
learners that adapt by conditioning on the support set (ProtoNet...) ignore it.
A lifelong learner (OML, ANML) learns the support rows as a stream, in request
order, one SGD step each: ``adapt_steps`` is then the classes of the stream it
learns, by default all of them.
A request with a non-finite ``x`` or ``y`` is refused, naming the row.
"""

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from meta_core.algorithms.base import answer
from meta_core.tasks import normalized
from pipelines.artifacts import read_trained
from pipelines.config import Config

TRAINED = "trained"  # the artifact key of the learner's folder
ADAPT_STEPS_MULTIPLE = 10  # the default most adaptation steps a request may ask for: this many times the trained ones


def adapt_steps(config: Config) -> int:
    """A request's adaptation unless it asks for another: the trained inner steps; for a lifelong learner, a count of
    classes, its whole stream (as many classes as the learner has output rows)."""
    return config.algorithm.options["classes"] if config.algorithm_spec.lifelong else config.algorithm.inner_steps


def max_adapt_steps(config: Config) -> int:
    """``register.max_adapt_steps``, else ``ADAPT_STEPS_MULTIPLE`` x the default adaptation (at least that many): a
    request's adaptation must not keep the server busy long after its client gave up."""
    return config.register.max_adapt_steps or ADAPT_STEPS_MULTIPLE * max(adapt_steps(config), 1)


def input_shape(config: Config) -> tuple[int, ...]:
    """The shape one example's ``x`` is reshaped to before the model sees it."""
    return config.dataset.example(config.data)[1]


def signature(config: Config, kind: str) -> ModelSignature:
    outputs = {
        "classification": [ColSpec("long", "prediction"), ColSpec(Array("double"), "probabilities")],
        "regression": [ColSpec("double", "prediction")],
        "rl": [ColSpec(Array("double"), "action")],
    }[kind]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "set"), ColSpec(Array("double"), "x"), ColSpec("double", "y")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("adapt_steps", "long", adapt_steps(config))]),
    )


def request(support_x, support_y, query_x) -> pd.DataFrame:
    """A request frame from support examples with their labels (or targets) and query examples."""
    rows = [("support", x, float(y)) for x, y in zip(support_x, support_y, strict=True)] + [("query", x, None) for x in query_x]
    return pd.DataFrame([{"set": s, "x": np.asarray(x, dtype=np.float64).ravel().tolist(), "y": y} for s, x, y in rows])


def bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class FewShotModel(PythonModel):
    def load_context(self, context) -> None:
        self.config, self.algo, self.params = read_trained(context.artifacts[TRAINED])
        self.shape = input_shape(self.config)
        self.max_steps = (context.model_config or {}).get("max_adapt_steps") or max_adapt_steps(self.config)  # older versions: the default

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        steps = int((params or {}).get("adapt_steps", adapt_steps(self.config)))
        if not 0 <= steps <= self.max_steps:
            raise bad_request(f"adapt_steps: expected an integer from 0 to {self.max_steps} (this model's maximum), got {steps}")
        try:
            out = answer(self.algo, self.params, *self.tensors(model_input), steps).detach()
        except ValueError as error:  # what a learner refuses of a request (RL2: more episodes asked for than given)
            raise bad_request(str(error)) from error
        if self.algo.kind == "regression":
            return pd.DataFrame({"prediction": out.squeeze(-1).double().numpy()})
        if self.algo.kind == "rl":
            return pd.DataFrame({"action": list(out.double().numpy())})
        probabilities = out.softmax(-1).double().numpy()
        return pd.DataFrame({"prediction": probabilities.argmax(-1), "probabilities": list(probabilities)})

    def tensors(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support inputs, support labels (or targets) and query inputs, checked against the trained model."""
        missing = {"set", "x", "y"} - set(frame.columns)
        if missing:
            raise bad_request(f"request: missing column(s) {sorted(missing)}; expected set, x and y")
        unknown = set(frame["set"]) - {"support", "query"}
        if unknown:
            raise bad_request(f"set: expected 'support' or 'query', got {sorted(unknown)}")
        size = int(np.prod(self.shape))
        if self.algo.kind == "rl":
            return self.transitions(frame, size)
        lengths = {len(x) for x in frame["x"]}
        if lengths != {size}:
            raise bad_request(f"x: expected {size} values per row (shape {self.shape}, flattened), got {sorted(lengths)}")
        finite_x = [bool(np.isfinite(np.asarray(x, dtype=np.float64)).all()) for x in frame["x"]]
        if not all(finite_x):
            raise bad_request(f"x: row {finite_x.index(False)} holds a NaN or infinite value")
        support, query = frame[frame["set"] == "support"], frame[frame["set"] == "query"]
        if support.empty or query.empty:
            raise bad_request("set: a request needs at least one 'support' row and one 'query' row")
        y = support["y"].to_numpy(dtype=np.float64)
        if np.isnan(y).any():
            raise bad_request("y: every support row needs a label (or target)")
        if np.isinf(y).any():
            row = np.flatnonzero(frame["set"].to_numpy() == "support")[np.isinf(y)][0]
            raise bad_request(f"y: row {row} holds an infinite value")
        if self.algo.kind == "classification":
            classes = self.algo.outputs  # the ways; a lifelong learner's output rows
            if not np.all((y == np.round(y)) & (y >= 0) & (y < classes)):
                raise bad_request(f"y: support labels must be class ids 0..{classes - 1}")
            labels = torch.tensor(y).long()
        else:
            labels = torch.tensor(y).float().unsqueeze(-1)
        return self.stack(support["x"]), labels, self.stack(query["x"])

    def transitions(self, frame: pd.DataFrame, observation: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A meta-RL request's episodes, (episodes, horizon, observation + action) with their rewards, and its query
        observations, checked against the trained policy."""
        step = observation + self.config.dataset.outputs(self.config.task)
        support, query = frame[frame["set"] == "support"], frame[frame["set"] == "query"]
        for rows, size, what in ((support, step, "a support row's observation and action"), (query, observation, "a query row's observation")):
            lengths = {len(x) for x in rows["x"]}
            if lengths - {size}:
                raise bad_request(f"x: expected {size} values in {what}, got {sorted(lengths - {size})}")
        values = [np.asarray(x, dtype=np.float64) for x in frame["x"]] + [support["y"].to_numpy(dtype=np.float64)]
        if not all(np.isfinite(v).all() for v in values):
            raise bad_request("x, y: a request holds a NaN or infinite value, or a support row without its reward")
        horizon = self.config.task.horizon
        if support.empty or query.empty or len(support) % horizon:
            raise bad_request(f"set: expected whole episodes of {horizon} support rows (steps, in time order) and at least one query row")
        x = torch.from_numpy(np.stack(support["x"].to_numpy()).astype(np.float32)).view(-1, horizon, step)
        rewards = torch.from_numpy(support["y"].to_numpy(dtype=np.float32)).view(-1, horizon)
        return x, rewards, torch.from_numpy(np.stack(query["x"].to_numpy()).astype(np.float32))

    def stack(self, column: pd.Series) -> torch.Tensor:
        x = torch.from_numpy(np.stack(column.to_numpy()).astype(np.float32)).reshape(-1, *self.shape)
        return normalized(x, self.config.dataset.stats)


mlflow.models.set_model(FewShotModel())
