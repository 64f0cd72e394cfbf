"""Results -> ``serving.json`` (everything), ``serving.md`` (tables + target checks) and ``serving.png`` (plot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["evaluate_targets", "write_json", "write_markdown", "write_plot"]

OURS = "rescom"
LOAD_LIMIT = 1.5  # 1-minute load average before the run above which the numbers are flagged
OTHER_CPU_LIMIT = 15.0  # % of one core used by other processes during a load point


def _runs(server: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    return [p for p in server.get("points", []) if p["concurrency"] == concurrency]


def _point(server: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    """The run with the median throughput at ``concurrency`` (the only one when it ran once)."""
    runs = sorted(_runs(server, concurrency), key=lambda p: p["throughput"])
    return runs[(len(runs) - 1) // 2] if runs else None


def spread_lines(servers: dict[str, Any]) -> list[str]:
    """Markdown rows: median, min-max and spread of throughput and p99 where a point ran more than once."""
    rows = []
    for s in servers.values():
        for c in sorted({p["concurrency"] for p in s.get("points", [])}):
            runs = _runs(s, c)
            if len(runs) < 2:
                continue
            tput = sorted(p["throughput"] for p in runs)
            p99 = sorted(p["p99_ms"] for p in runs)
            median = _point(s, c)
            assert median is not None
            spread = 100.0 * (tput[-1] - tput[0]) / median["throughput"] if median["throughput"] else 0.0
            rows.append(
                f"| {s['title']} | {c} | {len(runs)} | {median['throughput']:.0f} | {tput[0]:.0f}-{tput[-1]:.0f} | "
                f"{spread:.1f}% | {median['p99_ms']:.1f} | {p99[0]:.1f}-{p99[-1]:.1f} |"
            )
    if not rows:
        return []
    head = [
        "",
        "## Repeated points (median and spread)",
        "",
        "| server | concurrency | runs | median req/s | min-max req/s | spread | p99 ms (median run) | p99 min-max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    return head + rows


def _not_measured(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "passed": None, "detail": f"not measured ({why})"}


def _vs_mosec(servers: dict[str, Any], refs: dict[str, Any], c: int, margin: float) -> dict[str, Any]:
    """Ours vs Mosec at ``c``: median throughput >= ``margin`` x Mosec's, p99 of the median run <= Mosec's.

    The detail also says how the goal compares with the engine's own limit (no HTTP, the same work): a goal
    above that limit cannot be reached by any server doing the same work on the same cores.
    """
    name = f"c={c}: median req/s >= {margin:.2f} x Mosec's, p99 <= Mosec's"
    mine, theirs = _point(servers.get(OURS, {}), c), _point(servers.get("mosec", {}), c)
    if mine is None or theirs is None or theirs["throughput"] <= 0:
        return _not_measured(name, servers.get("mosec", {}).get("error") or f"no c={c} point for both")
    ratio = mine["throughput"] / theirs["throughput"]
    runs = (len(_runs(servers[OURS], c)), len(_runs(servers["mosec"], c)))
    detail = (
        f"{mine['throughput']:.0f} / {theirs['throughput']:.0f} req/s = {ratio:.3f}; p99 "
        f"{mine['p99_ms']:.1f} vs {theirs['p99_ms']:.1f} ms (median of {runs[0]} / {runs[1]} runs)"
    )
    engine = _engine_limit(refs)
    if engine:
        goal = margin * theirs["throughput"]
        detail += f"; goal {goal:.0f} req/s = {goal / engine:.2f} x the engine's own limit ({engine:.0f} img/s, no HTTP)"
    return {
        "name": name,
        "passed": ratio >= margin and mine["p99_ms"] <= theirs["p99_ms"],
        "detail": detail,
        "ratio": ratio,
    }


def _engine_limit(refs: dict[str, Any]) -> float | None:
    """The engine's limit: the higher of the reference runs (None when no run measured it)."""
    engines = [r["engine_img_s"] for r in refs.values() if r and r.get("engine_img_s")]
    return max(engines) if engines else None


