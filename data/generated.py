"""Data sets drawn from a formula: nothing to read or prepare, a task is a pure function of its random stream."""

from data.registry import DataConfig, DatasetSpec, register_dataset
from meta_core.rl import PointGoals
from meta_core.tasks import SinusoidTasks, TaskShape


def sinusoid_tasks(shape: TaskShape, examples: None, adapt_steps: int, data: DataConfig, split: str) -> SinusoidTasks:
    return SinusoidTasks(shape.shots, shape.queries)


def point_goals(shape: TaskShape, examples: None, adapt_steps: int, data: DataConfig, split: str) -> PointGoals:
    """Goals with exploration noise for every batch of rollouts the most adaptation steps take, and one more."""
    return PointGoals(shape.shots, shape.horizon, adapt_steps + 1)


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
register_dataset(
    DatasetSpec(
        "pointnav",
        "rl",
        "2D point navigation to a goal (the MAML paper's section 5.3)",
        tasks=point_goals,
        example=lambda data: ("observations", (2,)),
        outputs=lambda shape: 2,
        default_model=lambda data: "policy",
    )
)
