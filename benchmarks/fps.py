#!/usr/bin/env python3
"""`python benchmarks/fps.py ...` in a checkout = `capture-fps ...` (code: capture/fps.py)."""
import contextlib
import sys

from capture.fps import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
