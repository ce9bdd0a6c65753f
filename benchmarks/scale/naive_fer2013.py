"""The baseline of the FER-2013 ingest goal, as a whole process: what a FER-2013 notebook
usually does (pandas read_csv, then one str.split per row), the same parse as
benchmarks.fer2013_ingest.naive_parse, importing only pandas and numpy.

    python -m benchmarks.scale.naive_fer2013 fer2013.csv
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd


def naive_parse(path: str) -> np.ndarray:
    df = pd.read_csv(path)
    return np.stack([np.array(s.split(), dtype=np.uint8).reshape(48, 48) for s in df["pixels"]])


if __name__ == "__main__":
    print(naive_parse(sys.argv[1]).shape)
