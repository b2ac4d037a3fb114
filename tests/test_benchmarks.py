"""The benchmarks' own measuring instruments measure what they claim."""

from benchmarks.memory import measure


def test_memory_benchmark_sees_second_order_grow_with_inner_steps_and_checkpointing_keep_it_flat():
    mib = {(variant, steps): measure({"variant": variant, "inner_steps": steps})["mib"]
           for variant in ("second order", "first order", "checkpointed") for steps in (1, 10)}  # fmt: skip
    assert mib["second order", 10] > mib["second order", 1] + 20  # each inner step keeps its support-set graph
    assert mib["checkpointed", 10] < mib["second order", 10] - 20
    assert abs(mib["first order", 10] - mib["first order", 1]) < 5
