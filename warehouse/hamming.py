"""Pairs of 64-bit hashes (uint64) within a Hamming distance, through an index instead of all pairs.

    index = HammingIndex(hashes, max_bits=6)
    qi, ti, d = index.search(queries)       # every (query, indexed) pair within 6 bits, exactly
    i, j, d = hamming_pairs(a, b, 6)         # the same, one call

Multi-index hashing: the 64 bits are cut into m chunks, chunk c searched within r_c bits, with
sum(r_c + 1) = max_bits + 1. By pigeonhole two hashes within max_bits bits differ in at most r_c
bits of some chunk c, so looking each query's chunks up (every key within r_c flipped bits of its
own: in a table of where each key starts for a narrow chunk, by binary search in the sorted keys
of a wide one) finds every pair; each candidate's full distance is then checked, so the result
is exact. A pair seen in several chunks is kept at the
first chunk that could find it only. m is chosen by the expected work on uniform hashes (few wide
chunks for a big index, more narrow ones for a small one); where every split costs more than
comparing with each hash, the index compares with each hash instead (still in bounded blocks).
Memory: the index (its hashes, one sorted key array per chunk, and the tables of the narrow
chunks: 2^16 + 1 starts at most each) plus a bounded block of queries and candidates, whatever
the number of queries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb, log2

import numpy as np

_PAIR_BLOCK = 1 << 22  # candidate pairs (or all-pairs comparisons) held at a time: 32 MiB of uint64
_QUERY_BLOCK = 1 << 16  # queries looked up at a time
# Numpy passes over one element, for choosing the split: a key looked up, a candidate checked, a
# hash compared by the all-pairs scan.
_LOOKUP_COST, _CANDIDATE_COST, _SCAN_COST = 5.0, 8.0, 3.0
_MAX_PROBES = 1 << 16  # more flipped keys per query than this: that split is not considered
_TABLE_BITS = 16  # chunks up to this wide are looked up in a table of every key, wider ones by binary search

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Chunk:
    shift: int
    mask: np.uint64
    radius: int
    flips: np.ndarray  # uint64: every key mask within `radius` bits, 0 first


def _split(m: int, max_bits: int) -> list[_Chunk]:
    """m chunks covering the 64 bits, radii summing (each + 1) to max_bits + 1; the wider chunks
    take the larger radii."""
    width = [64 // m + (c < 64 % m) for c in range(m)]
    radius = [(max_bits + 1) // m - 1 + (c < (max_bits + 1) % m) for c in range(m)]
    chunks, shift = [], 0
    for w, r in zip(width, radius):
        flips = [
            sum(1 << b for b in bits) for t in range(r + 1) for bits in itertools.combinations(range(w), t)
        ]
        chunks.append(_Chunk(shift, np.uint64((1 << w) - 1), r, np.array(flips, dtype=np.uint64)))
        shift += w
    return chunks


def _probes(w: int, r: int) -> int:
    return sum(comb(w, t) for t in range(r + 1))


def _plan(n: int, max_bits: int) -> int | None:
    """The number of chunks with the least expected work per query on n uniform hashes, or None
    where comparing with every hash is cheaper."""
    best, best_cost = None, _SCAN_COST * n
    for m in range(1, min(max_bits + 1, 64) + 1):
        cost = 0.0
        for c in range(m):
            w = 64 // m + (c < 64 % m)
            r = (max_bits + 1) // m - 1 + (c < (max_bits + 1) % m)
            p = _probes(w, r)
            lookup = _LOOKUP_COST * (1.0 if w <= _TABLE_BITS else log2(n + 1))  # a table, or binary search
            cost += p * (lookup + _CANDIDATE_COST * n / 2.0**w) if p <= _MAX_PROBES else float("inf")
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _empty() -> Pairs:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)


def _cat(parts: list[Pairs]) -> Pairs:
    if not parts:
        return _empty()
    i, j, d = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


class HammingIndex:
    """The uint64 hashes `hashes`, indexed to find every hash within `max_bits` bits of a query."""

    def __init__(self, hashes: np.ndarray, max_bits: int) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_bits = int(max_bits)
        m = _plan(len(self.hashes), self.max_bits) if self.max_bits >= 0 else None
        self.chunks = _split(m, self.max_bits) if m else None  # None: compared with each hash
        self._order: list[np.ndarray] = []  # per chunk: the hashes by key
        self._keys: list[np.ndarray] = []  # per chunk: the keys, sorted (wide chunks)
        self._start: list[np.ndarray] = []  # per chunk: where each key's hashes start (narrow chunks)
        for ch in self.chunks or ():
            key = (self.hashes >> np.uint64(ch.shift)) & ch.mask
            order = np.argsort(key, kind="stable")
            self._order.append(order)
            self._keys.append(key[order])
            width = int(ch.mask).bit_length()
            if width <= _TABLE_BITS:
                self._start.append(np.searchsorted(key[order], np.arange(2**width + 1, dtype=np.uint64)))
            else:
                self._start.append(np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.hashes)

    def search(self, queries: np.ndarray) -> Pairs:
        """(query index, indexed hash index, distance uint8) of every pair within max_bits bits,
        sorted by query then indexed hash."""
        q = np.ascontiguousarray(queries, dtype=np.uint64)
        if not len(q) or not len(self.hashes) or self.max_bits < 0:
            return _empty()
        if self.chunks is None:
            return self._scan(q)
        parts: list[Pairs] = []
        for start in range(0, len(q), _QUERY_BLOCK):
            block = q[start : start + _QUERY_BLOCK]
            for c in range(len(self.chunks)):
                for i, j, d in self._chunk_pairs(block, c):
                    parts.append((i + start, j, d))
        return _cat(parts)

    def _chunk_pairs(self, q: np.ndarray, c: int):
        """Pairs of these queries found through chunk c (and through no earlier chunk), in
        bounded pieces."""
        ch, keys, order, start = self.chunks[c], self._keys[c], self._order[c], self._start[c]
        qkey = (q >> np.uint64(ch.shift)) & ch.mask
        for flip in ch.flips:
            probe = qkey ^ flip
            if len(start):
                lo, hi = start[probe], start[probe + np.uint64(1)]
            else:
                lo, hi = np.searchsorted(keys, probe, "left"), np.searchsorted(keys, probe, "right")
            hit = np.flatnonzero(hi > lo)
            if not len(hit):
                continue
            lo, count = lo[hit], hi[hit] - lo[hit]
            # pieces of about _PAIR_BLOCK candidates (more only by one query's bucket)
            piece = (np.cumsum(count) - count) // _PAIR_BLOCK
            for part in np.split(np.arange(len(hit)), np.flatnonzero(np.diff(piece)) + 1):
                n = count[part]
                # candidate t of query hit[k] is the (t - first[k])-th hash of its bucket
                qi = np.repeat(hit[part], n)
                ti = order[np.repeat(lo[part] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))]
                d = np.bitwise_count(q[qi] ^ self.hashes[ti])
                near = np.flatnonzero(d <= self.max_bits)
                qi, ti, d = qi[near], ti[near], d[near]
                x = q[qi] ^ self.hashes[ti]
                keep = np.ones(len(x), bool)
                for e in self.chunks[:c]:  # found through an earlier chunk already
                    keep &= np.bitwise_count((x >> np.uint64(e.shift)) & e.mask) > e.radius
                yield qi[keep], ti[keep], d[keep]

    def _scan(self, q: np.ndarray) -> Pairs:
        """Every query against every hash, in blocks of _PAIR_BLOCK comparisons."""
        b = self.hashes
        rows = max(1, _PAIR_BLOCK // len(b))
        parts: list[Pairs] = []
        for start in range(0, len(q), rows):
            dist = np.bitwise_count(q[start : start + rows, None] ^ b[None, :])
            i, j = np.nonzero(dist <= self.max_bits)
            parts.append((i + start, j, dist[i, j]))
        return _cat(parts)


def hamming_pairs(a: np.ndarray, b: np.ndarray, max_bits: int, upper: bool = False) -> Pairs:
    """Index pairs (i into a, j into b, distance uint8) of uint64 hashes within max_bits bits,
    sorted by i then j. With upper=True (a is b), only j < i: each pair once, j the earlier one."""
    i, j, d = HammingIndex(b, max_bits).search(a)
    if upper:
        keep = j < i
        i, j, d = i[keep], j[keep], d[keep]
    return i, j, d
