"""A loss curve drawn with block characters: readable without colour (NO_COLOR) and over SSH."""
from __future__ import annotations

from textual.widgets import Static

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int) -> str:
    """``values`` resampled to at most ``width`` columns (mean per column), each a block from
    ▁ (the lowest value) to █ (the highest)."""
    if not values or width <= 0:
        return ""
    if len(values) > width:
        columns = []
        for c in range(width):
            lo, hi = c * len(values) // width, (c + 1) * len(values) // width
            chunk = values[lo:max(hi, lo + 1)]
            columns.append(sum(chunk) / len(chunk))
    else:
        columns = list(values)
    low, high = min(columns), max(columns)
    span = (high - low) or 1.0
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int((v - low) / span * (len(BLOCKS) - 1) + 0.5))] for v in columns)


class LossCurve(Static):
    """The training loss so far: ``loss 2.31 → 0.42 (min 0.40)`` and a block-character curve."""

    DEFAULT_CSS = """
    LossCurve { height: 2; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("loss: no steps yet", markup=False, **kwargs)
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values.append(float(value))
        self.refresh_curve()

    def reset(self, values: list[float] | None = None) -> None:
        self.values = [float(v) for v in values or []]
        self.refresh_curve()

    def on_resize(self) -> None:
        self.refresh_curve()

    def refresh_curve(self) -> None:
        if not self.values:
            self.update("loss: no steps yet")
            return
        v = self.values
        width = max(8, (self.size.width or 60) - 2)
        self.update(f"loss {v[0]:.4g} → {v[-1]:.4g} (min {min(v):.4g}, {len(v)} steps)\n{sparkline(v, width)}")
