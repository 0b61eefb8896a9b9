"""The fault suite's footage, model cache and session tags, shared with the multi-host tests."""

from tests.faults.conftest import fault_model_cache, stop_clip, tag

__all__ = ["fault_model_cache", "stop_clip", "tag"]
