"""Shared test settings: hypothesis is derandomised under CI, so main stays reproducibly green;
locally it explores new examples on every run."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
