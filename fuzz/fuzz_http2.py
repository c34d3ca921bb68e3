#!/usr/bin/env python3
"""atheris target: http2. What it runs and checks: harness.target_* (fuzz/harness.py); how to run: docs/robustness.md."""

import atheris

with atheris.instrument_imports(include=["maildissect"]):
    import harness
    harness.preload()

if __name__ == "__main__":
    harness.main("http2")
