"""A self-contained ``report.html``: tables plus the PNGs embedded as ``data:`` URIs (no external assets)."""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rescom.evaluation.report import PRIORS, SHIFT_METHODS

__all__ = ["render_html", "write_html"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em} th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums} td.best{font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .note{color:#555;font-size:.85em} code{background:#f6f6f6}
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            cls = ' class="num"' if isinstance(cell, int | float) or cell is None else ""
            cells.append(f"<td{cls}>{_fmt(cell, digits)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: Path, alt: str, embed: bool, base: Path) -> str:
    if embed:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = html.escape(str(path.relative_to(base)) if path.is_relative_to(base) else str(path))
    return f'<figure><img src="{src}" alt="{html.escape(alt)}"><figcaption class="note">{html.escape(alt)}</figcaption></figure>'


def _summary_table(models: Sequence[Mapping[str, Any]]) -> str:
    header = [
        "model",
        "method",
        "N test",
        "T",
        "max |b|",
        "top1",
        "balanced_acc",
        "Many",
        "Medium",
        "Few",
        "top1 / balanced train π",
        "top1 / balanced adaptive π",
        "ECE %",
        "NLL",
        "Brier",
    ]
    rows = []
    for m in models:
        r = m["results"]
        lt = r["longtail"]["uniform"]
        cal = r["calibration"]["uniform"]["scaled"]
        rows.append(
            [
                m["label"],
                f"{m.get('method')} (π_s = train)" if m.get("source_prior") == "train" else m.get("method"),
                r["num_samples"],
                r["temperature"],
                max((abs(v) for v in r.get("class_bias") or []), default=0.0),
                lt.get("top1", lt["acc"]),
                lt.get("balanced_acc"),
                lt["many"],
                lt["medium"],
                lt["few"],
                _pair(r["longtail"]["train"]),
                _pair(r["longtail"]["adaptive"]),
                100 * cal["ece"],
                cal["nll"],
                cal["brier"],
            ]
        )
    return _table(header, rows)


def _pair(lt: Mapping[str, Any]) -> str:
    """``"top1 / balanced_acc"`` of a longtail block (balanced computed by the report)."""
    bal = lt.get("balanced_acc")
    return f"{lt.get('top1', lt['acc']):.2f} / " + ("-" if bal is None else f"{bal:.2f}")


def _calibration_table(models: Sequence[Mapping[str, Any]]) -> str:
    header = [
        "model",
        "prior",
        "top1 (z)",
        "balanced (z)",
        "ECE % (z)",
        "NLL (z)",
        "Brier (z)",
        "top1 (z/T+b)",
        "balanced (z/T+b)",
        "ECE % (z/T+b)",
        "NLL (z/T+b)",
        "Brier (z/T+b)",
    ]
    rows = []
    for m in models:
        for prior in PRIORS:
            raw, scaled = (m["results"]["calibration"][prior][k] for k in ("raw", "scaled"))
            rows.append(
                [
                    m["label"],
                    prior,
                    raw["acc"],
                    raw.get("balanced_acc"),
                    100 * raw["ece"],
                    raw["nll"],
                    raw["brier"],
                    scaled["acc"],
                    scaled.get("balanced_acc"),
                    100 * scaled["ece"],
                    scaled["nll"],
                    scaled["brier"],
                ]
            )
    return _table(header, rows, digits=3)


def _shift_table(models: Sequence[Mapping[str, Any]], metric: str) -> str:
    summaries = [m["results"]["label_shift"]["summary"] for m in models]
    if not summaries or not summaries[0]:
        return "<p>No label-shift study.</p>"
    header = ["test set", "size"] + [
        f"{m['label']}: {method}" if len(models) > 1 else method for m in models for method in SHIFT_METHODS
    ]
    rows = []
    for i, entry in enumerate(summaries[0]):
        row: list[Any] = [entry["set"], entry["size"]]
        for summary in summaries:
            same = summary[i] if i < len(summary) and summary[i]["set"] == entry["set"] else None
            for method in SHIFT_METHODS:
                if same is None:
                    row.append(None)
                else:
                    value = same["methods"][method]
                    digits = 3 if metric == "nll" else 2
                    if value.get(metric) is None:
                        row.append(None)
                    else:
                        row.append(
                            f"{value[metric]:.{digits}f} ± {value.get(metric + '_std', 0.0):.{digits}f}"
                        )
        rows.append(row)
    return _table(header, rows, digits=1)


def _gap_table(models: Sequence[Mapping[str, Any]]) -> str:
    summaries = [m["results"]["label_shift"]["summary"] for m in models]
    if not summaries or not summaries[0] or "adaptive_gap" not in summaries[0][0]:
        return ""
    header = ["test set"]
    for m in models:
        prefix = f"{m['label']}: " if len(models) > 1 else ""
        header += [f"{prefix}adaptive − oracle", f"{prefix}adaptive − uniform", f"{prefix}EM TV distance"]
    rows = []
    for i, entry in enumerate(summaries[0]):
        row: list[Any] = [entry["set"]]
        for summary in summaries:
            same = summary[i] if i < len(summary) and summary[i]["set"] == entry["set"] else None
            for ref in ("oracle", "uniform"):
                gap = (same or {}).get("adaptive_gap", {}).get(ref)
                row.append(f"{gap['acc']:+.2f} ± {gap['acc_std']:.2f}" if gap else None)
            row.append(None if same is None else same["em_prior_tv"])
        rows.append(row)
    return _table(header, rows, digits=3)


def render_html(
    models: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    title: str = "ResCom evaluation report",
    command: str | None = None,
    notes: Sequence[str] = (),
    embed_images: bool = True,
    comparison_plots: Mapping[str, str | Path] | None = None,
) -> str:
    """The report page.

    Args:
        models: one entry per model: ``{"label", "method", "source", "results"`` (:func:`evaluate_logits`),
            ``"plots": {caption: PNG path}}``.
        out_dir: folder of the report (PNG links are made relative to it when not embedded).
        title: page title.
        command: the command line that produced the report.
        notes: extra paragraphs (plain text).
        embed_images: embed the PNGs as base64 ``data:`` URIs (a single portable file) or link them.
        comparison_plots: ``{caption: PNG path}`` of cross-model figures.

    Returns:
        The HTML text.
    """
    base = Path(out_dir).resolve()
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    first = models[0]["results"] if models else {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>Generated {created}"
        + (f" by <code>{html.escape(command)}</code>" if command else "")
        + "</p>",
        "<h2>Summary</h2>",
        "<p class='note'>Top-1 / Many / Medium / Few in % with the uniform prior (the official evaluation: "
        "argmax of the raw Balanced-Softmax logits). Many: n &gt; "
        f"{_fmt(first.get('thresholds', {}).get('many'))}, Few: n &lt; "
        f"{_fmt(first.get('thresholds', {}).get('few'))} training images. Calibration columns: uniform prior, "
        "fitted T.</p>",
        _summary_table(models),
        "<h2>Calibration</h2>",
        "<p class='note'>p = softmax(z/T + log π). π: uniform, train (n<sub>c</sub>/N) or adaptive (EM of Saerens "
        "et al. on the unlabelled test logits, Dirichlet-MAP M-step, α = "
        f"{_fmt(first.get('em_alpha'))}). ECE with equal-width confidence bins.</p>",
        _calibration_table(models),
        "<h2>Label-shift study</h2>",
        "<p class='note'>The test split resampled (LADE / SADE) to forward-long-tailed (class 0 = head, as in "
        "training), uniform and backward-long-tailed priors; n<sub>i</sub> = max(1, ⌊n<sub>max</sub>·IF<sup>−i/(C−1)"
        "</sup>⌋) with n<sub>max</sub> = the smallest test class (no replacement). oracle = the set's true prior; "
        "adaptive = EM on the set's own unlabelled logits. Mean ± std over seeds; all with the fitted T.</p>",
        "<h3>Top-1 accuracy (%)</h3>",
        _shift_table(models, "acc"),
        "<h3>Balanced accuracy (mean per-class accuracy, %)</h3>",
        _shift_table(models, "balanced_acc"),
        "<h3>EM-adaptive prior against the oracle and the uniform prior</h3>",
        "<p class='note'>Accuracy difference in points, paired per seed (mean ± std over seeds); EM TV distance = "
        "½‖π̂ − π<sub>true</sub>‖₁ averaged over seeds.</p>",
        _gap_table(models),
        "<h3>NLL</h3>",
        _shift_table(models, "nll"),
    ]
    for caption, path in (comparison_plots or {}).items():
        parts.append(_img(Path(path), caption, embed_images, base))
    for m in models:
        parts.append(f"<h2>{html.escape(m['label'])}</h2>")
        if m.get("source"):
            parts.append(f"<p class='note'>source: <code>{html.escape(str(m['source']))}</code></p>")
        for caption, path in m.get("plots", {}).items():
            parts.append(_img(Path(path), caption, embed_images, base))
        confusions = m["results"]["confusions"]
        if confusions:
            names = m.get("class_names") or [str(i) for i in range(m["results"]["num_classes"])]
            parts.append(
                _table(
                    ["true", "predicted", "count", "% of true class"],
                    [[names[p["true"]], names[p["pred"]], p["count"], 100 * p["rate"]] for p in confusions],
                )
            )
    if notes:
        parts.append("<h2>Notes</h2>")
        parts.extend(f"<p>{html.escape(n)}</p>" for n in notes)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, models: Sequence[Mapping[str, Any]], **kwargs: Any) -> Path:
    """Render with :func:`render_html` (``out_dir`` = the file's folder) and write ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(models, path.parent, **kwargs), encoding="utf-8")
    return path
