"""A report a person would rather look at than read: plots and a few numbers from a workspace.

``build_report(work)`` reads what the stages left in the workspace (episodes, conflicts, the data set,
an offline evaluation folder, a closed-loop evaluation folder) and writes ``work/report/index.html``
(and ``index.md``) with PNG plots: conflict geometries, predicted versus demonstrated decision values
(the modes), closed-loop outcomes per controller. Sections whose inputs are missing are left out.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from atc_il.io import read_table
from atc_il.schemas import CONFLICT_SCHEMA, EPISODE_SCHEMA


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def conflict_geometry_plot(work: Path, path: Path) -> dict | None:
    if not (work / "episodes").exists():
        return None
    ep = read_table(work / "episodes", EPISODE_SCHEMA)
    conf = read_table(work / "conflicts", CONFLICT_SCHEMA)
    if ep.empty:
        return None
    first = conf.sort_values("time").drop_duplicates("episode_id")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].hist(ep["predicted_tcpa_s"].dropna(), bins=30, color="#4c72b0")
    axes[0].set_title("time to CPA at first detection (s)", fontsize=10)
    axes[1].scatter(ep["predicted_dcpa_nm"], ep["min_dist_nm"], s=8, c=np.where(ep["los"], "#c44e52", "#55a868"))
    axes[1].axhline(5.0, ls="--", c="grey", lw=0.8)
    axes[1].set_xlabel("predicted distance at CPA (NM)")
    axes[1].set_ylabel("actual minimum distance (NM)")
    axes[1].set_title("predicted vs actual (red: loss of separation)", fontsize=10)
    ax = fig.add_subplot(1, 3, 3, projection="polar")
    axes[2].remove()
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)            # bearings: 0 = north, clockwise
    ax.hist(np.radians(first["qdr_deg"].dropna()), bins=24, color="#8172b2")
    ax.set_title("bearing 1 → 2 at first detection", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"episodes": len(ep), "losses of separation": int(ep["los"].sum()),
            "median tcpa at detection (s)": float(ep["predicted_tcpa_s"].median())}


def _md_table(d: dict) -> str:
    rows = ["| | |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in d.items()]
    return "\n".join(rows)


def build_report(work: str | Path, eval_dir: str | Path | None = None, simeval_dir: str | Path | None = None,
                 title: str = "atc-il report", out: str | Path | None = None) -> Path:
    work = Path(work)
    out = Path(out) if out else work / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[str, str, str | None]] = []       # (heading, markdown body, image file)
    geo = conflict_geometry_plot(work, out / "conflicts.png")
    if geo:
        parts.append(("Conflicts", _md_table(geo), "conflicts.png"))
    ds = work / "dataset" / "dataset_report.json"
    if ds.exists():
        d = json.loads(ds.read_text())
        parts.append(("Observation histories", _md_table({k: v for k, v in d.items() if not isinstance(v, (dict, list))}), None))
    if eval_dir and (Path(eval_dir) / "metrics.json").exists():
        m = json.loads((Path(eval_dir) / "metrics.json").read_text())
        flat = {k: v for k, v in m.items() if not isinstance(v, dict)}
        flat.update({f"ceiling {k}": v for k, v in m.get("ceiling", {}).items()})
        shutil.copy(Path(eval_dir) / "values.png", out / "values.png")
        parts.append(("Predicted vs demonstrated decisions (offline, test split)", _md_table(flat), "values.png"))
    if simeval_dir and (Path(simeval_dir) / "results.md").exists():
        shutil.copy(Path(simeval_dir) / "results.png", out / "closed_loop.png")
        parts.append(("Closed loop in BlueSky, per controller", (Path(simeval_dir) / "results.md").read_text(), "closed_loop.png"))
    md = [f"# {title}", ""]
    htm = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for head, body, img in parts:
        md += [f"## {head}", "", body, ""] + ([f"![{head}]({img})", ""] if img else [])
        htm.append(f"<h2>{html.escape(head)}</h2>")
        htm.append(_md_to_html_table(body))
        if img:
            htm.append(f"<img src='{img}' alt='{html.escape(head)}'>")
    htm.append("</body></html>")
    (out / "index.md").write_text("\n".join(md) + "\n")
    (out / "index.html").write_text("\n".join(htm) + "\n")
    return out / "index.html"


def _md_to_html_table(md: str) -> str:
    rows = [r for r in md.strip().splitlines() if r.startswith("|") and not set(r) <= set("|-: ")]
    cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
    return "<table>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells) + "</table>"
