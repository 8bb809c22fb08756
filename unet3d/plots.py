"""Figures and the training log: the box plot of the scores, the loss graph, per-case overlays.

Figures are drawn on `matplotlib.figure.Figure` objects (the Agg renderer, no pyplot): nothing is
displayed, no backend is switched, no figure outlives its function, and every PNG is written
atomically.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from unet3d.errors import InputError
from unet3d.atomic import atomic_write

# Contour colours of the overlays and line styles of the regions.
TRUTH_COLOUR, PREDICTION_COLOUR = "lime", "magenta"
REGION_STYLES = ("solid", "dashed", "dotted", "dashdot", (0, (5, 1, 1, 1, 1, 1)),
                 (0, (8, 2)), (0, (1, 3)))


def read_training_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a Keras CSV training log as float arrays ("NA" and empty cells are NaN).

    Raises:
        InputError: when the file is missing, has no epoch or loss column, no rows, or a cell
            that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training log {path}: file not found; pass the CSV log written during "
                         "training (training.log) or leave the option out")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = {"epoch", "loss"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"training log {path}: no column {', '.join(sorted(missing))}; "
                             "expected the CSV log of keras.callbacks.CSVLogger (epoch, loss, "
                             "val_loss, ...)")
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            if None in row:
                raise InputError(f"training log {path}, line {reader.line_num}: more cells than "
                                 "columns in the header")
            for name, cell in row.items():
                try:
                    columns[name].append(math.nan if cell in ("", "NA", None) else float(cell))
                except ValueError:
                    raise InputError(f"training log {path}, line {reader.line_num}: {name} = "
                                     f"{cell!r} is not a number") from None
    if not columns["epoch"]:
        raise InputError(f"training log {path}: no epoch logged yet")
    return {name: np.array(values) for name, values in columns.items()}


def _save(figure: Figure, path: Path) -> None:
    with atomic_write(path, ".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def plot_loss_graph(history: Mapping[str, np.ndarray], path: str | os.PathLike,
                    title: str = "training log") -> None:
    """Plot the losses (training, and validation when logged) and, when logged, the Dice per
    region (validation solid, training dashed) against the epoch, numbered from 1 as Keras prints
    it, into a PNG, atomically. Epochs without a validation leave gaps; single points show."""
    epochs = np.asarray(history["epoch"]) + 1
    dice_columns = [c for c in history if c.startswith(("dice_", "val_dice_"))]
    figure = Figure(figsize=(11 if dice_columns else 6, 4))
    axes = figure.subplots(1, 2 if dice_columns else 1)
    loss_ax = axes[0] if dice_columns else axes
    loss_ax.plot(epochs, history["loss"], label="training loss")
    if "val_loss" in history:
        loss_ax.plot(epochs, history["val_loss"], marker="o", markersize=3,
                     label="validation loss")
    loss_ax.set_ylabel("loss")
    if dice_columns:
        for column in sorted(dice_columns):
            name = column.replace("val_", "").replace("dice_", "").upper()
            validation = column.startswith("val_")
            axes[1].plot(epochs, history[column], marker="o" if validation else None,
                         markersize=3, linestyle="solid" if validation else "dashed",
                         label=f"{'validation' if validation else 'training'} {name}")
        axes[1].set_ylabel("Dice")
        axes[1].set_ylim(-0.02, 1.02)
    for ax in np.atleast_1d(axes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, Path(path))


def plot_boxplot(rows: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "",
                 empty_penalty: float | None = None) -> None:
    """Box plots over cases of Dice (left) and HD95 (right) per region, with their means
    (triangles), into a PNG, atomically; `title` says which scores ("whole image"). NaN scores
    (undefined lesion-wise scores) are left out. HD95s equal to `empty_penalty` (the value for a
    region empty in only one of truth and prediction) are counted in a note."""
    regions = [key[:-len("_dice")] for key in rows[0] if key.endswith("_dice")]
    names = [region.upper() for region in regions]
    figure = Figure(figsize=(9, 4.5))
    dice_ax, hd95_ax = figure.subplots(1, 2)
    for ax, metric, label in ((dice_ax, "dice", "Dice"), (hd95_ax, "hd95", "HD95 (mm)")):
        ax.boxplot([[row[f"{region}_{metric}"] for row in rows
                     if not math.isnan(row[f"{region}_{metric}"])] for region in regions],
                   showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    dice_ax.set_ylim(-0.02, 1.02)
    penalised = {region.upper(): sum(row[f"{region}_hd95"] == empty_penalty for row in rows)
                 for region in regions} if empty_penalty is not None else {}
    if any(penalised.values()):
        counts = ", ".join(f"{name} {n}" for name, n in penalised.items() if n)
        hd95_ax.set_title(f"{empty_penalty:g} mm: region empty in only one of truth and "
                          f"prediction ({counts})", fontsize=7)
    figure.suptitle(f"{title + ': ' if title else ''}{len(rows)} case(s); triangles: means")
    figure.tight_layout()
    _save(figure, Path(path))


def overlay_slice(truth_wt: np.ndarray, pred_wt: np.ndarray) -> int:
    """The axial (z) index of the largest whole-tumour cross-section: of the truth, of the
    prediction when the truth is empty, the middle slice when both are."""
    for mask in (truth_wt, pred_wt):
        areas = mask.sum(axis=(0, 1))
        if areas.any():
            return int(np.argmax(areas))
    return truth_wt.shape[2] // 2


def plot_overlay(flair: np.ndarray, truth: Mapping[str, np.ndarray],
                 pred: Mapping[str, np.ndarray], case: str, dice: Mapping[str, float],
                 path: str | os.PathLike) -> None:
    """FLAIR slice with the truth and prediction contours of each region (WT, TC, ET, ...) into
    a PNG, atomically.

    `truth` and `pred` are region masks (`region_masks`); arrays are (x, y, z) on one grid. The
    axial slice is `overlay_slice`'s of the largest truth region (the whole tumour), whose Dice
    (`dice`, by region) is in the title. Truth contours are drawn in `TRUTH_COLOUR`, prediction
    contours in `PREDICTION_COLOUR`, one line style per region.
    """
    first = max(truth, key=lambda region: int(truth[region].sum()))
    z = overlay_slice(truth[first], pred[first])
    image = flair[:, :, z].T  # rows y, columns x: anterior up, patient's right on the left
    figure = Figure(figsize=(6, 6))
    ax = figure.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=max(float(np.percentile(image, 99.5)), 1e-6))
    handles = []
    for k, region in enumerate(truth):
        style = REGION_STYLES[k % len(REGION_STYLES)]
        # The truth is drawn wider than the prediction, so that both show where they agree.
        for masks, colour, width, source in ((truth, TRUTH_COLOUR, 2.4, "truth"),
                                             (pred, PREDICTION_COLOUR, 1.2, "prediction")):
            section = masks[region][:, :, z].T
            if section.any():
                ax.contour(section.astype(np.float32), levels=[0.5], colors=colour,
                           linestyles=[style], linewidths=width)
            handles.append(Line2D([], [], color=colour, linestyle=style,
                                  linewidth=width, label=f"{source} {region.upper()}"))
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_title(f"{case}  z={z}  {first.upper()} Dice {dice[first]:.3f}")
    ax.axis("off")
    figure.tight_layout()
    _save(figure, Path(path))
