"""The bench's plot: labels readable, none over another, a marker or the title."""

import itertools

import pytest

from edgekd.bench.core import BenchResult
from edgekd.bench.report import place_labels, plot


def _overlap(a, b) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


@pytest.mark.parametrize("n", [3, 4])
def test_labels_overlap_nothing(n):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # Points crowded into one corner (one far point sets the scale): the same up-right label for every
    # point, as before, covers its neighbours' labels (3 overlaps of 3 labels, measured).
    pts = [(0.2 + 0.01 * i, 88.5 - 0.6 * i) for i in range(n)] + [(0.45, 78.0)]
    for p in pts:
        ax.scatter(*p)
    ax.set_title("accuracy vs latency (a long evaluation source, as a real bench has)", fontsize=8)
    ax.margins(0.25)
    boxes = place_labels(fig, ax, [(f"bundle-{i}\nstudent int8", p) for i, p in enumerate(pts)])
    n = len(pts)
    title, markers, labels = boxes[0], boxes[1:1 + n], boxes[1 + n:]
    assert len(labels) == n
    for a, b in itertools.combinations(labels, 2):
        assert _overlap(a, b) == 0
    for lab in labels:
        assert _overlap(lab, title) == 0 and all(_overlap(lab, m) == 0 for m in markers)
    plt.close(fig)


def test_plot_file(tmp_path):
    rows = [dict(bundle="b", model=m, batch_size=1, top1=a, agreement=None, p50_ms=t, size_mb=s)
            for m, t, a, s in (("teacher fp32", 0.21, 0.88, 0.25), ("student fp32", 0.19, 0.79, 0.07))]
    out = plot(BenchResult(rows, [], {}, {"source": "fashion-mnist:test"}), tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
