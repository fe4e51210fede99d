"""The deployment notes' claims against what the benchmarks measured, in one table.

Run: python -m bench.summary (after bench.model, bench.batching, bench.load, bench.coldstart)

Reads bench/results/{model,batching,load,coldstart}.json (a missing file leaves its rows out),
prints the table and the pass/fail of the three targets (embedding >= 10x dlib per face at batch
32, flush at 32 >= 2x the jobs/s of flush at 1, CPU cost per verification <= 200 ms, a tenth of
the notes' 2 s per sample), and writes bench/results/summary.json.
"""

import json

from bench.stats import RESULTS_DIR, write_results

NOTES_S_PER_SAMPLE_CPU = 2.0  # "about 2-3 s for 3 samples on a CPU", taken at its most generous


def _read(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def build(model: dict | None, batching: dict | None, load: dict | None, cold: dict | None) -> dict:
    """{rows: [[claim, notes, measured, command]], targets: {name: {value, limit, ok}}}."""
    rows, targets = [], {}
    if model:
        # The worker's default detector is the ported CNN; older results hold only the HOG figure.
        per_image = model.get("pipeline_cnn_ms_per_image_batch_32", model["pipeline_ms_per_image_batch_32"])
        dlib_image = sum(model["stages_ms_per_face"]["dlib"].values())
        rows += [
            [
                "3 samples (an enrollment), CPU",
                "about 2-3 s",
                f"{3 * per_image / 1000:.3f} s (dlib's pipeline: {3 * dlib_image / 1000:.3f} s)",
                "python -m bench.model",
            ],
            [
                "per sample, GPU",
                "0.2-0.4 s",
                f"no GPU measured; CPU: {per_image / 1000:.4f} s",
                "python -m bench.model",
            ],
            ["4 samples with batching", "0.6 s", f"{4 * per_image / 1000:.3f} s on the CPU", "python -m bench.model"],
            [
                "descriptor per face, batch 32",
                "-",
                f"{model['port_ms_per_face']['32']:.2f} ms (dlib: {model['dlib_ms_per_face']:.1f} ms, "
                f"{model['ratio_dlib_over_port']['32']:.1f}x)",
                "python -m bench.model",
            ],
        ]
        targets["embed_vs_dlib_at_32"] = {
            "value": model["ratio_dlib_over_port"]["32"],
            "limit": 10.0,
            "ok": model["ratio_dlib_over_port"]["32"] >= 10.0,
        }
        targets["cpu_ms_per_verification"] = {
            "value": per_image,
            "limit": 100 * NOTES_S_PER_SAMPLE_CPU,
            "ok": per_image <= 100 * NOTES_S_PER_SAMPLE_CPU,
        }
    if batching:
        jobs = batching["jobs_per_s"]
        if "1" in jobs and "32" in jobs:
            speedup = jobs["32"] / jobs["1"] if jobs["1"] else float("inf")
            rows.append(
                [
                    "verifications/s through the stack, flush 1 -> 32",
                    "-",
                    f"{jobs['1']:.1f} -> {jobs['32']:.1f} ({speedup:.2f}x)",
                    "python -m bench.batching",
                ]
            )
            targets["batch_32_over_1"] = {"value": speedup, "limit": 2.0, "ok": speedup >= 2.0}
            stack_ms = 1000 / jobs["32"] if jobs["32"] else float("inf")
            rows.append(
                [
                    "CPU cost per verification, whole stack, flush 32",
                    "2 s per sample",
                    f"{stack_ms:.0f} ms",
                    "python -m bench.batching",
                ]
            )
            targets["stack_ms_per_verification"] = {
                "value": stack_ms,
                "limit": 100 * NOTES_S_PER_SAMPLE_CPU,
                "ok": stack_ms <= 100 * NOTES_S_PER_SAMPLE_CPU,
            }
    if load:
        best = load["max_rate_p95_under_1s"]
        rows += [
            [
                "load with completion p95 < 1 s, one CPU worker",
                "10+ concurrent users",
                "none tried" if best is None else f"{best:g} verifications/s",
                "python -m bench.load",
            ],
            [
                "API enqueue rate, single submits / batches of 100",
                "-",
                f"{load['enqueue_jobs_per_s']:.0f} / {load.get('batch_enqueue_jobs_per_s', float('nan')):.0f} jobs/s",
                "python -m bench.load --enqueue-only",
            ],
            [
                "peak RSS worker / API under load",
                "-",
                f"{load['peak_rss_mib']['worker']:.0f} / {load['peak_rss_mib']['api']:.0f} MiB",
                "python -m bench.load",
            ],
        ]
    if cold:
        first = cold["first_batch_s"]
        rows.append(
            [
                "worker start -> first batch done",
                "-",
                f"{first['cached']:.1f} s cached, {first['not_cached']:.1f} s not",
                "python -m bench.coldstart",
            ]
        )
    machine = next((r["machine"] for r in (model, batching, load, cold) if r and "machine" in r), {})
    return {"rows": rows, "targets": targets, "machine": machine}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    summary = build(_read("model"), _read("batching"), _read("load"), _read("coldstart"))
    console = Console()
    table = Table(title="the deployment notes against this run")
    for column in ("claim", "notes", "measured", "command"):
        table.add_column(column, overflow="fold")
    for row in summary["rows"]:
        table.add_row(*row)
    console.print(table)
    m = summary["machine"]
    if m:
        console.print(f"machine: {m.get('processor')}, {m.get('cpu_count')} CPUs, device {m.get('device')}")
    for name, target in summary["targets"].items():
        mark = "[green]met[/]" if target["ok"] else "[red]NOT met[/]"
        console.print(f"{name}: {target['value']:.2f} (limit {target['limit']:g}) {mark}")
    out = write_results(RESULTS_DIR / "summary.json", summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
