"""The bench report: Markdown tables and PNG plots from a bench document (never from live runs,
so a report can be redrawn from any bench.json)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tldeploy._io import save_png, write_text
from tldeploy.parity import ParityReport
from tldeploy.records import BenchDocument, BenchRow

PLOTS = ("latency.png", "accuracy_vs_latency.png", "robustness.png")
LATENCY_COLUMNS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def summary_rows(doc: BenchDocument) -> list[list[str]]:
    """One row per entry: name, backend/precision, accuracy, delta, agreement, p50 per batch."""
    rows = []
    for r in doc.rows:
        p = r.parity
        delta = p.accuracy_delta if p is not None else None
        lat = {s.batch: s.p50 for s in r.latency}
        rows.append([
            r.name + (" (reference)" if r.is_reference else ""), f"{r.backend} {r.precision} ({r.device})",
            _fmt(r.accuracy), "" if delta is None else f"{delta * 100:+.2f}",
            "" if p is None else f"{p.top1_agreement:.2%}",
            *(_fmt(lat.get(b), ".3f") for b in doc.batch_sizes),
        ])
    return rows


def summary_header(doc: BenchDocument) -> list[str]:
    return ["artifact", "runs on", "accuracy", "Δ points", "top-1 agreement", *(f"p50 ms (batch {b})" for b in doc.batch_sizes)]


def summary_text(doc: BenchDocument) -> str:
    """The summary as aligned plain text, for the terminal, and a robustness line per artifact."""
    rows = [summary_header(doc), *summary_rows(doc)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + [line for r in doc.rows if (line := robustness_line(r))])


def robustness_line(r: BenchRow) -> str:
    """One line on an artifact's robustness against the reference, or "" without any."""
    rb = r.robustness
    if not rb or r.is_reference:
        return ""
    parts = []
    if rb["max_flip_rate"] is not None:
        parts.append(f"mCE vs reference {rb['mce_vs_reference']:.3f}, largest corruption flip rate {rb['max_flip_rate']:.2%}")
    parts += [f"disagreements within eps {d['epsilon']:g}: {d['found']} of {d['searched']}" for d in rb.get("disagreement") or []]
    return f"{r.name}: " + "; ".join(parts) if parts else ""


def _robustness_tables(rb: dict[str, Any] | None, unit: str | None) -> list[str]:
    """The corruption and attack table and the disagreement search's, for one entry."""
    if not rb:
        return []
    per = "/255" + (" of full scale" if unit and "full scale" in unit else "")
    lines = []
    def against(row: dict[str, Any]) -> list[str]:  # the reference's rows, and rows of older documents, have none
        flips, diff = row.get("flip_rate"), row.get("logits_max_abs")
        return ["" if flips is None else f"{flips:.2%}", "" if diff is None else f"{diff:.3g}"]

    rows = [[f"{c['corruption']} {c['severity']}", f"{c['accuracy']:.4f}", *against(c)] for c in rb["corruptions"]]
    rows += [[f"{a['method']} eps {a['epsilon']:g}{per}", f"{a['accuracy']:.4f}", *against(a)] for a in rb["attacks"]]
    if rows:
        mce = rb["mce_vs_reference"]
        title = "robustness" + (f" (mCE vs reference {mce:.3f})" if mce is not None else "")
        lines += ["", *_table([title, "accuracy", "flips vs reference", "logits max abs diff"], rows)]
    search = rb.get("disagreement") or []
    if search:
        rows = []
        for d in search:
            ex = min(d["examples"], key=lambda e: e["linf"], default=None)
            closest = "" if ex is None else (f"{ex['input']}: class {ex['reference_class']} -> {ex['artifact_class']} at "
                                             f"{ex['linf']:.3g}{per}, reference margin {ex['reference_margin']:.3g}")
            found = str(d["found"]) if d["found"] else "none within the budget" if d["searched"] else "nothing left to search"
            rows.append([f"eps {d['epsilon']:g}{per}", str(d["searched"]), found,
                         str(d["clean_disagreements"]), closest])
        lines += ["", *_table(["disagreement search", "searched", "found", "unlike before any nudge", "nearest found"], rows)]
    return lines


def _jetson_release(jetson: dict[str, Any]) -> str:
    """"JetPack 6.2 (L4T 36.4.3)" where the release was parsed; else nv_tegra_release's line as recorded."""
    from tldeploy.runtime.host import JetsonRelease

    release = JetsonRelease.from_dict(jetson.get("release"))
    return release.describe() if release else jetson["l4t"]


