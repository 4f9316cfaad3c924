"""`kv repair`: drive anti-entropy on every node with a progress bar and a summary."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kvstore.client import AsyncClient, KVError

FIELDS = ("ranges_compared", "leaves_differing", "keys_sent", "keys_received",
          "bytes_transferred", "tombstones_purged")


async def run_repair(client: AsyncClient, nodes: list[str], *,
                     show_progress: bool) -> dict[str, Any]:
    """Repair from each node in turn; returns the summed summary plus per-node detail."""
    totals: dict[str, Any] = dict.fromkeys(FIELDS, 0)
    totals["seconds"] = 0.0
    per_node: list[dict[str, Any]] = []
    errors: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not show_progress, transient=False) as bar:
        overall = bar.add_task("repair", total=None)
        done = 0
        for endpoint in nodes:
            task = bar.add_task(f"  {endpoint}", total=None)
            final = None
            try:
                async for progress in client.repair(endpoint):
                    bar.update(task, total=progress.total, completed=progress.done,
                               description=f"  {progress.node} ({endpoint})"
                               + (f" ↔ {progress.peer}" if progress.peer else ""))
                    if progress.finished:
                        final = progress
            except KVError as exc:
                errors.append(f"{endpoint}: {exc.message}")
                continue
            if final is None:
                errors.append(f"{endpoint}: the repair stream ended early")
                continue
            if final.error:
                errors.append(f"{final.node}: {final.error}")
            summary = final.summary
            detail = {"node": final.node, "seconds": summary.seconds,
                      **{f: getattr(summary, f) for f in FIELDS}}
            per_node.append(detail)
            for f in FIELDS:
                totals[f] += detail[f]
            totals["seconds"] += summary.seconds
            done += 1
            bar.update(overall, total=len(nodes), completed=done)
    totals["seconds"] = round(totals["seconds"], 3)
    return {**totals, "nodes": per_node, "errors": errors}
