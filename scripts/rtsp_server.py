#!/usr/bin/python3
"""Loop H.264 MP4 files forever as live RTSP "cameras" (for tests and demos).

Run with Debian's python (needs python3-gi + gst-rtsp-server), not the venv:

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --host 127.0.0.1 \
        --stream cam1=/path/a.mp4 --stream cam2=/path/b.mp4

Design: each file's H.264 access units are demuxed once into memory at
start-up.  Each stream is a live "camera": a clock that starts with the first
client and from then on steps through the clip at its frame rate, looping,
whether or not anyone is connected (from AU 0, or from the keyframe at or
before `--start NAME=SECONDS`: cameras showing one clip out of step).  Every connected client's pipeline (a
shared appsrc) gets the AU of each step; a client that (re)connects first gets
the AUs from the latest keyframe up to the current one at once, so it decodes
at once and is on the live timeline, as it would be with a real camera.  No
decode/re-encode, so CPU use is negligible.  Looping back to AU 0 is only
decodable if the file starts with a keyframe and has no B-frames.

stdout: one "STREAM <name> <url> <w>x<h>@<fps>" line per stream, then
"READY rtsp://HOST:PORT".  Bad arguments: one error line on stderr, exit 2.
SIGTERM/SIGINT: exit 0.
"""
from __future__ import annotations

import argparse
import bisect
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402  (after require_version)

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AU_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"


class ArgError(Exception):
    pass


@dataclass
class Clip:
    aus: list[bytes]  # one H.264 access unit per frame, SPS/PPS before each IDR
    keyframes: list[int]  # indices of the AUs that decode on their own, ascending
    width: int
    height: int
    fps: float

    def since_keyframe(self, idx: int) -> list[bytes]:
        """The AUs from the latest keyframe at or before `idx` (cyclically) through `idx`: what a
        decoder joining at `idx` needs.  Empty when the clip has no keyframe."""
        if not self.keyframes:
            return []
        start = bisect.bisect_right(self.keyframes, idx) - 1
        key = self.keyframes[start]  # index -1: the last one, before the loop point
        if key <= idx:
            return self.aus[key:idx + 1]
        return self.aus[key:] + self.aus[:idx + 1]


