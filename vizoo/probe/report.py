"""Reports of a probing run: a rich table on the terminal, a results JSON and a PNG bar chart.

Files are written atomically (temporary name, then rename), so a killed run never leaves a half-written one.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from vizoo.utils import atomic_path, atomic_write_text


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over low-shot seeds per (layer, head); identity when there is one seed."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["layer"], r["label"])].append(r)
    rows = []
    for (layer, label), rs in groups.items():

        def stat(key, rs=rs):
            vals = [r[key] for r in rs if r[key] is not None]
            if not vals:
                return None, None
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        top1, top1_std = stat("test_top1")
        top5, _ = stat("test_top5")
        val, _ = stat("val_top1")
        rows.append(
            dict(
                layer=layer,
                label=label,
                seeds=len(rs),
                lr=rs[0]["lr"] if len(rs) == 1 else None,
                best_epoch=rs[0]["best_epoch"] if len(rs) == 1 else None,
                val_top1=val,
                test_top1=top1,
                test_top1_std=top1_std,
                test_top5=top5,
                top5_k=rs[0]["top5_k"],
                params=rs[0]["params"],
                macs=rs[0]["macs"],
                train_time_s=sum(r["train_time_s"] for r in rs),
                shared=bool(rs[0].get("train_time_shared")),
            )
        )
    return rows


def print_table(report: dict[str, Any], console=None) -> None:
    """Print the results as a rich table (one row per head, per layer in layer-wise mode)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal and console.width < 140:
        console = Console(width=140)  # logs and pipes: do not squeeze the table into 80 columns
    meta, rows = report["meta"], summarize(report["results"])
    layerwise = len({r["layer"] for r in rows}) > 1
    lowshot = meta.get("k_shot") is not None
    k = rows[0]["top5_k"] if rows else 5
    title = (
        f"{meta['model']} on {meta['dataset']} ({meta['protocol']} protocol, "
        f"norm={'on' if meta['norm'] else 'off'}"
        + (f", {meta['k_shot']}-shot x {len(meta['seeds'])} seeds" if lowshot else "")
        + ")"
    )
    table = Table(title=title)
    if layerwise:
        table.add_column("layer", justify="right")
    table.add_column("head", no_wrap=True, min_width=max(len(r["label"]) for r in rows) if rows else 4)
    table.add_column("top-1", justify="right")
    table.add_column(f"top-{k}", justify="right")
    table.add_column("val top-1", justify="right")
    if not lowshot:
        table.add_column("lr", justify="right")
        table.add_column("epoch", justify="right")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("train time", justify="right")
    for r in rows:
        top1 = _fmt_acc(r["test_top1"])
        if lowshot and r["test_top1_std"] is not None:
            top1 += f" ± {r['test_top1_std']:.2f}"
        cells = [str(r["layer"])] if layerwise else []
        cells += [r["label"], top1, _fmt_acc(r["test_top5"]), _fmt_acc(r["val_top1"])]
        if not lowshot:
            cells += [f"{r['lr']:g}", str(r["best_epoch"] + 1)]
        time_text = f"{r['train_time_s']:.1f} s" + (" (all)" if r["shared"] else "")
        cells += [_fmt_count(r["params"]), _fmt_count(r["macs"]), time_text]
        table.add_row(*cells)
    console.print(table)
    console.print(
        "test accuracy of the head/lr/epoch (1-based) chosen on the validation split (micro average, %); "
        + ("train time (all): every head trained together in one run; " if any(r["shared"] for r in rows)
           else "")
        + f"MACs per image, backbone excluded; splits {meta.get('split_sizes')}; wall time "
        f"{meta.get('wall_time_s', 0):.1f} s"
    )


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the results JSON atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=1, default=str))
    path.chmod(0o644)
    return path


def write_plot(report: dict[str, Any], path: str | Path) -> Path | None:
    """Bar chart of test top-1 per head (grouped by layer) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = summarize(report["results"])
    labels = list(dict.fromkeys(r["label"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    width = 0.8 / len(layers)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.6), dpi=120)
    for j, layer in enumerate(layers):
        values = [
            next((r["test_top1"] or 0.0 for r in rows if r["label"] == lab and r["layer"] == layer), 0.0)
            for lab in labels
        ]
        errors = [
            next((r["test_top1_std"] or 0.0 for r in rows if r["label"] == lab and r["layer"] == layer), 0.0)
            for lab in labels
        ]
        xs = [i + (j - (len(layers) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(
            xs,
            values,
            width=width,
            yerr=errors if any(errors) else None,
            label=f"layer {layer}" if len(layers) > 1 else None,
        )
        for bar, v in zip(bars, values):
            ax.annotate(
                f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7
            )
    meta = report["meta"]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{Path(str(meta['model'])).name} on {meta['dataset']} ({meta['protocol']})", fontsize=9)
    if len(layers) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    path.chmod(0o644)
    return path
