"""How the book prints numbers (views/format.py) and places point labels on its figures (views/results.place_labels)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from studylib.views.format import MISSING, column, number, table  # noqa: E402
from studylib.views.results import place_labels  # noqa: E402


@pytest.mark.parametrize("value, shown", [
    (6, "6"), (6.0, "6"), (np.int64(1234567), "1,234,567"), (0.0, "0"), (-0.0, "0"),
    (0.61234, "0.612"), (12.345, "12.3"), (1234.5, "1,234"), (0.00012345, "0.000123"), (0.5, "0.5"),
    (True, "yes"), (False, "no"), (None, MISSING), (float("nan"), MISSING), (pd.NA, MISSING),
    (float("inf"), "inf"), ([1, 2.5], "1, 2.5"), ("text", "text"),
])
def test_a_value_on_its_own(value, shown):
    assert number(value) == shown


def test_rounding_to_a_whole_number_keeps_its_zeros():
    assert number(40.2, 2) == "40" and number(1000.4) == "1,000" and number(99.96, 3) == "100"
    assert number(40.25, 3) == "40.2" or number(40.25, 3) == "40.3"


def test_a_column_shares_its_decimals_and_whole_numbers_stay_whole():
    assert column(pd.Series([0.5, 0.61234, 0.7])).tolist() == ["0.500", "0.612", "0.700"]
    assert column(pd.Series([12.0, 3.0])).tolist() == ["12", "3"]
    # three significant digits of the column's largest value decide every row's decimals
    assert column(pd.Series([1.5, None, 120.25])).tolist() == ["2", MISSING, "120"]
    assert column(pd.Series([1.5, None, 12.25])).tolist() == ["1.5", MISSING, "12.2"]
    assert number(0.5, decimals=2) == "0.50"


def test_a_table_formats_its_index_and_columns_per_digits():
    frame = pd.DataFrame({"top-1": [0.61234, 0.5], "minutes": [12.3456, 3.0]}, index=pd.Index([64.0, 32.0], name="px"))
    out = table(frame, digits={"minutes": 2})
    assert out.index.tolist() == ["64", "32"] and out.index.name == "px"
    assert out["top-1"].tolist() == ["0.612", "0.500"] and out["minutes"].tolist() == ["12", "3"]


def _boxes(fig, anns):
    """Each label's text box (an annotation's own extent also spans its line to the point)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    return [Text.get_window_extent(a, r) for a in anns]


def test_labels_of_crowded_points_do_not_overlap_and_stay_inside_the_axes():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    xs = [1.0, 1.01, 1.02, 1.03, 5.0, 9.9]
    ys = [0.50, 0.501, 0.502, 0.503, 0.6, 0.7]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 10)
    ax.set_ylim(0.4, 0.8)
    names = ["mobilenet_v3_small", "shufflenet_v2_x1_0", "mnasnet0_5", "smallvgg3_bn", "middle", "right_edge_model"]
    anns = place_labels(ax, xs, ys, names)
    boxes = _boxes(fig, anns)
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    assert [a.get_text() for a in anns] == names
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0 or overlap_y <= 0, (names[i], names[j])
    for b, n in zip(boxes, names):
        assert frame.x0 - 1 <= b.x0 and b.x1 <= frame.x1 + 1 and frame.y0 - 1 <= b.y0 and b.y1 <= frame.y1 + 1, n
    # a label moved away from its point keeps a line to it
    moved = [a for a in anns if abs(a.xyann[1] - 3) > 6]
    assert moved and all(a.arrow_patch is not None for a in moved)
    assert not math.isnan(boxes[0].y0)
    plt.close(fig)
