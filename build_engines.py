#!/usr/bin/env python3
"""`python build_engines.py ...` in a checkout = `capture-build-engines ...` (code: capture/build_engines.py)."""
import sys

from capture.build_engines import main

if __name__ == "__main__":
    sys.exit(main())
