"""The benchmarks' own measuring instruments measure what they claim."""

import json
import subprocess
import sys
import time

from benchmarks.call_latency import extra_ms, spin
from benchmarks.common import HELD_OUT, ROOT, omniglot_data
from benchmarks.memory import measure
from pipelines.config import CONFIG_DIR, load


def test_memory_benchmark_sees_second_order_grow_with_inner_steps_and_checkpointing_keep_it_flat():
    mib = {(variant, steps): measure({"variant": variant, "inner_steps": steps})["mib"]
           for variant in ("second order", "first order", "checkpointed") for steps in (1, 10)}  # fmt: skip
    assert mib["second order", 10] > mib["second order", 1] + 20  # each inner step keeps its support-set graph
    assert mib["checkpointed", 10] < mib["second order", 10] - 20
    assert abs(mib["first order", 10] - mib["first order", 1]) < 5


def test_share_profile_sees_the_same_operators_and_calls_in_a_worker_as_in_process():
    """The two sides of benchmarks/profile_share.py must profile the same work, or their differences mean nothing."""
    script = "import json; from benchmarks.profile_share import measure; print(json.dumps(measure('sinusoid', steps=3, overrides=['train.compile=false'])))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    here, in_worker, meta_batch = json.loads(out.stdout.strip().splitlines()[-1])
    assert meta_batch == 25
    calls = lambda side: {op: round(v[0]) for op, v in side["ops"].items()}  # noqa: E731
    assert calls(here) == calls(in_worker)
    assert calls(here)["aten::mse_loss"] > 0  # the MLP's loss, so the share's operators are there
    assert all(side["wall_ms"] > sum(v[1] for v in side["ops"].values()) > 0 for side in (here, in_worker))


def test_call_latency_counts_only_what_a_call_takes_beyond_its_work():
    bare = extra_ms(spin, 0.002, budget_s=0.05)
    delayed = extra_ms(lambda seconds: (spin(seconds), time.sleep(0.005)), 0.002, budget_s=0.05)
    assert 0 <= bare < 1  # a spin called in this process adds next to nothing to itself
    assert 4.5 < delayed - bare < 10  # the 5 ms sleep after the spin is what the call takes beyond its work


def test_omniglot_benchmarks_read_their_zips_from_omniglot_dir_else_the_official_small_sets(monkeypatch):
    monkeypatch.setenv("OMNIGLOT_DIR", "/data/omniglot")
    assert omniglot_data()[0] == "data.source=/data/omniglot"
    monkeypatch.delenv("OMNIGLOT_DIR")
    data = load(str(CONFIG_DIR / "omniglot.yaml"), omniglot_data())["data"]  # every override is a key the config knows
    assert data["source"] == ["images_background_small1", "images_background_small2"]
    assert (data["split"], data[HELD_OUT.removeprefix("data.")]) == ("group", 0.25)
