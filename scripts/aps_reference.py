"""The reference workload of scripts/bench_dispatch.py on APScheduler 3.x's BackgroundScheduler.

Run by that benchmark with the interpreter of the `bench` dependency group (never a runtime
dependency): `SHORT` interval jobs every `EVERY_S` seconds, each running `true` as a child
process, beside one job that runs `sleep LONG_S` every `LONG_EVERY_S` seconds, on the
scheduler's defaults (a ThreadPoolExecutor of 10 threads), for `DURATION_S`. Prints one JSON
line: each short run's lateness (its start minus the occurrence it serves) and the number of
occurrences that fell due in the window.

Usage: aps_reference.py SHORT EVERY_S LONG_S LONG_EVERY_S DURATION_S
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler


def main(argv: list[str]) -> int:
    short, every_s, long_s, long_every_s, duration_s = (float(arg) for arg in argv)
    lateness: list[float] = []
    lock = threading.Lock()
    anchor = math.ceil(time.time()) + 2.0  # every interval job's first due time

    def short_job() -> None:
        started = time.time()
        served = anchor + math.floor((started - anchor) / every_s) * every_s
        with lock:
            lateness.append(started - served)
        subprocess.run(["true"], check=True)

    def long_job() -> None:
        subprocess.run(["sleep", str(long_s)], check=True)

    scheduler = BackgroundScheduler()
    start = datetime.fromtimestamp(anchor).astimezone()
    for i in range(int(short)):
        scheduler.add_job(short_job, "interval", seconds=every_s, start_date=start, id=f"s{i}")
    scheduler.add_job(
        long_job, "interval", seconds=long_every_s, start_date=start + timedelta(seconds=0.5)
    )
    scheduler.start()
    time.sleep(anchor - time.time() + duration_s - 0.01)
    scheduler.shutdown(wait=False)
    occurrences = int(short) * math.ceil(duration_s / every_s)
    print(json.dumps({"lateness_s": lateness, "occurrences": occurrences}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
