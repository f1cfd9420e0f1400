"""The ablations' outputs: the markdown report (claim, setup, table, verdict, notes), its setup
lines (real-vs-real floor, devices), and the matplotlib figure beside it."""

import os

import jax
import numpy as np


def fmt(v, digits=3):
  """A table cell: floats to `digits` decimals (3 significant digits from 1e4), None as "n/a"."""
  if v is None:
    return "n/a"
  if isinstance(v, (float, np.floating)):
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
  return str(v)


def write_report(out_dir, name, *, title, claim, setup, header, rows, verdict, notes=()):
  """Writes <out_dir>/<name>.md: the claim tested, the setup (seeds, wall time), the table, whether
  this reproduction agrees, and notes. rows: lists of cells (floats are formatted)."""
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", "", f"**Paper claim tested.** {claim}", "", "**Setup.**", ""]
  lines += [f"- {s}" for s in setup]
  lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
  lines += ["", f"**Does this reproduction agree?** {verdict}", ""]
  if notes:
    lines += ["**Notes.**", ""] + [f"- {n}" for n in notes] + [""]
  path = os.path.join(out_dir, f"{name}.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def floor_line(floor, n):
  """The setup line of the real-vs-real floor (`digit_judge.Judge.floor`) at N = n."""
  return (f"Real-vs-real floor (N = {n} train-split images vs the held-out split): "
          f"acc {floor['acc']:.3f}, FD {floor['fd']:.3f}, precision {floor['precision']:.3f}, "
          f"recall {floor['recall']:.3f}, diversity {floor['diversity']:.3f}.")


def devices_line():
  """"<count> x <device kind> (<n> CPU cores)": where the wall times were measured."""
  return f"{jax.device_count()} x {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores)"


def figure(ncols=1, width=5.0, height=3.6):
  """(pyplot, figure, [axes]) of one row of ncols panels, on the non-interactive Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return plt, fig, list(axes[0])


def save_figure(plt, fig, out_dir, name):
  """Writes <out_dir>/<name>.png (tight layout, 110 dpi), closes the figure; returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def bars(ax, names, cells, ylabel, floor=None):
  """One bar per name at its cell's mean (`seeds.summarize`) with the seeds' sd as error bar (none
  for one seed), and the real-vs-real floor as a dashed line."""
  ax.bar(names, [c["mean"] for c in cells], yerr=[c["sd"] or 0.0 for c in cells], capsize=4)
  if floor is not None:
    ax.axhline(floor, color="gray", ls="--", label="real floor")
    ax.legend(fontsize=7)
  ax.set_ylabel(ylabel)
  ax.tick_params(axis="x", labelrotation=20, labelsize=7)


def row_bars(ax, results, labels, key, ylabel, floor=None, reference=None):
  """One bar per row label, in its own colour, at results[label][key]'s mean (`seeds.summarize`)
  with the seeds' sd as error bar; the real-vs-real floor (dashed) and reference = (value, name),
  e.g. the originals' mean (dotted), where given; the labels slanted (long table-row names)."""
  ax.bar(range(len(labels)), [results[l][key]["mean"] for l in labels],
         yerr=[results[l][key]["sd"] or 0.0 for l in labels], capsize=3,
         color=[f"C{i}" for i in range(len(labels))])
  if floor is not None:
    ax.axhline(floor, color="gray", ls="--", label="real floor")
  if reference is not None:
    ax.axhline(reference[0], color="k", ls=":", label=reference[1])
  if floor is not None or reference is not None:
    ax.legend(fontsize=6)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=6)
  ax.set_ylabel(ylabel)
