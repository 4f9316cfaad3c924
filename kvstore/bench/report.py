"""Presenting results: the terminal table, live progress, results.json and results.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

MIN_CURVE_READS = 10  # fewer reads in a bucket make a point that is mostly noise


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "0"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _stale(st: dict[str, Any] | None) -> str:
    if not st or not st["reads_checked"]:
        return "-"
    return f"{st['probability'] * 100:.3f}% of {st['reads_checked']:,}"


def _conflicts(lv: dict[str, Any]) -> str:
    if not lv.get("writes"):
        return "-"
    return f"{lv['conflict_rate'] * 100:.2f}% of {lv['writes']:,}"


def _siblings(lv: dict[str, Any]) -> str:
    if "siblings_mean" not in lv:
        return "-"
    return f"{lv['siblings_mean']:.3f} (max {lv['siblings_max']})"


def _cpu(entry: dict[str, Any]) -> str:
    """Node CPU per operation (summed over the nodes) and the client's, in µs."""
    cpu = entry.get("cpu")
    if not cpu or cpu.get("node_cpu_us_per_op") is None:
        return "-"
    text = f"{cpu['node_cpu_us_per_op']:,.0f} / {cpu['client_cpu_us_per_op']:,.0f}"
    return text + (" (partial)" if cpu.get("nodes_missing") else "")


def results_table(results: dict[str, Any]) -> Table:
    """One row per ceiling and per consistency level."""
    cfg, cluster = results["config"], results["cluster"]
    title = (f"workload {cfg['workload']} ({cfg['workload_description']}), "
             f"{cluster['size']} nodes, N={cluster['replication_factor']}, "
             f"{cfg['records']} records x {cfg['value_size']} B, {cfg['distribution']}, "
             f"concurrency {cfg['concurrency']}"
             + (f", fixed rate {cfg['rate']:.0f}/s" if cfg.get("rate") else "")
             + ("" if cfg.get("route", True) else ", no routing (round-robin)"))
    table = Table(title=title, title_justify="left")
    for col in ("level", "R+W>N", "ops/s", "% of ceiling", "p50 ms", "p95 ms", "p99 ms",
                "p99.9 ms", "errors", "stale (workload)", "stale (probes)",
                "conflicting writes", "siblings per read", "CPU µs/op nodes / client"):
        table.add_column(col, justify="left" if col in ("level", "errors") else "right")
    for name, c in results.get("ceiling", {}).items():
        table.add_row(f"ceiling: {name}", "", f"{c['ops_per_s']:,.0f}", "100%",
                      _ms(c["p50_ms"]), _ms(c["p95_ms"]), _ms(c["p99_ms"]), _ms(c["p999_ms"]),
                      _errors(c["errors"]), "", "", "", "", _cpu(c), style="dim")
    for lv in results["levels"]:
        frac = lv.get("fraction_of_null_ceiling", lv.get("fraction_of_ping_ceiling"))
        stale = [_stale(lv.get(k)) for k in ("staleness", "staleness_probes")]
        table.add_row(lv["level"], f"{lv['r']}+{lv['w']}{'>' if lv['r_plus_w_gt_n'] else '<='}"
                      f"{results['cluster']['replication_factor']}",
                      f"{lv['ops_per_s']:,.0f}", _pct(frac), _ms(lv["p50_ms"]),
                      _ms(lv["p95_ms"]), _ms(lv["p99_ms"]), _ms(lv["p999_ms"]),
                      _errors(lv["errors"]), *stale, _conflicts(lv), _siblings(lv), _cpu(lv))
    return table


