"""``python -m pipelines specs``: the registered algorithms, models and data sets, as the config accepts them."""

from data.registry import DATASETS
from meta_core.registry import ALGORITHMS, MODELS, Option


def options(items: tuple[Option, ...], indent: str = "      ") -> list[str]:
    return [f"{indent}{o.name}: {o.default!r}  ({o.expects}) {o.help}".rstrip() for o in items]


def describe() -> str:
    lines = ["algorithms (algorithm.name), with their own options under algorithm:"]
    for spec in ALGORITHMS.values():
        adapts = "gradient steps" if spec.inner_loop else "reading the support set"
        lines.append(
            f"  {spec.name}: {spec.summary}; adapts by {adapts}; {', '.join(spec.kinds)}"
            + (f"; models: {', '.join(spec.models)}" if spec.models else "")
        )
        lines += options(spec.options)
    lines.append("models (model.name), with their own options under model:")
    for spec in MODELS.values():
        lines.append(f"  {spec.name}: {spec.summary}; reads {', '.join(spec.inputs)}")
        lines += options(spec.options)
    lines.append("data sets (data.name):")
    for spec in DATASETS.values():
        lines.append(f"  {spec.name}: {spec.summary}; {spec.kind}" + (f"; data.source: {spec.sources}" if spec.sources else "; drawn from a formula"))
    return "\n".join(lines)
