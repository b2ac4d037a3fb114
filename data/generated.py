"""Data sets drawn from a formula: nothing to read or prepare, a task is a pure function of its random stream."""

import functools

from data.registry import DataConfig, DatasetSpec, register_dataset
from meta_core.envs import Family, HalfCheetahDirection, HalfCheetahVelocity, PointNavigation
from meta_core.tasks import SinusoidTasks, TaskShape


def sinusoid_tasks(shape: TaskShape, examples: None, adapt_steps: int, data: DataConfig, split: str) -> SinusoidTasks:
    return SinusoidTasks(shape.shots, shape.queries)


def environments(family: type[Family], shape: TaskShape, examples: None, adapt_steps: int, data: DataConfig, split: str) -> Family:
    """Tasks of ``family``: ``task.shots`` episodes of ``task.horizon`` steps per round, and a round for every
    adaptation step the most adaptation steps take, and one more."""
    return family(shape.shots, shape.horizon, adapt_steps + 1)


register_dataset(
    DatasetSpec(
        "sinusoid",
        "regression",
        "y = A sin(x - phase), the MAML paper's regression tasks",
        tasks=sinusoid_tasks,
        example=lambda data: ("vectors", (1,)),
        outputs=lambda shape: 1,
        default_model=lambda data: "mlp",
    )
)
for name, family, summary in (
    ("pointnav", PointNavigation, "2D point navigation to a goal (the MAML paper's section 5.3)"),
    ("halfcheetah_vel", HalfCheetahVelocity, "MuJoCo HalfCheetah-v5 running at a target velocity in [0, 2] (MAML, ProMP)"),
    ("halfcheetah_dir", HalfCheetahDirection, "MuJoCo HalfCheetah-v5 running forward or backward (MAML, ProMP)"),
):
    register_dataset(
        DatasetSpec(
            name,
            "rl",
            summary,
            tasks=functools.partial(environments, family),
            example=lambda data, family=family: ("observations", (family.observation,)),
            outputs=lambda shape, family=family: family.action,
            default_model=lambda data: "policy",
        )
    )
