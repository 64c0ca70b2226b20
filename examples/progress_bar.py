"""Progress for a long map run: jobserver_extras.progress.Progress.

The bar advances from completion callbacks, in completion order, while the
results still come back in input order.  Done, failed and lost tasks are
counted separately.  With ``tqdm`` installed the bar is a ``tqdm`` bar;
without it, a plain counter.  Any object with ``update(n)`` works as a bar.
"""

from __future__ import annotations

import os
import random
import signal
import time

from jobserver import Jobserver, LostResult
from jobserver_extras.progress import Progress


def work(i: int) -> int:
    time.sleep(random.uniform(0.0, 0.03))
    if i == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    if i % 10 == 7:
        raise ValueError(i)
    return i


def main() -> None:
    inputs = list(range(40))
    with Jobserver(slots=4) as js, Progress(total=len(inputs), desc="work") as progress:
        futures = [progress.track(js(work, i)) for i in inputs]
        for future in futures:
            future.wait()
    print(progress)
    assert (progress.done, progress.failed, progress.lost) == (35, 4, 1)
    try:
        futures[13].result()
    except LostResult:
        pass
    # map with a bar: results in input order.
    with Jobserver(slots=4) as js, Progress(total=20, desc="squares") as progress:
        values = list(progress.map(js, pow, [(i, 2) for i in range(20)]))
    assert values == [i * i for i in range(20)]


if __name__ == "__main__":
    main()
