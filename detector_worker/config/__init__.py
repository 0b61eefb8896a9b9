"""Typed, validated configuration, parsed once at the edge."""
