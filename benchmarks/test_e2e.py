"""End-to-end cases: every route on the same workloads, timed by pytest-benchmark, with the figures the report reads.

Nothing here asserts a speed: the numbers are recorded in each case's extra_info and judged by the report.
"""

from __future__ import annotations

import statistics
import time

from .suite import flop_figures, latency_figures, parity_figures, rounds_for


def test_end_to_end(benchmark, bench, case):
    route_name, clip_seconds, batch_size = case
    route = bench.route(route_name)
    workload = bench.workload(clip_seconds, batch_size)
    reference = bench.reference(workload)

    started = time.perf_counter()
    probabilities = route.run(workload)  # the warm-up call; deterministic, so its output is the one checked
    warm_up_seconds = time.perf_counter() - started
    benchmark.group = f"{route.device} {clip_seconds:g} s x {batch_size}"
    benchmark.pedantic(route.run, args=(workload,), rounds=rounds_for(warm_up_seconds, bench.settings),
                       iterations=1)

    # With --benchmark-disable pytest-benchmark makes one untimed call and keeps no stats: report the warm-up's.
    times = list(benchmark.stats.stats.data) if benchmark.stats else [warm_up_seconds]
    benchmark.extra_info.update(
        route=route_name, device=route.device, precision=route.precision, clip_seconds=clip_seconds,
        batch_size=batch_size, threads=bench.settings.threads, arithmetic=bench.arithmetic(route.device, route.precision), audio_seconds=round(workload.audio_seconds, 3),
        tokens_mean=float(sum(bench.token_counts(workload)) / batch_size),
        **latency_figures(times, workload),
        **flop_figures(bench.artifacts.config(), workload, bench.token_counts(workload),
                       statistics.median(times), bench.peak_for(route.device, route.precision)),
        **parity_figures(probabilities, reference),
        **bench.memory(route_name, workload),
    )
