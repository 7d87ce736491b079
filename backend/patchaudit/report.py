"""The typed result of an audit, its JSON form and its Plotly figure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .component_keys import component_key, parse_component_key
from .estimators.core import BaseCache
from .serial import json_safe

METHOD_LABELS = {
    "ap": "activation patching",
    "atp": "AtP",
    "hvp": "HVP-corrected",
    "hvp_joint": "HVP-corrected (joint probe)",
    "hvp_exact": "HVP-corrected (exact)",
    "ig": "integrated gradients",
    "mhvp": "multi-step HVP",
    "sat": "saturation-aware",
    "atp_star": "AtP* QK fix",
    "graddrop": "AtP* GradDrop (magnitude)",
}


#: One colour convention everywhere (report.figure, --html, the dashboard): negative blue,
#: zero white, positive red, symmetric about zero (RdBu reversed).
COLORSCALE = "RdBu_r"

#: The colour bar title: the metric and its units.
METRIC_UNITS = {
    "logit_diff": "logit diff (answer - wrong)",
    "prob_diff": "prob diff (p(answer) - p(wrong))",
    "logprob": "log p(answer) (nats)",
    "kl": "KL(clean || patched) (nats)",
}


def negative_means(metric: str, direction: str) -> str:
    """What a negative value means for this metric and direction (values are the change of
    the metric when one component is patched)."""
    if metric == "kl":
        if direction == "noising":
            return (
                "KL to the clean output cannot fall below its clean value 0: a patched effect "
                "is >= 0, so a negative estimate is an estimation error"
            )
        return "restoring this component brings the output closer to the clean distribution"
    what = {
        "logit_diff": "the answer's logit lead over the wrong answer",
        "prob_diff": "p(answer) - p(wrong)",
        "logprob": "log p(answer)",
    }.get(metric, metric)
    if direction == "noising":
        return f"corrupting this component lowers {what}: it supports the clean answer"
    return f"restoring this component lowers {what}: it works against the clean answer"


def _tensor(x, dtype=torch.float32) -> Tensor | None:
    if x is None:
        return None
    if dtype == torch.bool:
        return torch.tensor(x, dtype=torch.bool)
    if x and not isinstance(x[0], list):  # 1-D: the edge scores
        return torch.tensor([float("nan") if v is None else v for v in x], dtype=dtype)
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in x], dtype=dtype)


def _interval(d: dict | None) -> tuple[Tensor, Tensor] | None:
    if not d:
        return None
    lo, hi = _tensor(d.get("lower")), _tensor(d.get("upper"))
    if lo is None or hi is None:
        return None
    # an unbounded side is stored as null: read it back as -inf / +inf
    return lo.nan_to_num(nan=-math.inf), hi.nan_to_num(nan=math.inf)


def _reason_masks(grid: list | None, edges: bool = False) -> dict[str, Tensor] | None:
    if grid is None:
        return None
    from .estimators.reliability import REASONS

    if edges:  # one list of reasons per edge
        return {k: torch.tensor([k in cell for cell in grid], dtype=torch.bool) for k in REASONS}
    return {
        k: torch.tensor([[k in cell for cell in row] for row in grid], dtype=torch.bool)
        for k in REASONS
    }


def component_label(labels: dict, i: int, j: int) -> str:
    """A component's name: "L1.H10" (heads), "L1.mlp", "L1 @3 'store'" (resid: layer, position
    and the position's token when the labels carry them)."""
    col = labels.get("col_name", "head")
    if col == "position":
        toks = labels.get("positions") or []
        tok = f" {toks[j]!r}" if j < len(toks) else ""
        return f"L{i} @{j}{tok}"
    if col == "mlp":
        return f"L{i}.mlp"
    return f"L{i}.{col[:1].upper()}{j}"


