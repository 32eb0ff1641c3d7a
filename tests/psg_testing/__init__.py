"""Test support shared by tests/core and tests/host (analytic denoiser, tiny host models)."""
