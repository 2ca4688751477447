"""Half-open interval arithmetic on integers (µs): ``[(start, end), ...]`` lists kept sorted and disjoint."""


def merge(intervals):
    """Sort and merge overlapping or touching intervals; empty ones are dropped."""
    result = []
    for start, end in sorted((s, e) for s, e in intervals if e > s):
        if result and start <= result[-1][1]:
            if end > result[-1][1]:
                result[-1] = (result[-1][0], end)
        else:
            result.append((start, end))
    return result


def subtract(base, remove):
    """Parts of ``base`` not covered by ``remove`` (both lists of intervals)."""
    remove = merge(remove)
    result = []
    for start, end in merge(base):
        cursor = start
        for r_start, r_end in remove:
            if r_end <= cursor:
                continue
            if r_start >= end:
                break
            if r_start > cursor:
                result.append((cursor, r_start))
            cursor = max(cursor, r_end)
            if cursor >= end:
                break
        if cursor < end:
            result.append((cursor, end))
    return result


def intersect(a, b):
    """Intersection of two interval lists."""
    a, b = merge(a), merge(b)
    result, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            result.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return result


def total(intervals):
    """Total length of merged intervals."""
    return sum(e - s for s, e in merge(intervals))


def split(intervals, step, origin=0):
    """Cut intervals at multiples of ``step`` (offset by ``origin``), e.g. at day boundaries."""
    result = []
    for start, end in intervals:
        cursor = start
        while cursor < end:
            boundary = ((cursor - origin) // step + 1) * step + origin
            result.append((cursor, min(end, boundary)))
            cursor = min(end, boundary)
    return result


def mask_runs(mask, start, step):
    """Maximal runs of True in ``mask`` (one entry per ``step`` from ``start``) as intervals."""
    runs, i, n = [], 0, len(mask)
    while i < n:
        if mask[i]:
            j = i
            while j < n and mask[j]:
                j += 1
            runs.append((start + i * step, start + j * step))
            i = j
        else:
            i += 1
    return runs
