#!/usr/bin/env python3
"""Inspect a wirecap capture: the same as ``wirecap inspect``, for those who run scripts.

python scripts/inspect_cbor_capture.py captures/ --detect-issues
python scripts/inspect_cbor_capture.py capture.cbor.zst --id a1b2c3d4e5f6 --raw response
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wirecap.cli import main

if __name__ == "__main__":
    main(["inspect", *sys.argv[1:]], prog_name="inspect_cbor_capture.py")
