#!/usr/bin/env python3
"""`python benchmarks/fps.py ...` in a checkout = `capture-fps ...` (code: capture/fps.py)."""
import contextlib

from capture.fps import main

if __name__ == "__main__":
    from capture.cli_common import run_cli

    with contextlib.suppress(BrokenPipeError):
        run_cli(main)
