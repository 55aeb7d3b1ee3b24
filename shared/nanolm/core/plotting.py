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


def token_strip(ax, pieces, mask, per_row: int = 16, colors: tuple[str, ...] = ("#e8e8e8", "#8fd18f")) -> None:
    """Draw tokens as boxes in rows, coloured by mask (0 grey, 1 green): which tokens a loss trains.
    More than two kinds: pass integer kinds as the mask and one colour per kind."""
    from matplotlib.patches import Rectangle

    if len(pieces) != len(mask):
        raise ValueError(f"{len(pieces)} pieces but {len(mask)} mask values")
    rows = (len(pieces) + per_row - 1) // per_row
    for k, (text, m) in enumerate(zip(pieces, mask, strict=True)):
        r, c = divmod(k, per_row)
        ax.add_patch(Rectangle((c, rows - 1 - r), 0.95, 0.9, color=colors[int(m)]))
        label = text.replace("\n", "\\n")
        ax.text(c + 0.47, rows - 1 - r + 0.45, label if len(label) <= 10 else label[:9] + "…",
                ha="center", va="center", fontsize=6.5, family="monospace")
    ax.set_xlim(0, per_row)
    ax.set_ylim(0, rows)
    ax.axis("off")