def render_report(doc: BenchDocument, plots: list[Path], base: Path) -> str:
    lines = [f"# tldeploy bench, {doc.created}", "", *_setup_lines(doc), ""]
    lines += ["## Summary", "", *_table(summary_header(doc), summary_rows(doc)), ""]
    if doc.failures:
        lines += ["**Gates failed:**", "", *(f"- {f}" for f in doc.failures), ""]
    for r in doc.rows:
        lines += _row_section(r, doc.budget_unit)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, base)})" for p in plots] + [""]
    return "\n".join(lines)


def _setup_lines(doc: BenchDocument) -> list[str]:
    """The machine, versions, data and timing the document was measured with, one item each."""
    env, cfg = doc.environment, doc.config
    gpu = env.get("gpu") or {}
    lines = [
        f"- CPU: {env['cpu']['model']}, {env['cpu']['logical_cores']} logical cores; threads: {cfg['threads'] or 'backend default'}"
        + (f"; class {env['cpu']['class']} ({', '.join(env['cpu'].get('features') or []) or 'no listed features'})" if env["cpu"].get("class") else ""),
        f"- GPU: {gpu.get('name', 'none')}" + (f", driver {gpu.get('driver')}" if gpu else ""),
        *([f"- Jetson: {_jetson_release(env['jetson'])}, power mode {env['jetson'].get('power_mode')}"] if env.get("jetson") else []),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- environment fingerprint: `{env['fingerprint']}`",
    ]
    data = doc.data
    lines.append(f"- data: {data['path']}, {data['images']} images, {'labelled' if data['labelled'] else 'unlabelled'}" if data
                 else "- data: none (random inputs; no parity)")
    timing = f"{cfg['iters']} iterations" if cfg["duration_s"] is None else f"{cfg['duration_s']} s"
    warm = f"{cfg['warmup']} iterations" if cfg["warmup_s"] is None else f"{cfg['warmup_s']} s"
    lines.append(f"- timing: {timing} per artifact and batch in {cfg['rounds']} rounds (artifacts take turns), after {warm} of warm-up")
    return lines


def _row_section(r: BenchRow, budget_unit: str | None) -> list[str]:
    """One entry's section: what it is, its latency table, its build, parity, robustness, OOD and gates."""
    lines = [f"## {r.name}", "", f"`{r.path}` ({r.kind}, {r.backend} {r.precision} on {r.device}), sha256 `{r.sha256[:16]}`", ""]
    if r.latency:
        lines += _latency_table(r) + [""]
    for skip in r.skipped_batches:
        lines.append(f"- batch {skip['batch']} not timed: {skip['why']}")
    b = r.build
    if b:
        kept = ", ".join(f"`{k}`" for k in b["kept_high_precision"]) or "none"
        lines.append(f"- kept in higher precision by the build: {kept}" + (f" (plan {b['precision_plan']})" if b["precision_plan"] else "")
                     + (f"; besides, the {b['preset']} preset" if b.get("preset") else ""))
        if b["check"]:
            c = b["check"]
            kl = f", KL {c['kl']:.3g}" if c.get("kl") is not None else ""
            lines.append(f"- the build's own check: top-1 agreement {c['top1_agreement']:.2%}{kl} on {c['images']}")
    if r.parity is not None:
        lines += ["", *_table(["parity vs the reference", "value"], _parity_rows(r.parity))]
    lines += _robustness_tables(r.robustness, budget_unit)
    o = r.ood
    if o is not None:
        rows = [["score, threshold", f"{o.score} > {o.threshold:.4g} is unknown"], ["AUROC (--data vs OOD inputs)", f"{o.auroc:.4f}"],
                ["known at the threshold: in-distribution (TPR) / OOD (FPR)", f"{o.tpr:.2%} / {o.fpr_at_tpr:.2%}"]]
        if o.disagreement is not None:
            rows.append(["unknown/known decisions unlike the reference's", f"{o.disagreement:.2%}"])
        lines += ["", *_table([f"unknown inputs ({o.images} OOD)", "value"], rows)]
    for g in r.gates:
        lines.append(f"- gate {g.name} {g.limit:g}: {'passed' if g.passed else 'FAILED'} ({g.value:.6g})")
    return lines + [""]


