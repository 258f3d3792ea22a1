"""The only code that reads the process table: identity checks for the pids we track.

A process is ours when its pid exists *and* its start time matches the one recorded at launch.
A zombie is dead; a different start time means the pid was reused and our process is gone.
"""

import math

import psutil

from runtimes.liveness import ALIVE, DENIED, GONE, REUSED, UNVERIFIABLE, ZOMBIE, ProcessFacts

# Start times are read from /proc with clock-tick resolution, and the boot time they are added to
# can shift by a second; a reused pid starting within this window of ours would be missed.
CREATE_TIME_TOLERANCE = 1.0


def create_time_of(pid):
    """The start time of a live pid (for recording identity at launch), or None."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def probe_one(pid, expected_create_time):
    if expected_create_time is not None and not math.isfinite(expected_create_time):
        # NaN compares unequal to everything, so any process would pass as ours: refuse to judge.
        detail = f"recorded create time {expected_create_time} is not a finite number; identity unknowable"
        return ProcessFacts(pid, UNVERIFIABLE, detail=detail)
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            create_time = process.create_time()
            status = process.status()
    except psutil.NoSuchProcess:
        return ProcessFacts(pid, GONE)
    except psutil.AccessDenied as error:
        return ProcessFacts(pid, DENIED, detail=str(error) or "AccessDenied")
    except (ValueError, OverflowError) as error:  # a pid psutil cannot even look up
        return ProcessFacts(pid, GONE, detail=str(error))
    if expected_create_time is not None and abs(create_time - expected_create_time) > CREATE_TIME_TOLERANCE:
        return ProcessFacts(
            pid, REUSED, create_time, f"started at {create_time:.2f}, ours at {expected_create_time:.2f}"
        )
    if status == psutil.STATUS_ZOMBIE:
        return ProcessFacts(pid, ZOMBIE, create_time, "zombie")
    return ProcessFacts(pid, ALIVE, create_time, status)


def probe(identities):
    """Map each (pid, create_time) to what the process table says of it now."""
    return {identity: probe_one(*identity) for identity in set(identities)}