def summary(obj, extra: str = "") -> str:
    """One short block for ``repr`` of a Report (and the results that carry one)."""
    r = obj if isinstance(obj, Report) else obj.report
    s = r.settings
    shape = "x".join(str(n) for n in r.estimate.shape) if r.scores else "?"
    n_flag = int(r.flags.sum()) if r.flags is not None else None

    def name(c: dict) -> str:
        if "edge" in c:
            return str(c["edge"])
        return component_label(r.labels, c["layer"], c["comp"])

    top = ", ".join(f"{name(c)}={c['estimate']:+.3g}" for c in r.circuit(3)) if r.scores else ""
    if r.edges is not None:
        shape = f"{len(r.edges)} edges"

    head = type(obj).__name__
    parts = [
        f"model={s.get('model', '?')}",
        f"site={r.site}",
        f"metric={r.metric}",
        f"direction={r.direction}",
        f"methods={','.join(r.methods)}",
        f"shape={shape}",
        f"flagged={'-' if n_flag is None else n_flag}",
    ]
    if r.screen is not None and not r.screen.get("informative", True):
        parts.append("screen=uninformative")
    out = f"<{head} {' '.join(parts)}{extra}"
    return out + (f"\n  top: {top}>" if top else ">")


@dataclass
class Report:
    site: str
    metric: str
    direction: str
    methods: list[str]
    labels: dict
    scores: dict[str, Tensor]
    reliability: Tensor | None = None
    error_bound: Tensor | None = None
    flags: Tensor | None = None
    material: Tensor | None = None
    q: Tensor | None = None
    q_se: Tensor | None = None
    reliability_source: str | None = None
    verified: dict = field(default_factory=dict)  # (layer, comp) -> ap; edge key -> ap
    cost: dict[str, dict] = field(default_factory=dict)
    tau: float = 0.5
    cutoff: float | None = None
    metric_base: float = 0.0
    metric_src: float = 0.0
    settings: dict = field(default_factory=dict)
    base: BaseCache | None = field(default=None, repr=False)
    screen: dict | None = None  # {"informative", "first_order_vanishes", "message"}
    flag_reasons: dict[str, Tensor] | None = None  # reason -> bool mask (reliability.REASONS)
    material_threshold: float | None = None  # 1% of |total effect|
    partial: bool = False  # cancelled: only the methods that completed
    # the screen's shown estimate: which method it comes from (calibrated per metric/direction)
    estimate_method: str | None = None
    interval: tuple[Tensor, Tensor] | None = None  # [lower, upper] of the true effect
    calibration: dict | None = None  # which calibration the flags used, and why
    saturation: dict | None = None  # "i.j" -> the downstream heads that saturate its effect
    deferred: Tensor | None = None  # uncertain but past the flag cap (reliability.FLAG_CAP)
    # site "edges": the edge keys ("0.1->1.0.k"); every score is then 1-D over them and
    # ``verified`` is keyed by the edge key
    edges: list[str] | None = None

    @property
    def total_effect(self) -> float:
        """m(x~) - m(x) for noising: what patching everything at once changes."""
        return self.metric_src - self.metric_base

    @property
    def estimate(self) -> Tensor:
        """The screen's estimate: the calibrated one (``estimate_method``) where the flags were
        computed, else the corrected one where present, else the first method."""
        if self.estimate_method in self.scores:
            return self.scores[self.estimate_method]  # type: ignore[index]
        for m in ("hvp", "hvp_exact", "hvp_joint", "sat", "mhvp", "ig", "atp", "ap"):
            if m in self.scores:
                return self.scores[m]
        raise ValueError("the report has no scores")

    def component_names(self) -> list[tuple[int, int]]:
        rows, cols = len(self.labels["rows"]), len(self.labels["cols"])
        return [(i, j) for i in range(rows) for j in range(cols)]

    def circuit(self, k: int | None = None) -> list[dict]:
        """Top-k components by |estimate| (verified values where present); for edges, the
        top-k edges ({"edge", "estimate", "verified"})."""
        if self.edges is not None:
            return self._edge_circuit(k)
        est = self.estimate.clone()
        for (i, j), v in self.verified.items():
            est[i, j] = v
        n = est.numel()
        k = max(1, round(0.1 * n)) if k is None else k
        flat = est.flatten().nan_to_num(0.0)
        idx = flat.abs().argsort(descending=True)[:k].tolist()
        cols = est.shape[1]
        return [
            {
                "layer": i // cols,
                "comp": i % cols,
                "estimate": float(flat[i]),
                "verified": (i // cols, i % cols) in self.verified,
            }
            for i in idx
        ]

    def _edge_circuit(self, k: int | None) -> list[dict]:
        assert self.edges is not None
        est = self.estimate.clone().flatten()
        index = {e: i for i, e in enumerate(self.edges)}
        for e, v in self.verified.items():
            if e in index:
                est[index[e]] = v
        n = est.numel()
        k = max(1, round(0.1 * n)) if k is None else k
        flat = est.nan_to_num(0.0)
        idx = flat.abs().argsort(descending=True, stable=True)[:k].tolist()
        return [
            {
                "edge": self.edges[i],
                "estimate": float(flat[i]),
                "verified": self.edges[i] in self.verified,
            }
            for i in idx
        ]

    def reasons_grid(self) -> list | None:
        """Per component, the codes of why it is flagged (empty when it is not); for edges
        one list per edge."""
        if self.flag_reasons is None or self.flags is None:
            return None
        if self.edges is not None:
            masks1 = {k: v.tolist() for k, v in self.flag_reasons.items()}
            return [[k for k, m in masks1.items() if m[i]] for i in range(len(self.edges))]
        rows, cols = self.flags.shape
        masks = {k: v.tolist() for k, v in self.flag_reasons.items()}
        return [
            [[k for k, m in masks.items() if m[i][j]] for j in range(cols)] for i in range(rows)
        ]

    def __repr__(self) -> str:
        """A short summary (never the cached activations)."""
        return summary(self)

    def to_dict(self) -> dict:
        return {
            "screen": self.screen,
            "flag_reasons": self.reasons_grid(),
            "material_threshold": self.material_threshold,
            "partial": self.partial,
            "metric_label": METRIC_UNITS.get(self.metric, self.metric),
            "negative_means": negative_means(self.metric, self.direction),
            "site": self.site,
            "metric": self.metric,
            "direction": self.direction,
            "methods": list(self.methods),
            "labels": self.labels,
            "scores": {m: json_safe(v) for m, v in self.scores.items()},
            "reliability": json_safe(self.reliability),
            "error_bound": json_safe(self.error_bound),
            "flags": json_safe(self.flags),
            "material": json_safe(self.material),
            "q": json_safe(self.q),
            "q_se": json_safe(self.q_se),
            "reliability_source": self.reliability_source,
            "verified": {
                c if isinstance(c, str) else component_key(c): v
                for c, v in sorted(self.verified.items())
            },
            "edges": self.edges,
            "cost": self.cost,
            "tau": self.tau,
            "cutoff": self.cutoff,
            "metric_base": self.metric_base,
            "metric_src": self.metric_src,
            "total_effect": self.total_effect,
            "settings": self.settings,
            "circuit": self.circuit(),
            "estimate_method": self.estimate_method,
            "interval": None
            if self.interval is None
            else {"lower": json_safe(self.interval[0]), "upper": json_safe(self.interval[1])},
            "calibration": self.calibration,
            "saturation": self.saturation,
            "deferred": json_safe(self.deferred),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        verified: dict = {}
        edges = d.get("edges")
        for k, v in (d.get("verified") or {}).items():
            verified[k if edges is not None else parse_component_key(k)] = float(v)
        return cls(
            site=d["site"],
            metric=d["metric"],
            direction=d["direction"],
            methods=list(d["methods"]),
            labels=d["labels"],
            scores={m: _tensor(v) for m, v in d["scores"].items()},  # type: ignore[misc]
            reliability=_tensor(d.get("reliability")),
            error_bound=_tensor(d.get("error_bound")),  # None -> nan; inf is stored as None
            flags=_tensor(d.get("flags"), torch.bool),
            material=_tensor(d.get("material"), torch.bool),
            q=_tensor(d.get("q")),
            q_se=_tensor(d.get("q_se")),
            reliability_source=d.get("reliability_source"),
            verified=verified,
            cost=d.get("cost", {}),
            tau=d.get("tau", 0.5),
            cutoff=d.get("cutoff"),
            metric_base=d.get("metric_base", 0.0),
            metric_src=d.get("metric_src", 0.0),
            settings=d.get("settings", {}),
            screen=d.get("screen"),
            flag_reasons=_reason_masks(d.get("flag_reasons"), edges is not None),
            material_threshold=d.get("material_threshold"),
            partial=bool(d.get("partial", False)),
            estimate_method=d.get("estimate_method"),
            interval=_interval(d.get("interval")),
            calibration=d.get("calibration"),
            saturation=d.get("saturation"),
            deferred=_tensor(d.get("deferred"), torch.bool),
            edges=list(edges) if edges is not None else None,
        )

    def table(self, top: int = 10) -> list[dict]:
        """The ``top`` components by |estimate| with every number (for the CLI and the UI)."""
        if self.edges is not None:
            return self._edge_table(top)
        est = self.estimate
        order = est.flatten().nan_to_num(0.0).abs().argsort(descending=True)[:top].tolist()
        cols = est.shape[1]
        rows = []
        for i in order:
            li, ci = i // cols, i % cols
            row = {"layer": li, "comp": ci}
            for m, v in self.scores.items():
                row[m] = float(v[li, ci])
            if self.reliability is not None:
                row["reliability"] = float(self.reliability[li, ci])
                row["error_bound"] = (
                    float(self.error_bound[li, ci]) if self.error_bound is not None else None
                )
                row["flag"] = bool(self.flags[li, ci]) if self.flags is not None else False
            row["verified"] = self.verified.get((li, ci))
            rows.append(row)
        return rows

    def _edge_table(self, top: int) -> list[dict]:
        assert self.edges is not None
        order = self.estimate.nan_to_num(0.0).abs().argsort(descending=True)[:top].tolist()
        rows = []
        for i in order:
            e = self.edges[i]
            row: dict = {"edge": e}
            for m, v in self.scores.items():
                row[m] = float(v[i])
            if self.reliability is not None:
                row["reliability"] = float(self.reliability[i])
                row["error_bound"] = (
                    float(self.error_bound[i]) if self.error_bound is not None else None
                )
                row["flag"] = bool(self.flags[i]) if self.flags is not None else False
            row["verified"] = self.verified.get(e)
            rows.append(row)
        return rows

    def _hover(self) -> list[list[str]]:
        rows, cols = len(self.labels["rows"]), len(self.labels["cols"])
        text = []
        for i in range(rows):
            row = []
            for j in range(cols):
                parts = [component_label(self.labels, i, j)]
                for m, v in self.scores.items():
                    parts.append(f"{METHOD_LABELS.get(m, m)}: {float(v[i, j]):.4g}")
                if self.reliability is not None:
                    parts.append(f"reliability: {float(self.reliability[i, j]):.3f}")
                if self.error_bound is not None:
                    e = float(self.error_bound[i, j])
                    parts.append(
                        f"error bound: {'unbounded' if not math.isfinite(e) else f'{e:.3g}'}"
                    )
                if self.flags is not None and bool(self.flags[i, j]):
                    parts.append("FLAGGED: do not trust the estimate")
                if (i, j) in self.verified:
                    parts.append(f"verified (activation patching): {self.verified[(i, j)]:.4g}")
                row.append("<br>".join(parts))
            text.append(row)
        return text

    def _traces(self, method: str, zmax: float, text, first: bool) -> list:
        """Heatmap (numeric axes: cell (i, j) at x = j, y = i), one path outlining every flagged
        cell (scales with the cell, one trace however many), one marker trace for verified."""
        import plotly.graph_objects as go

        z = self.scores[method]
        traces = [
            go.Heatmap(
                z=z.tolist(),
                colorscale=COLORSCALE,
                zmid=0.0,
                zmin=-zmax,
                zmax=zmax,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                colorbar={"title": {"text": METRIC_UNITS.get(self.metric, self.metric)}},
                showscale=first,
            )
        ]
        if self.flags is not None and bool(self.flags.any()):
            xs: list[float | None] = []
            ys: list[float | None] = []
            h = 0.44
            for i, j in self.flags.nonzero().tolist():
                xs += [j - h, j + h, j + h, j - h, j - h, None]
                ys += [i - h, i - h, i + h, i + h, i - h, None]
            traces.append(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": "black", "width": 3},
                    name="flagged",
                    hoverinfo="skip",
                    showlegend=first,
                )
            )
        if self.verified:
            vi = list(self.verified)
            traces.append(
                go.Scatter(
                    x=[j for _, j in vi],
                    y=[i for i, _ in vi],
                    mode="markers",
                    marker={"symbol": "circle", "size": 6, "color": "black"},
                    name="verified (activation patching)",
                    hoverinfo="skip",
                    showlegend=first,
                )
            )
        return traces

    def _axes(self) -> tuple[dict, dict]:
        rows, cols = self.labels["rows"], self.labels["cols"]
        x = {
            "title": self.labels["col_name"],
            "tickvals": list(range(len(cols))),
            "ticktext": cols,
            "showgrid": False,
            "zeroline": False,
        }
        y = {
            "title": self.labels["row_name"],
            "tickvals": list(range(len(rows))),
            "ticktext": rows,
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
        }
        return x, y

    def shared_zmax(self) -> float:
        """One scale for every view of this report: the largest |value| of any method (and of
        the verified values), so AtP, HVP and ap can be compared by eye."""
        vals = [float(v.nan_to_num(0.0).abs().max()) for v in self.scores.values()]
        vals += [abs(v) for v in self.verified.values() if v == v]
        return max(vals, default=0.0) or 1.0

    def figure(self, method: str = "hvp", zmax: float | None = None):
        """A Plotly heatmap: layer rows, component columns, negative blue / positive red,
        symmetric about 0 (``zmax``: the scale's half-width, e.g. ``shared_zmax()`` for every
        view on one scale), flagged cells outlined, hover with every number of the cell."""
        if self.edges is not None:
            raise ValueError(
                "an edge report has no heatmap: draw its graph (the dashboard's graph view)"
            )
        return self.figure_panels([method], zmax=zmax)

    def figure_panels(self, methods: list[str] | None = None, zmax: float | None = None):
        """Heatmaps of several methods side by side on one colour scale (centred at 0)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        methods = list(methods or self.scores)
        for m in methods:
            if m not in self.scores:
                raise ValueError(f"method {m!r} is not in this report: {', '.join(self.scores)}")
        if zmax is None:
            zmax = max(float(self.scores[m].nan_to_num(0.0).abs().max()) for m in methods) or 1.0
        text = self._hover()
        if len(methods) == 1:
            fig = go.Figure(self._traces(methods[0], zmax, text, True))
        else:
            fig = make_subplots(
                rows=1,
                cols=len(methods),
                horizontal_spacing=0.04,
                subplot_titles=[METHOD_LABELS.get(m, m) for m in methods],
            )
            for k, m in enumerate(methods):
                for t in self._traces(m, zmax, text, k == 0):
                    fig.add_trace(t, row=1, col=k + 1)
        x, y = self._axes()
        fig.update_xaxes(**x)
        fig.update_yaxes(**y)
        title = ", ".join(METHOD_LABELS.get(m, m) for m in methods)
        model = self.settings.get("model")
        fig.update_layout(
            title=f"{title} ({model + ', ' if model else ''}{self.site}, {self.metric}, "
            f"{self.direction}, tau {self.tau:g})",
            legend={"orientation": "h", "y": -0.18},
            plot_bgcolor="white",
        )
        return fig