def _latency_table(r: BenchRow) -> list[str]:
    """Latency statistics per batch size, with the h2d/compute/d2h split where it was timed."""
    stages = any(s.stages for s in r.latency)
    header = ["batch", *(f"{c} ms" for c in LATENCY_COLUMNS), "images/s", "samples"]
    header += ["h2d p50 ms", "compute p50 ms", "d2h p50 ms"] if stages else []
    rows = []
    for s in r.latency:
        row = [str(s.batch), *(f"{getattr(s, c):.3f}" for c in LATENCY_COLUMNS), f"{s.throughput:.1f}", str(len(s.samples_ms))]
        if stages:
            row += [f"{s.stages[k]['p50']:.3f}" if s.stages else "" for k in ("h2d", "compute", "d2h")]
        rows.append(row)
    return _table(header, rows)


def _parity_rows(p: ParityReport) -> list[list[str]]:
    """The parity table: output differences, agreement and CAMs, and the accuracy where labelled."""
    rows = [
        ["logits max / mean abs diff", f"{p.logits_max_abs:.3g} / {p.logits_mean_abs:.3g}"],
        ["probs max / mean abs diff", f"{p.probs_max_abs:.3g} / {p.probs_mean_abs:.3g}"],
        ["cosine similarity (logits)", f"{p.cosine:.6f}"],
        ["top-1 agreement", f"{p.top1_agreement:.2%}"],
        ["KL divergence (probs)", f"{p.kl_divergence:.3g}"],
        ["CAM correlation / top-20% IoU", f"{p.cam_correlation:.4f} / {p.cam_iou_top20:.4f}"],
    ]
    if p.accuracy is not None and p.accuracy_delta is not None:  # with labels, compare_outputs sets both
        rows.append(["accuracy (reference, delta)", f"{p.accuracy:.4f} ({p.reference_accuracy:.4f}, {p.accuracy_delta * 100:+.2f} points)"])
    return rows


def write_report(doc: BenchDocument, path: Path, plots: list[Path]) -> None:
    write_text(Path(path), render_report(doc, plots, Path(path).parent))


def write_plots(doc: BenchDocument, out_dir: Path) -> list[Path]:
    """latency.png (distribution per artifact, one panel per batch size), with labelled data
    accuracy_vs_latency.png (accuracy against p50 latency at the smallest batch), and with
    --robustness robustness.png (accuracy against severity per corruption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a plot this run does not draw must not survive from an earlier one
        (out_dir / name).unlink(missing_ok=True)
    written = []
    batches = doc.batch_sizes
    timed = [r for r in doc.rows if r.latency]
    if timed:
        fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4.2), squeeze=False)
        for ax, b in zip(axes[0], batches, strict=True):
            series = [(r.name, s.samples_ms) for r in timed for s in r.latency if s.batch == b]
            if series:
                ax.boxplot([s for _, s in series], orientation="horizontal", whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
                ax.set_yticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=8)
            _log_axis(ax.xaxis, ax.set_xscale)
            ax.set_xlabel("latency (ms), whiskers p1-p99")
            ax.set_title(f"batch {b}")
        fig.tight_layout()
        written.append(save_png(fig, out_dir / PLOTS[0]))
    points = [(r, a, s) for r in doc.rows if (a := r.accuracy) is not None and (s := r.latency_at(min(batches))) is not None]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for r, a, s in points:
            ax.scatter(s.p50, a * 100, marker="*" if r.is_reference else "o", s=80)
            ax.annotate(r.name, (s.p50, a * 100), textcoords="offset points", xytext=(5, 4), fontsize=8)
        _log_axis(ax.xaxis, ax.set_xscale)
        ax.set_xlabel(f"p50 latency (ms), batch {min(batches)}")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(save_png(fig, out_dir / PLOTS[1]))
    robust = [r for r in doc.rows if (r.robustness or {}).get("corruptions")]
    if robust:
        written.append(_robustness_plot(plt, robust, out_dir / PLOTS[2]))
    return written


def _robustness_plot(plt, results: list[BenchRow], path: Path) -> Path:
    """Accuracy against severity, one panel per corruption, one line per entry."""
    names = list(dict.fromkeys(c["corruption"] for c in (results[0].robustness or {})["corruptions"]))
    cols = 4
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((len(names) + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):
        for r in results:
            rows = [c for c in (r.robustness or {})["corruptions"] if c["corruption"] == name]
            ax.plot([c["severity"] for c in rows], [100 * c["accuracy"] for c in rows], marker="o",
                    linestyle="--" if r.is_reference else "-", label=r.name)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("severity")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def _log_axis(axis, set_scale) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, ... in plain numbers (latencies span a decade or two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())

