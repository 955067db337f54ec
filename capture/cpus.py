"""The CPUs this process may use: one count for the ONNX Runtime sessions, the codecs and the benchmarks."""
from __future__ import annotations

import os


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask where the system has one), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's FPUs, so ORT gains nothing from
    them); falls back to the usable logical CPUs when /proc/cpuinfo says nothing."""
    usable = usable_cpus()
    cores, processor, phys = {}, None, None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id" and processor is not None:
                    cores[processor] = (phys, value)
    except OSError:
        return max(1, len(usable))
    found = {cores[p] for p in usable if p in cores}
    return max(1, len(found) if found else len(usable))