def _curves(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, staleness figures) for every level and source that judged reads."""
    out = []
    for lv in results["levels"]:
        for source, label in (("staleness_probes", "probes"), ("staleness", "workload")):
            st = lv.get(source)
            if st and st["reads_checked"]:
                out.append((f"{lv['level']} {label}", st))
    return out


def staleness_table(results: dict[str, Any]) -> Table | None:
    """P(stale) by time since the latest acknowledged write, per level and source."""
    curves = _curves(results)
    if not curves:
        return None
    table = Table(title="staleness: P(read misses the latest write acknowledged before it "
                  "began), by time since that write", title_justify="left")
    table.add_column("since write", justify="right")
    for label, _ in curves:
        table.add_column(label, justify="right")
    for i, bucket in enumerate(curves[0][1]["curve"]):
        hi = bucket["hi_ms"]
        label = f"{bucket['lo_ms']:g}-{hi:g} ms" if hi is not None else f">= {bucket['lo_ms']:g} ms"
        cells = []
        for _, st in curves:
            b = st["curve"][i]
            cells.append("-" if not b["reads"] else f"{b['p_stale'] * 100:.2f}% ({b['reads']:,})")
        table.add_row(label, *cells)
    table.add_row("all", *(f"{st['probability'] * 100:.3f}% ({st['reads_checked']:,})"
                           for _, st in curves), style="bold")
    return table


def fault_table(results: dict[str, Any]) -> Table | None:
    levels = [lv for lv in results["levels"] if lv.get("fault")]
    if not levels:
        return None
    kind = levels[0]["fault"].get("kind", "kill")
    title = ("fault: one node SIGKILLed at 1/3 of the run, restarted at 2/3" if kind == "kill"
             else f"fault: {kind} on one node's links from 1/3 of the run, healed at 2/3")
    table = Table(title=title, title_justify="left")
    for col in ("level", "node", "kill at s", "restart at s", "errors after kill",
                "errors stop after s", "stale reads after kill", "baseline p99 ms",
                "spike p99 ms", "min ops/s", "recovered after s"):
        table.add_column(col, justify="right")
    for lv in levels:
        f = lv["fault"]
        rec = f.get("recovery_s")
        table.add_row(lv["level"], f.get("node", ""), f"{f.get('kill_s', 0):.1f}",
                      f"{f.get('restart_s', 0):.1f}", str(f.get("errors_after_kill", "")),
                      f"{f.get('errors_stopped_s', 0):.1f}",
                      str(f.get("stale_reads_after_kill", "")),
                      _ms(f.get("baseline_p99_ms")), _ms(f.get("spike_p99_ms")),
                      "-" if f.get("min_ops_per_s_after_kill") is None
                      else f"{f['min_ops_per_s_after_kill']:,.0f}",
                      "not in this run" if rec is None else f"{rec:.1f}")
    return table


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(results))
    for extra in (staleness_table(results), fault_table(results)):
        if extra is not None:
            console.print(extra)
    m = results["machine"]
    console.print(f"[dim]{m['cpu_count']} CPUs ({m['cpu']}), load average "
                  f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; "
                  f"client and nodes share this machine.[/dim]")


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def plot(results: dict[str, Any], path: Path) -> Path:
    """Throughput per level against the ceilings, latency percentiles, staleness, timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    names = [lv["level"] for lv in levels]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    cfg = results["config"]
    fig.suptitle(f"kvstore bench: workload {cfg['workload']}, {results['cluster']['size']} "
                 f"nodes, N={results['cluster']['replication_factor']}, "
                 f"{cfg['value_size']} B values, {cfg['distribution']}, "
                 f"concurrency {cfg['concurrency']}")

    ax = axes[0][0]
    ax.bar(names, [lv["ops_per_s"] for lv in levels], color="tab:blue")
    for (name, c), style in zip(results.get("ceiling", {}).items(), ("--", ":"), strict=False):
        ax.axhline(c["ops_per_s"], color="gray", linestyle=style,
                   label=f"ceiling {name}: {c['ops_per_s']:,.0f}/s")
    ax.set_title("throughput (successful ops/s)")
    ax.set_ylabel("ops/s")
    if results.get("ceiling"):
        ax.legend(loc="upper right", fontsize=8)

    ax = axes[0][1]
    pcts = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
    width = 0.8 / len(pcts)
    for i, (key, label) in enumerate(pcts):
        xs = [j + i * width for j in range(len(levels))]
        ax.bar(xs, [lv[key] or 0 for lv in levels], width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], names)
    ax.set_yscale("log")
    ax.set_title("latency percentiles (ms, log scale)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    curves = _curves(results)
    for label, st in curves:
        xs, ys = [], []
        for b in st["curve"]:
            if b["reads"] >= MIN_CURVE_READS:
                xs.append(b["hi_ms"] if b["hi_ms"] is not None else b["lo_ms"] * 2)
                ys.append(b["p_stale"])
        ax.plot(xs, ys, marker="o", linestyle="-" if "probes" in label else "--",
                label=f"{label} ({st['probability'] * 100:.3f}% of {st['reads_checked']:,})")
    ax.set_xscale("log")
    ax.set_xlabel("time since the latest acknowledged write (ms, bucket upper edge)")
    ax.set_ylabel("P(stale read)")
    ax.set_title(f"staleness (PBS t-visibility; buckets with >= {MIN_CURVE_READS} reads)")
    if curves:
        ax.legend(fontsize=7)

    ax = axes[1][1]
    for lv in levels:
        tl = lv["timeline"]
        if len(tl) > 1 and tl[-1]["t_s"] + cfg["interval_s"] > lv["elapsed_s"]:
            tl = tl[:-1]  # the last interval is partial (in-flight operations finishing)
        ax.plot([iv["t_s"] for iv in tl], [iv["ops_per_s"] for iv in tl], label=lv["level"])
        f = lv.get("fault")
        if f and "kill_s" in f:
            ax.axvline(f["kill_s"], color="red", linestyle=":", linewidth=1)
            ax.axvline(f["restart_s"], color="green", linestyle=":", linewidth=1)
    ax.set_title("throughput over time" + (" (red: node killed, green: restarted)"
                                           if any(lv.get("fault") for lv in levels) else ""))
    ax.set_xlabel("s")
    ax.set_ylabel("ops/s")
    ax.legend(fontsize=8)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], out_dir: Path, *, png: bool = True) -> list[Path]:
    """DIR/results.json and (unless png=False) DIR/results.png."""
    out_dir = Path(out_dir)
    paths = [write_json(results, out_dir / "results.json")]
    if png:
        paths.append(plot(results, out_dir / "results.png"))
    return paths


