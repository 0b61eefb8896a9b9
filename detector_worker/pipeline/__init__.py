"""The pipeline engine: model loading and inference behind a torch-free interface."""
