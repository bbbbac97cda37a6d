"""CPU time stolen by the hypervisor: how far to trust a benchmark's wall times on a virtual machine.

A VM's cores may be given to other guests for a while: that time is *stolen* (the steal column of
/proc/stat), and every wall time measured meanwhile stretches. On the 2-core VMs of this project it is
under 1% in a quiet phase and up to a third of all CPU time in a slow one. The benchmarks print the share
stolen while each table ran.
"""

from __future__ import annotations


def cpu_ticks() -> tuple[int, int]:
    """(stolen, all) CPU ticks of the machine so far, from /proc/stat ((0, 0) where there is none)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def stolen_since(before: tuple[int, int]) -> float:
    """The share of the machine's CPU time stolen since ``cpu_ticks()`` returned ``before``."""
    stolen, total = cpu_ticks()
    return (stolen - before[0]) / max(1, total - before[1])
