"""What a call costs beyond its own work, against how long that work takes: why 10 steps a call is not enough here.

Not in the table. A process spins for a given time and answers; the caller
takes the wall time from sending to having the answer, less the spin. Three
carriers, one after the other in this script: an OS pipe to a forked process
(the machine's own cost of waking a waiting process), an ordinary call to a Ray
actor, and a Ray compiled graph over the same actor. The spins are none, and the
sinusoid's one, 10 and 50 meta-steps (about 2.5, 25 and 130 ms). A caller that
waits longer wakes more slowly, and Ray's path wakes several threads in two
processes, so its cost per call grows with the call's length.

    .venv/bin/python -m benchmarks.call_latency [--seconds 1.5]
"""

import argparse
import multiprocessing
import statistics
import time

import ray
from ray.dag import InputNode

from cluster.driver import connect

SPINS_MS = (0.0, 2.5, 25.0, 130.0)


def spin(seconds: float) -> None:
    """Keep one core busy for ``seconds``, as a share's computation does (a sleep would let the core idle)."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass


def answer_spins(conn) -> None:
    """The pipe's far end: spin for each number of seconds received, answer, until None."""
    while (seconds := conn.recv()) is not None:
        spin(seconds)
        conn.send(None)


@ray.remote(num_cpus=1)
class Spinner:
    def spin(self, seconds: float) -> None:
        spin(seconds)


def extra_ms(call, seconds: float, budget_s: float) -> float:
    """Median ms of ``call(seconds)`` beyond ``seconds``, over about ``budget_s`` of calls (10 to 300)."""
    call(seconds)  # warm-up
    repeats = min(300, max(10, int(budget_s / max(seconds, 1e-3))))
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(seconds)
        walls.append(time.perf_counter() - started)
    return 1e3 * (statistics.median(walls) - seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="calls per cell: about this many seconds' worth")
    budget = parser.parse_args().seconds
    spins = [ms / 1e3 for ms in SPINS_MS]

    fork = multiprocessing.get_context("fork")  # before Ray starts any thread in this process
    here, there = fork.Pipe()
    far = fork.Process(target=answer_spins, args=(there,), daemon=True)
    far.start()
    pipe = [extra_ms(lambda s: (here.send(s), here.recv()), s, budget) for s in spins]
    here.send(None)
    far.join()

    connect(None)
    spinner = Spinner.remote()
    calls = [extra_ms(lambda s: ray.get(spinner.spin.remote(s)), s, budget) for s in spins]
    with InputNode() as seconds:
        graph = spinner.spin.bind(seconds).experimental_compile()
    compiled = [extra_ms(lambda s: ray.get(graph.execute(s)), s, budget) for s in spins]
    graph.teardown()
    ray.shutdown()

    print("ms a call takes beyond its spin (median), by the spin's length")
    print(f"{'spin ms':>8} {'pipe':>7} {'ray call':>9} {'compiled':>9} {'call/pipe':>10}")
    for ms, p, c, g in zip(SPINS_MS, pipe, calls, compiled, strict=True):
        print(f"{ms:>8.1f} {p:>7.3f} {c:>9.3f} {g:>9.3f} {c / p:>10.1f}")


if __name__ == "__main__":
    main()
