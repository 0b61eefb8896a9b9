"""When did the camera send each frame? An extra RTSP client per stream that only demuxes.

`python -m bench.probe OUT` reads `add NAME URL` lines on stdin (and `quit`), opens each stream with
PyAV over TCP like the workers (no probing delay), and for every packet records when it arrived and
the frame index its SEI stamp carries: `NAME INDEX ARRIVAL` lines in OUT. No decoding, so watching
20 streams costs little. On localhost the packet's arrival is within a millisecond or two of the
RTSP server pushing the frame, which is what "capture" means for a test camera.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import av

from .stamp import read_sei

OPTIONS = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32", "fflags": "nobuffer"}


class Probe:
    def __init__(self, out: Path) -> None:
        self.out = out.open("a", buffering=1 << 16)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def watch(self, name: str, url: str) -> None:
        while not self.stop.is_set():
            try:
                with av.open(url, options=OPTIONS, timeout=(5, 3)) as container:
                    stream = container.streams.video[0]
                    for packet in container.demux(stream):
                        t = time.time()
                        if self.stop.is_set():
                            return
                        index = read_sei(bytes(packet))
                        if index is not None:
                            with self.lock:
                                self.out.write(f"{name} {index} {t:.6f}\n")
            except Exception as err:  # reconnect: the server may be restarting
                print(f"probe {name}: {err}", file=sys.stderr, flush=True)
            self.stop.wait(0.5)

    def flusher(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.2)
            with self.lock:
                self.out.flush()


def main() -> int:
    probe = Probe(Path(sys.argv[1]))
    threading.Thread(target=probe.flusher, daemon=True).start()
    for line in sys.stdin:
        parts = line.split()
        if parts and parts[0] == "add" and len(parts) == 3:
            threading.Thread(target=probe.watch, args=(parts[1], parts[2]), daemon=True).start()
        elif parts and parts[0] == "quit":
            break
    probe.stop.set()
    with probe.lock:
        probe.out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