def _vs_every_peer(servers: dict[str, Any], c: int) -> dict[str, Any]:
    """Ours at ``c``: median throughput >= every measured peer's."""
    name = f"c={c}: req/s >= every peer"
    mine = _point(servers.get(OURS, {}), c)
    peers = {s["title"]: _point(s, c) for k, s in servers.items() if k != OURS}
    measured = {t: p["throughput"] for t, p in peers.items() if p is not None}
    if mine is None or not measured:
        return _not_measured(name, f"no c={c} point for ours and a peer")
    missing = sorted(t for t, p in peers.items() if p is None)
    best_title = max(measured, key=measured.__getitem__)
    detail = f"ours {mine['throughput']:.0f}; best peer {best_title} {measured[best_title]:.0f} req/s"
    detail += f"; not measured: {', '.join(missing)}" if missing else ""
    return {"name": name, "passed": mine["throughput"] >= max(measured.values()), "detail": detail}


def _c1_latency(servers: dict[str, Any], ref: dict[str, Any] | None, slack_ms: float) -> dict[str, Any]:
    """Ours at c=1: p50 <= decode + ORT batch-1 + calibration/JSON (same run) + ``slack_ms``."""
    name = f"c=1: p50 <= decode + ORT b1 + calibration/JSON + {slack_ms:g} ms"
    one = _point(servers.get(OURS, {}), 1)
    if one is None or not ref or ref.get("c1_floor_ms") is None:
        return _not_measured(name, "no c=1 point or no reference")
    floor = ref["c1_floor_ms"]
    detail = (
        f"p50 {one['p50_ms']:.2f} ms vs decode {ref['decode_ms']:.3f} + ORT b1 {ref['ort_b1_p50_ms']:.2f} + "
        f"calibration/JSON {ref['respond_ms']:.3f} = {floor:.2f} ms (limit {floor + slack_ms:.2f} ms)"
    )
    return {"name": name, "passed": one["p50_ms"] <= floor + slack_ms, "detail": detail}


