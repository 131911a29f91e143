"""Near-duplicate images by perceptual hash: the index pairs of 64-bit hashes within a Hamming distance
(multi-index hashing, numpy), and the groups those pairs form. Used by the `duplicates` check
(dataset/checks.py)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def near_duplicate_pairs(hashes: list[str], distance: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `distance` bits.

    Pigeonhole (multi-index hashing): two hashes within `distance` bits agree exactly on at least one
    of `distance + 1` bit blocks, so only hashes sharing a block value are compared (with numpy): in
    each block's sorted order, the members of small groups with every offset at once, a large group
    in chunks.
    """
    n = len(hashes)
    if n < 2:
        return []
    if all(len(h) == 16 for h in hashes):  # the manifest's hex digits, converted at once
        arr = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=">u8").astype(np.uint64)
    else:
        arr = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    blocks = min(distance + 1, 64)
    bounds = np.linspace(0, 64, blocks + 1).astype(int)
    found: list[np.ndarray] = []  # i * n + j for each pair

    def keep(i: np.ndarray, j: np.ndarray) -> None:
        close = np.bitwise_count(arr[i] ^ arr[j]) <= distance
        lo, hi = np.minimum(i, j)[close], np.maximum(i, j)[close]
        found.append(lo.astype(np.int64) * n + hi)

    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        width = int(hi - lo)
        keys = (arr >> np.uint64(lo)) & np.uint64((1 << width) - 1) if width < 64 else arr
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        sizes = np.diff(np.r_[starts, n])
        large = sizes > _SMALL_GROUP
        in_small = ~np.repeat(large, sizes)  # per sorted position
        k = 1
        while k < n:  # positions k apart in the same (small) group: every pair of a group, offset by offset
            same = np.flatnonzero((sk[:-k] == sk[k:]) & in_small[:-k])
            if not same.size:
                break
            keep(order[same], order[same + k])
            k += 1
        for s, size in zip(starts[large].tolist(), sizes[large].tolist(), strict=True):
            idx = np.sort(order[s:s + size])
            for c in range(0, size, 1024):
                rows = idx[c:c + 1024]
                dist = np.bitwise_count(arr[rows][:, None] ^ arr[idx][None, :])
                ii, jj = np.nonzero((dist <= distance) & (rows[:, None] < idx[None, :]))
                found.append(rows[ii].astype(np.int64) * n + idx[jj])
    if not found:
        return []
    codes = np.unique(np.concatenate(found))
    return list(zip((codes // n).tolist(), (codes % n).tolist(), strict=True))


_SMALL_GROUP = 32  # a block value shared by more hashes than this is compared in chunks


def groups(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """The connected groups of `pairs` (union-find), each sorted, sorted."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    out: dict[str, list[str]] = defaultdict(list)
    for x in parent:
        out[find(x)].append(x)
    return sorted(sorted(g) for g in out.values())
