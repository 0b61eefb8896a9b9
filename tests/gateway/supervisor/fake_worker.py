"""Stand-in camera worker for the supervisord tests: sleeps until SIGTERM. Arguments are ignored
(they exist so the command line looks like `... detector_worker.cli --spec PATH`), except
`--ignore-term`, which makes it survive SIGTERM."""

import signal
import sys
import time

if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("fake worker up", flush=True)
while True:
    time.sleep(3600)
