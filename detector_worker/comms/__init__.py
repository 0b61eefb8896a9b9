"""The ZeroMQ bus between a camera worker and the gateway."""
