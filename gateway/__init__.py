"""The thin asyncio gateway between the backend's WebSocket and the supervisord-managed workers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("camera-detection-fleet")  # one version: pyproject.toml's, as installed
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
