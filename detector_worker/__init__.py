"""Per-camera detection worker: one OS process per camera, from RTSP to ZeroMQ."""

__version__ = "0.1.0"