class LiveProgress:
    """A live table of the phase running now and those finished (rich.live)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.rows: list[tuple[str, str]] = []
        self.current: tuple[str, float, str] | None = None
        self.snapshot: dict[str, Any] = {}
        self.done = 0.0
        self.notes: list[str] = []
        self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                         transient=False)
        self.started = time.monotonic()

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def _render(self) -> Group:
        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("phase", "progress", "ops", "ops/s", "p99 ms", "errors"):
            table.add_column(col, justify="left" if col in ("phase", "progress") else "right")
        for name, summary in self.rows:
            table.add_row(name, "done", *summary.split("|"))
        if self.current:
            name, total, unit = self.current
            frac = min(1.0, self.done / total) if total else 0.0
            bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
            s = self.snapshot
            table.add_row(name, f"[{bar}] {self.done:,.0f}/{total:,.0f} {unit}",
                          f"{s.get('ops', 0):,}", f"{s.get('ops_per_s', 0):,.0f}",
                          _ms(s.get("p99_ms")), str(s.get("errors", 0)))
        return Group(table, *(Text(n, style="yellow") for n in self.notes[-4:]))

    def start(self, phase: str, total: float, unit: str) -> None:
        self.current, self.done, self.snapshot = (phase, total, unit), 0.0, {}
        self.live.update(self._render())

    def update(self, phase: str, done: float, snapshot: dict[str, Any]) -> None:
        self.done, self.snapshot = done, snapshot
        self.live.update(self._render())

    def finish(self, phase: str, result: dict[str, Any]) -> None:
        errors = result.get("errors_total", 0)
        self.rows.append((phase, f"{result['ops']:,}|{result['ops_per_s']:,.0f}|"
                                 f"{_ms(result.get('p99_ms'))}|{errors}"))
        self.current = None
        self.live.update(self._render())

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.live.update(self._render())