def load_clip(path: str) -> Clip:
    """Demux a file into byte-stream access units (no decoding)."""
    # config-interval=-1 re-inserts SPS/PPS before every IDR, so any keyframe
    # (including AU 0 after a loop, or the first one a late client sees) is
    # self-contained.
    pipe = Gst.parse_launch(
        f"filesrc name=file ! qtdemux ! h264parse config-interval=-1 ! {AU_CAPS}"
        " ! appsink name=sink sync=false"
    )
    pipe.get_by_name("file").set_property("location", path)
    sink, bus = pipe.get_by_name("sink"), pipe.get_bus()
    pipe.set_state(Gst.State.PLAYING)
    aus: list[bytes] = []
    keyframes: list[int] = []
    caps, msg, loopable, last_pts = None, None, True, -1
    while True:
        sample = sink.try_pull_sample(Gst.SECOND // 10)
        if sample is not None:
            caps = caps or sample.get_caps()
            buf = sample.get_buffer()
            if not buf.has_flags(Gst.BufferFlags.DELTA_UNIT):
                keyframes.append(len(aus))
            aus.append(buf.extract_dup(0, buf.get_size()))
            # Looping needs a keyframe first and no reordering (B-frames).
            if (len(aus) == 1 and buf.has_flags(Gst.BufferFlags.DELTA_UNIT)) or (
                    buf.pts != Gst.CLOCK_TIME_NONE and buf.pts < last_pts):
                loopable = False
            last_pts = buf.pts
        elif sink.is_eos():
            break
        elif (msg := bus.pop_filtered(Gst.MessageType.ERROR)) is not None:
            break  # e.g. not an MP4, or no H.264 track: EOS never comes
    pipe.set_state(Gst.State.NULL)
    if msg is not None or not aus or caps is None:
        detail = msg.parse_error()[0].message if msg else "no H.264 video frames"
        raise ArgError(f"cannot read H.264 video from {path}: {detail}")
    if not loopable:
        print(f"rtsp_server: warning: {path} has B-frames or does not start with a"
              " keyframe; the loop point may show decode errors", file=sys.stderr, flush=True)
    s = caps.get_structure(0)
    ok, num, den = s.get_fraction("framerate")
    fps = num / den if ok and num > 0 and den > 0 else 25.0  # VFR files report 0/1
    return Clip(aus, keyframes, s.get_int("width")[1], s.get_int("height")[1], fps)


class LoopFactory(GstRtspServer.RTSPMediaFactory):
    """One shared live pipeline per path, fed by the path's Camera: every client sees the same
    'camera', and one that comes back later sees it where it is now, not from the start."""

    def __init__(self, clip: Clip, start_s: float = 0.0) -> None:
        super().__init__()
        self.camera = Camera(clip, start_s)
        self.set_launch(
            "( appsrc name=src is-live=true format=time do-timestamp=true"
            " ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.set_shared(True)
        self.connect("media-configure", self._on_configure)

    def _on_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        c = self.camera.clip
        num, den = Gst.util_double_to_fraction(c.fps)
        src.set_property("caps", Gst.Caps.from_string(
            f"{AU_CAPS},width={c.width},height={c.height},framerate={num}/{den}"))
        hook = MediaHook(self.camera, src)
        src.connect("need-data", hook.on_need_data)
        media.connect("unprepared", hook.on_unprepared)


class MediaHook:
    """Attaches one media's appsrc to the camera once it pulls (PLAYING), detaches it when the
    media is torn down (its last client gone).  The camera is only touched from the GLib main
    loop: need-data comes from a streaming thread, so both hand over with idle_add."""

    def __init__(self, camera: Camera, src: GstApp.AppSrc) -> None:
        self.camera, self.src = camera, src
        self.requested = self.gone = False

    def on_need_data(self, _src: object, _length: int) -> None:
        # Attach only once the pipeline pulls: frames pushed earlier would queue and arrive as a
        # burst.  From then on the camera's clock, not need-data, drives the pushes.
        if not self.requested:
            self.requested = True
            GLib.idle_add(self._attach)

    def on_unprepared(self, _media: object) -> None:
        self.gone = True
        GLib.idle_add(self._detach)

    def _attach(self) -> bool:
        if not self.gone:
            self.camera.attach(self.src)
        return GLib.SOURCE_REMOVE

    def _detach(self) -> bool:
        self.camera.detach(self.src)
        return GLib.SOURCE_REMOVE


class Camera:
    """A clip played as a live camera: from its first client on, a one-shot GLib timer steps
    through the AUs at the clip's frame rate, looping forever, and pushes each to every attached
    appsrc (none while nobody watches: the timeline runs on regardless)."""

    def __init__(self, clip: Clip, start_s: float = 0.0) -> None:
        self.clip = clip
        self.period = 1.0 / clip.fps
        self.sinks: list[GstApp.AppSrc] = []
        first = int(start_s * clip.fps) % len(clip.aus)
        # the first AU a client gets must decode on its own: the keyframe at or before the start
        first = clip.keyframes[max(0, bisect.bisect_right(clip.keyframes, first) - 1)] if clip.keyframes else 0
        self.idx, self.due = first, 0.0  # the next AU and when it is due
        self.running = False

    def attach(self, src: GstApp.AppSrc) -> None:
        if self.running:
            # Joining mid-GOP: catch up from the latest keyframe to the current AU at once, so the
            # client decodes its first frame now rather than at the next keyframe.
            for au in self.clip.since_keyframe((self.idx - 1) % len(self.clip.aus)):
                self._push(src, au)
            self.sinks.append(src)
        else:  # the first client switches the camera on, at its first AU
            self.sinks.append(src)
            self.running = True
            self._tick()

    def detach(self, src: GstApp.AppSrc) -> None:
        if src in self.sinks:
            self.sinks.remove(src)

    @staticmethod
    def _push(src: GstApp.AppSrc, au: bytes) -> None:
        src.emit("push-buffer", Gst.Buffer.new_wrapped(au))

    def _tick(self) -> bool:
        now = time.monotonic()
        if now - self.due > 1.0:  # first tick, or we were stalled (SIGSTOP): no burst
            self.due = now
        while self.due <= now:
            for src in self.sinks:
                self._push(src, self.clip.aus[self.idx])
            self.idx = (self.idx + 1) % len(self.clip.aus)
            self.due += self.period
        # One-shot timer to the next deadline: a fixed-interval GLib timer
        # drifts (it re-arms from dispatch time), ~3% slow at 10 fps.
        GLib.timeout_add(math.ceil((self.due - now) * 1000), self._tick)
        return GLib.SOURCE_REMOVE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + error
        raise ArgError(message)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    p = _Parser(description="Loop H.264 MP4 files as RTSP streams.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--stream", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--start", action="append", default=[], metavar="NAME=SECONDS",
                   help="the stream's first frame (the keyframe at or before it); default 0")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ArgError(f"invalid port {args.port}")
    streams: dict[str, str] = {}
    for spec in args.stream:
        name, sep, path = spec.partition("=")
        if not sep or not NAME_RE.match(name):
            raise ArgError(f"invalid --stream {spec!r}: need NAME=FILE, NAME matching {NAME_RE.pattern}")
        if name in streams:
            raise ArgError(f"duplicate stream name {name!r}")
        if not os.path.isfile(path):
            raise ArgError(f"stream {name!r}: file not found: {path}")
        streams[name] = path
    args.starts = {}
    for spec in args.start:
        name, sep, value = spec.partition("=")
        if not sep or name not in streams:
            raise ArgError(f"invalid --start {spec!r}: need NAME=SECONDS of a --stream NAME")
        try:
            args.starts[name] = float(value)
        except ValueError:
            raise ArgError(f"invalid --start {spec!r}: SECONDS must be a number") from None
        if not 0 <= args.starts[name] < 86400:
            raise ArgError(f"invalid --start {spec!r}: SECONDS must be in [0, 86400)")
    return args, streams


def main(argv: list[str]) -> int:
    Gst.init(None)
    loop = GLib.MainLoop()

    def on_signal() -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Dispatched from the main loop (not a Python handler interrupting
        # GStreamer calls), so quitting is safe and prompt.
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, on_signal)
    try:
        args, paths = parse_args(argv)
        loaded: dict[str, Clip] = {}  # streams of one file share its AUs (read-only)
        clips = {name: loaded[path] if path in loaded else loaded.setdefault(path, load_clip(path))
                 for name, path in paths.items()}
    except ArgError as e:
        print(f"rtsp_server: error: {e}", file=sys.stderr, flush=True)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for name, clip in clips.items():
        mounts.add_factory(f"/{name}", LoopFactory(clip, args.starts.get(name, 0.0)))
    if not server.attach(None):  # binds + listens; gst sets SO_REUSEADDR (TIME_WAIT ok)
        print(f"rtsp_server: error: cannot listen on {args.host}:{args.port}"
              " (address in use or not available)", file=sys.stderr, flush=True)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"rtsp://{host}:{server.get_bound_port()}"  # get_bound_port resolves --port 0
    for name, c in clips.items():
        print(f"STREAM {name} {base}/{name} {c.width}x{c.height}@{c.fps:g}")
    print(f"READY {base}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown racing GStreamer's streaming threads