def _vs_engine(servers: dict[str, Any], refs: dict[str, Any], c: int, share: float) -> dict[str, Any]:
    """Ours at ``c``: median throughput >= ``share`` x the engine's limit (the higher of the reference runs)."""
    name = f"c={c}: req/s >= {share:.2f} x raw engine (decode + ORT b32 + top-k, same threads)"
    mine, engine = _point(servers.get(OURS, {}), c), _engine_limit(refs)
    if mine is None or not engine:
        return _not_measured(name, "no engine reference in this run" if not engine else f"no c={c} point")
    ratio = mine["throughput"] / engine
    return {
        "name": name,
        "passed": ratio >= share,
        "detail": f"{mine['throughput']:.0f} req/s / {engine:.0f} img/s = {ratio:.3f}",
        "ratio": ratio,
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's "What it must show", on the median run of repeated points.

    At c=64 and c=256 our median throughput >= 1.03 x Mosec's and our p99 <= Mosec's; at c=16 ours >= every
    peer; at c=1 our p50 <= decode + ORT batch-1 + calibration/JSON + 0.5 ms; at c=64 ours >= 0.92 x the raw
    engine (decode + ORT batch 32 + top-k with the servers' instances x threads).

    Returns:
        One dict per check: ``name``, ``passed`` (``None`` when it could not be measured) and ``detail``.
    """
    servers = results["servers"]
    refs = results.get("references") or {"start": results.get("reference")}
    return [
        _vs_mosec(servers, refs, 64, 1.03),
        _vs_mosec(servers, refs, 256, 1.03),
        _vs_every_peer(servers, 16),
        _c1_latency(servers, results.get("reference"), 0.5),
        _vs_engine(servers, refs, 64, 0.92),
    ]


def _compute(cfg: dict[str, Any]) -> str:
    """The run's compute for every server, e.g. "2 model instances x 1 ORT intra-op thread(s)"."""
    if cfg.get("instances") is None:  # results written before the setting existed: one instance
        return f"1 model instance x {cfg['ort_threads']} ORT intra-op thread(s)"
    return f"{cfg['instances']} model instances x {cfg['ort_threads']} ORT intra-op thread(s) each"


def _server_config(key: str, server: dict[str, Any], cfg: dict[str, Any]) -> str:
    """One server's compute and batching window, from its entry (older results: from the run's config)."""
    n = server.get("instances", cfg.get("instances", 1))
    t = server.get("ort_threads", cfg["ort_threads"])
    return (
        f"{n} instance(s) x {t} ORT thread(s), max batch {cfg['max_batch_size']}, window {_window(key, cfg)}"
    )


def _window(key: str, cfg: dict[str, Any]) -> str:
    """The batching window a server ran with (each server's own knob)."""
    if key == "mosec":
        return f"max_wait_time {cfg.get('mosec_wait_ms', cfg['max_delay_ms']):g} ms"
    if key == "bentoml":
        latency = cfg.get("bentoml_max_latency_ms")
        return (
            "adaptive (max_latency_ms n/a)" if latency is None else f"adaptive (max_latency_ms {latency:g})"
        )
    return f"{cfg['max_delay_ms']:g} ms"


def write_json(results: dict[str, Any], path: Path) -> None:
    """All results, as measured."""
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_markdown(results: dict[str, Any], path: Path, plot_name: str) -> None:
    """The human-readable report."""
    meta, ref, servers = results["meta"], results.get("reference"), results["servers"]
    m, cfg = meta["machine"], meta["config"]
    lines = [
        "# Serving benchmark: ResCom service vs Mosec, LitServe, BentoML, Triton (PyTriton)",
        "",
        f"Generated by `{meta['command']}` on {meta['finished_utc']} "
        f"({'QUICK development run, not for comparison' if cfg['quick'] else 'full run'}). "
        "Raw numbers: `serving.json`; server logs and wrk output: `raw/serving/`.",
        "",
    ]
    load = m["load_average_start"][0]
    other_max, other_mean = meta.get("max_other_cpu_pct", 0.0), meta.get("mean_other_cpu_pct", 0.0)
    if load > LOAD_LIMIT or other_max > OTHER_CPU_LIMIT:
        lines += [
            f"> **Warning: the machine was not idle.** 1-minute load average before the run: {load:.2f} "
            f"(limit {LOAD_LIMIT}); CPU used by other processes during the load points: mean {other_mean:.0f}%, "
            f"max {other_max:.0f}% of one core (limit {OTHER_CPU_LIMIT:.0f}%). Other work shared the "
            f"{m['usable_cpus']} cores, so these numbers are not comparable with a quiet run.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['usable_cpus']} usable cores ({m['logical_cpus']} logical), {m['memory_gib']} GiB",
        f"- OS: {m['os']}; Python {m['python']}; load generator: {meta['wrk']}",
        f"- Load average (1, 5, 15 min) before the run: {m['load_average_start']}; CPU taken by other "
        f"processes during the load points: mean {other_mean:.0f}%, max {other_max:.0f}% of one core",
        "",
        "## Setup (identical for every server)",
        "",
        f"- Model: `{meta['model_dir']}` (ONNX, uint8 `[N,32,32,3]` -> logits), the same file for every server.",
        "- Work per request: PNG bytes -> Pillow decode -> `rescom.preprocess.resize_center_crop` -> uint8 "
        "batch -> ONNX Runtime -> `rescom.calibration.calibrated_probs` (fitted T, model's prior) -> top-5 -> "
        "the service's JSON document (peers: `benchmarks/serving/apps/pipeline.py`).",
        f"- Dynamic batching: max batch {cfg['max_batch_size']}, window {cfg['max_delay_ms']} ms where the "
        f"server has one; {_compute(cfg)}, 1 inter-op thread, spinning off; request deadline {cfg['timeout_s']} s.",
        f"- Load: wrk, closed loop, {cfg['wrk_threads']} thread, keep-alive, {cfg['duration_s']:.0f} s per point, "
        f"requests rotate over the {meta['images']} digits-LT test PNGs (each body a real PNG); "
        "127.0.0.1 only. wrk shares the cores with the server.",
        "- Accuracy: one Python client sends all test images once to each server and compares `class_id` with "
        "offline ONNX Runtime (same pipeline, batches of 32).",
        "",
        "| server | versions | configuration |",
        "| --- | --- | --- |",
    ]
    for s in servers.values():
        versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items()) or "n/a"
        lines.append(f"| {s['title']} | {versions} | {s['notes']} |")
    lines += ["", "Compute and window per server (instances x ORT threads):", ""]
    lines += [f"- {s['title']}: {_server_config(k, s, cfg)}" for k, s in servers.items()]
    refs = results.get("references") or ({"start": ref} if ref else {})
    if refs:
        lines += [
            "",
            "## Raw ONNX Runtime reference (no HTTP, same session options)",
            "",
            "Measured before and after the servers; the c=1 check uses the run with the lower floor. The first "
            "columns use one session; the last two use N sessions at once (N = the servers' instances, each "
            "with its own ORT threads, each in its own process): ORT batch 32 alone, and the engine's limit "
            "(decode of 32 PNGs + ORT batch 32 + calibration/top-k/JSON, no HTTP; the engine check uses the "
            "higher run). Older results lack the N-session columns (n/a).",
            "",
            "| when | batch-1 p50 | batch-1 p99 | batch-1 img/s | batch-32 call | batch-32 img/s | "
            "decode+preprocess / img | calibration+JSON / img | decode + ORT b1 + JSON | "
            "N sessions: ORT b32 img/s | N sessions: engine img/s | load 1m |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for when, r in refs.items():
            lines.append(
                f"| {when} | {r['ort_b1_p50_ms']:.2f} ms | {r['ort_b1_p99_ms']:.2f} ms | {r['ort_b1_img_s']:.0f} | "
                f"{r['ort_batch_ms']:.1f} ms | {r['ort_batch_img_s']:.0f} | {r['decode_ms'] * 1e3:.0f} us | "
                f"{r['respond_ms'] * 1e3:.0f} us | {r['c1_floor_ms']:.2f} ms | "
                f"{_fmt(r.get('ort_batch_img_s_instances'), 0)} | {_fmt(r.get('engine_img_s'), 0)} | "
                f"{_fmt(r.get('load_1m'), 2)} |"
            )
    lines += [
        "",
        "## Load results",
        "",
        "Throughput counts successful responses; latencies are wrk's, over every completed response. Mean batch "
        "= rows per model call (ours: `/metrics`; peers: counted inside the shared pipeline). Server CPU = "
        "user+system CPU of the server's processes per successful request (2 cores = 2000 ms of CPU per s). "
        "wrk / other = CPU of the load generator / of every other process on the machine during the point, "
        "in % of one core.",
        "",
        "| server | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | mean batch | server CPU ms/req | "
        "wrk CPU | other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in servers.values():
        if not s.get("points"):
            continue
        for p in s["points"]:
            errs = sum(p["errors"].values())
            err_text = (
                "0" if errs == 0 else f"{errs} ({', '.join(f'{k} {v}' for k, v in p['errors'].items() if v)})"
            )
            lines.append(
                f"| {s['title']} | {p['concurrency']} | {p['throughput']:.0f} | {p['p50_ms']:.2f} | "
                f"{p['p90_ms']:.2f} | {p['p99_ms']:.2f} | {err_text} | {_fmt(p.get('mean_batch'))} | "
                f"{_fmt(p.get('cpu_ms_per_req'), 2)} | {_fmt(p.get('wrk_cpu_pct'), 0)}% | "
                f"{_fmt(p.get('other_cpu_pct'), 0)}% |"
            )
    lines += spread_lines(servers)
    lines += ["", "## Accuracy pass (all test images, one request each)", ""]
    lines += ["| server | HTTP 200 | same label as offline ORT | max score diff | top-1 accuracy |"]
    lines += ["| --- | ---: | ---: | ---: | ---: |"]
    for s in servers.values():
        a = s.get("accuracy")
        if a:
            lines.append(
                f"| {s['title']} | {a['http_ok']}/{a['images']} | {a['label_match']}/{a['images']}"
                f"{'' if a['all_match'] else ' **MISMATCH**'} | {a['max_score_diff']:.1e} | "
                f"{a['accuracy_pct']:.1f}% |"
            )
    failed = {k: s for k, s in servers.items() if s.get("error")}
    if failed:
        lines += ["", "## Servers that could not be measured", ""]
        lines += [f"- **{s['title']}**: {s['error']}" for s in failed.values()]
    missed = {k: s for k, s in servers.items() if s.get("round_errors")}
    if missed:
        lines += ["", "## Rounds that could not be measured (the server's other runs are above)", ""]
        lines += [f"- **{s['title']}**: {err}" for s in missed.values() for err in s["round_errors"]]
    lines += ["", "## Targets", "", "| check | result | detail |", "| --- | --- | --- |"]
    for c in results.get("checks", []):
        verdict = {True: "pass", False: "**FAIL**", None: "not measured"}[c["passed"]]
        lines.append(f"| {c['name']} | {verdict} | {c['detail']} |")
    lines += [
        "",
        "## Reading these numbers",
        "",
        "- Every server is CPU-bound here: its model instances x ORT threads want every core, so any CPU a "
        "server spends per request (HTTP, Python, IPC) both costs throughput and slows the model calls it "
        "overlaps.",
        "- The c=1 latency includes each server's batching window (see the configuration list above); "
        "BentoML adapts its window from a cost model instead.",
        "- LitServe's window is counted from the start of its collect loop, not from the oldest request; "
        f"BentoML sheds load with 503 past `max_latency_ms` ({cfg.get('bentoml_max_latency_ms', 'n/a')} ms here).",
        "- Triton's numbers include the KServe v2 envelope (binary request, JSON response wrapping the "
        "document); the other four exchange the raw PNG and the bare document.",
        "- wrk runs on the same two cores (one thread); its CPU is not counted in `server CPU ms/req`.",
        "",
        f"![throughput and p99 vs concurrency]({plot_name})",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and p99 latency against concurrency, one line per server (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(12, 5.4))
    for key, s in results["servers"].items():
        pts = sorted(s.get("points", []), key=lambda p: p["concurrency"])
        if not pts:
            continue
        c = [p["concurrency"] for p in pts]
        style = {"linewidth": 2.6, "color": "black"} if key == OURS else {"linewidth": 1.4}
        ax_t.plot(c, [p["throughput"] for p in pts], marker="o", label=s["title"], **style)
        ax_p.plot(c, [p["p99_ms"] for p in pts], marker="o", label=s["title"], **style)
    ref = results.get("reference")
    if ref:
        if ref.get("engine_img_s"):
            label = f"raw engine, {ref.get('instances')} sessions: decode + ORT b32 + top-k (no HTTP)"
            ax_t.axhline(ref["engine_img_s"], color="grey", linestyle="--", label=label)
        else:
            ax_t.axhline(
                ref["ort_batch_img_s"], color="grey", linestyle="--", label="raw ORT batch 32 (no HTTP)"
            )
        ax_p.axhline(ref["c1_floor_ms"], color="grey", linestyle=":", label="raw ORT b1 + decode + JSON")
    for ax, title, unit in ((ax_t, "Throughput", "requests / s"), (ax_p, "p99 latency", "ms (log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["meta"]["config"]["concurrencies"])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent connections (wrk)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_p.set_yscale("log")
    ax_t.set_ylim(bottom=0)
    handles, labels = ax_t.get_legend_handles_labels()
    extra_h, extra_l = ax_p.get_legend_handles_labels()
    handles += extra_h[-1:] if ref else []
    labels += extra_l[-1:] if ref else []
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    m = results["meta"]["machine"]
    fig.suptitle(f"digits-LT ResNet-32 ONNX, {m['cpu']}, {m['usable_cpus']} cores", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
