"""Video input for the camera worker: frame sources, reconnect backoff and a latest-frame reader."""
