"""Hypothesis profiles for the project's own tests: ``default`` (derandomized, CI) and ``thorough``."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HCREF_TEST_PROFILE", "default"))
