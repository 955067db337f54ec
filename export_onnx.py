#!/usr/bin/env python3
"""`python export_onnx.py ...` in a checkout = `capture-export ...` (code: capture/export_onnx.py)."""
import sys

from capture.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
