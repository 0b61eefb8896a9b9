"""The thin asyncio gateway between the backend's WebSocket and the supervisord-managed workers."""

__version__ = "0.1.0"
