"""What `make` installs besides pip packages works offline: the packaged weights (checked
against their pinned sha256) and FiftyOne's database."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warehouse.hashing import sha256_file
from warehouse.packaged_weights import PACKAGED_FILES, weight_path


def test_packaged_files_are_present_and_intact():
    for name, spec in PACKAGED_FILES.items():
        assert sha256_file(weight_path(name)) == spec.sha256, name


def test_weights_cli_lists_them():
    out = subprocess.run(
        [sys.executable, "-m", "ferlab", "weights"], capture_output=True, text=True, check=True
    )
    assert out.stdout.count("present") == len(PACKAGED_FILES)


@pytest.mark.server
def test_fiftyone_database_starts_and_stores_a_sample(tmp_path):
    import fiftyone as fo

    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "x.jpg")))
    assert len(dataset) == 1
    dataset.delete()
