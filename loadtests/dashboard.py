"""Evaluate the Grafana dashboard's queries on a real Prometheus and draw what ops would see (PNG).

python loadtests/dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboard.png

Grafana's ``$__rate_interval`` becomes ``--rate-interval``; each panel is drawn where its gridPos puts it.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).resolve().parents[1] / "k8s" / "components" / "monitoring" / "dashboard.json"
ALERTS = DASHBOARD.with_name("alerts.yml")
METRIC = re.compile(r"\b((?:bentoml|imgclf)_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panel_queries(dashboard: dict, rate_interval: str = "30s") -> list[tuple[dict, dict, str]]:
    """(panel, target, PromQL) for every target of every panel, Grafana variables filled in."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel, target, target["expr"].replace("$__rate_interval", rate_interval)))
    return out


def alert_expressions(path: Path = ALERTS) -> dict[str, str]:
    import yaml

    rules = [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    return {r["alert"]: r["expr"] for r in rules}


def metric_names(expr: str) -> set[str]:
    """Base metric names a PromQL expression reads (histogram suffixes stripped)."""
    names = set()
    for name in METRIC.findall(expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


class Prometheus:
    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=30)

    def query(self, expr: str) -> dict:
        return self.client.get("/api/v1/query", params={"query": expr}).json()

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self.client.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end,
                                                              "step": step}).json()  # fmt: skip


def _legend(fmt: str, labels: dict) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return text or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def render(prom: Prometheus, dashboard: dict, out: Path, start: float, end: float, rate_interval: str = "30s") -> Path:
    """Draw every panel with the data Prometheus has for [start, end]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(24, bottom * 0.45 + 1), facecolor="#111217")
    grid = GridSpec(bottom, 24, figure=fig, hspace=2.2, wspace=1.2, top=1 - 0.9 / (bottom * 0.45 + 1), bottom=0.02,
                    left=0.03, right=0.99)  # fmt: skip
    step = max(1.0, (end - start) / 120)
    for row in rows:
        ax = fig.add_subplot(grid[row["gridPos"]["y"], :])
        ax.axis("off")
        ax.text(0, 0.5, row["title"], color="#d8d9da", fontsize=15, weight="bold", va="center", transform=ax.transAxes)
    for panel in panels:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"] + 1 : g["y"] + g["h"], g["x"] : g["x"] + g["w"] - 1])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        if panel["type"] == "table":
            _table(ax, prom, panel)
            continue
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            for series in prom.query_range(expr, start, end, step).get("data", {}).get("result", [])[:12]:
                ts = [float(t) - end for t, _ in series["values"]]
                ax.plot(ts, [float(v) for _, v in series["values"]], lw=1.3,
                        label=_legend(target.get("legendFormat", ""), series["metric"])[:40])  # fmt: skip
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#d8d9da", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("seconds before now", color="#8e8e8e", fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.suptitle(f"{dashboard['title']}  ({(end - start) / 60:.1f} minutes)", color="#ffffff", fontsize=18, x=0.01,
                 ha="left")  # fmt: skip
    fig.savefig(out, dpi=70, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


def _table(ax, prom: Prometheus, panel: dict) -> None:
    ax.axis("off")
    lines = []
    for target in panel["targets"]:
        for series in prom.query(target["expr"]).get("data", {}).get("result", []):
            lines.append(_legend(target.get("legendFormat", ""), series["metric"]))
    ax.text(0.02, 0.95, "\n".join(lines[:10]) or "no data", color="#73bf69", fontsize=9, va="top", family="monospace",
            transform=ax.transAxes)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate-interval", default="30s")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    end = time.time()
    render(Prometheus(args.prometheus), load_dashboard(), args.out, end - args.minutes * 60, end, args.rate_interval)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
