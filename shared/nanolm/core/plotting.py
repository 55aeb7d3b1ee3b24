"""One look for every figure in the course: fixed-dpi PNGs, light grid, no chart junk."""

from __future__ import annotations

import matplotlib as mpl

DPI = 100
STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.figsize": (6.4, 4.0),
    "figure.autolayout": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "svg.hashsalt": "nanolm",  # stable output between runs
}


def use_style() -> None:
    """Apply the course style; in Jupyter, also make inline figures plain PNG at DPI."""
    mpl.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        if get_ipython() is not None:
            set_matplotlib_formats("png")
    except ImportError:
        pass


def subplots(nrows: int = 1, ncols: int = 1, width: float | None = None, height: float | None = None, **kw):
    """plt.subplots with the course style; the figure size grows with the grid unless given."""
    import matplotlib.pyplot as plt

    use_style()
    w = width or 4.2 * ncols + 0.6
    h = height or 3.4 * nrows + 0.3
    return plt.subplots(nrows, ncols, figsize=(w, h), **kw)
