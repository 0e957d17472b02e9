"""Numbers as the book prints them: whole numbers without decimals, the rest to a few significant digits.

Every table a reader sees goes through here, so `6` never prints as `6.000` and a column of
accuracies shares one number of decimals. A frame comes back as text, ready to display.
"""
from __future__ import annotations

import math
import numbers

import pandas as pd

MISSING = "—"


def _is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA or x is pd.NaT


def decimals_for(values, digits: int = 3) -> int:
    """Decimals that show the largest magnitude among `values` with `digits` significant digits (0 for whole numbers)."""
    nums = [float(v) for v in values if isinstance(v, numbers.Real) and not isinstance(v, bool) and not _is_missing(v)]
    nums = [v for v in nums if math.isfinite(v)]
    if not nums or all(v == int(v) for v in nums):
        return 0
    top = max(abs(v) for v in nums)
    if top == 0:
        return digits - 1
    return max(0, digits - 1 - math.floor(math.log10(top)))


def number(x, digits: int = 3, decimals: int | None = None, missing: str = MISSING) -> str:
    """One value as text: whole numbers as integers (zero as 0), other floats to `digits` significant digits
    without trailing zeros (or exactly `decimals` decimals), booleans as yes/no, lists joined, text unchanged."""
    if _is_missing(x):
        return missing
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        v = float(x)
        if not math.isfinite(v):
            return str(v)
        if v == 0:
            return "0"
        if decimals is None:   # a value on its own: its significant digits, no trailing zeros
            if v == int(v) and abs(v) < 1e15:
                return f"{int(v):,}"
            text = f"{v:,.{decimals_for([v], digits)}f}"
            return text.rstrip("0").rstrip(".") if "." in text else text   # 40.2 to 2 digits is 40, not 4
        return f"{v:,.{decimals}f}"
    if isinstance(x, (list, tuple)):
        return ", ".join(number(v, digits) for v in x)
    return str(x)


def column(values: pd.Series, digits: int = 3, missing: str = MISSING) -> pd.Series:
    """A column as text with one number of decimals for all its numbers (whole-number columns get none)."""
    d = decimals_for(values.tolist(), digits)
    return values.map(lambda x: number(x, digits, None if isinstance(x, (bool, numbers.Integral)) else d, missing))


def table(frame: pd.DataFrame, digits: int | dict = 3, missing: str = MISSING) -> pd.DataFrame:
    """Every column of a frame as text (see `column`); `digits` may differ per column ({name: digits}).
    The index is formatted the same way, so whole-number labels (epochs, image sizes) print as integers."""
    if frame.empty:
        return frame
    per = digits if isinstance(digits, dict) else {}
    default = 3 if isinstance(digits, dict) else digits
    out = pd.DataFrame({c: column(frame[c], per.get(c, default), missing) for c in frame.columns}, index=frame.index)
    out.columns = frame.columns
    if isinstance(out.index, pd.MultiIndex):
        out.index = out.index.set_levels([lv.map(lambda x: number(x)) for lv in out.index.levels])
    else:
        out.index = out.index.map(lambda x: number(x))
    out.index.names = frame.index.names
    return out


def percent(x, decimals: int = 1) -> str:
    """A share (0.616) as a percentage with `decimals` decimals ("61.6"; 0 as "0.0", so a column reads evenly);
    missing as a dash."""
    return MISSING if _is_missing(x) else f"{100 * x:.{decimals}f}"


def points(x: float) -> str:
    """A difference of shares (-0.026) in signed percentage points ("−2.6")."""
    return f"{100 * x:+.1f}".replace("-", "−")


def doc_link(text: str, record: dict | None) -> str:
    """A MyST link to a record's executed notebook, or the bare text when the record names none."""
    nb = (record or {}).get("notebook", "")
    return f"{{doc}}`{text} </{nb[:-len('.ipynb')]}>`" if nb.endswith(".ipynb") and ".failed" not in nb else text
