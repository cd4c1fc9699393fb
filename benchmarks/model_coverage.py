"""Which models structurize and decompose exactly: every torchvision classifier and a timm sample.

For each model, in a child process of its own (address space capped, one thread): build it
with random weights in float64 at the smallest input size it accepts, find the layers that are
unsafe to replace (:func:`structconv.usage.find_unsafe_layers`), then convert it twice --
"today" (``plan(model, 2.0)`` as it is) and "detected" (the unsafe layers left dense through
``overrides``); each conversion is ``structurize``, ``project_()`` of every structured layer,
output, ``decompose``, output again, and the relative error between the two outputs must be
<= 1e-8.  When no unsafe layer is in the plan the two conversions are the same and run once.
Also records the fx (static) answer and whether it names the same layers, times, peak memory,
the exception with its stage, and for models with RepVGG-style branches whether timm's
``reparameterize_model`` still works on the decomposed model.

Cost controls, all recorded in the table: by default layers wider than ``--max-width 1024``
input channels per group stay dense (the projections are linear in the width, but a float64
check of many wide layers still costs minutes per model on a shared core), and models are
built by ``cheap_model`` (no own init, every run of repeated shape-preserving blocks cut to its
first two).  The committed tables predate the linear-time operators, hence their footnotes on
VGG's 25088-wide Linear; ``tests/test_coverage.py`` checks every width.
``--full --max-width 0`` checks the real thing.

    python benchmarks/model_coverage.py --jobs 2             # everything, results/ JSON + markdown
    python benchmarks/model_coverage.py --only resnet18 swin_t
    python benchmarks/model_coverage.py --full --max-width 0 --only convnext_tiny
    python benchmarks/model_coverage.py --worker torchvision:swin_t   # one model, JSON on stdout

The checks themselves are :mod:`structconv.coverage` (``tests/test_coverage.py`` uses them too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from structconv.coverage import TOL, all_models, cheap_model, check_model, failure_site, smallest_input

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------
# Sweep driver
# ------------------------------------------------------------------------------------------
def worker(spec: str, mem_gb: float, full: bool = False, max_width: int | None = None) -> dict:
    import resource

    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    source, name = spec.split(":", 1)
    rec: dict = {"source": source, "name": name, "mode": "full" if full else "shrunk"}
    t = time.perf_counter()
    try:
        torch.manual_seed(0)
        if full:
            model, size = smallest_input(source, name)
        else:
            model, size, info = cheap_model(source, name, max_params=0)
            rec.update(full_params=info["params"], removed_blocks=info["removed_blocks"])
        rec["t_build"] = time.perf_counter() - t
        rec["max_width"] = max_width
        rec.update(check_model(model, size, inplace=True, max_width=max_width))
    except BaseException as err:  # noqa: BLE001 - MemoryError included
        rec["failure"] = f"{type(err).__name__}: {str(err)[:300]}"
        rec["where"] = failure_site(err)
    rec["t_total"] = time.perf_counter() - t
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rec


def _run_child(spec: str, mem_gb: float, timeout: float, full: bool, max_width: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--mem-gb", str(mem_gb)]
    cmd += (["--full"] if full else []) + ["--max-width", str(max_width)]
    source, name = spec.split(":", 1)
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"source": source, "name": name, "failure": f"timeout after {timeout:.0f} s", "t_total": timeout}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr or "").strip().splitlines()[-3:]
    return {"source": source, "name": name, "failure": f"child exited {out.returncode}: {' | '.join(tail)[:300]}",
            "t_total": time.perf_counter() - t}  # fmt: skip


def _status(res: dict | None) -> str:
    if not res:
        return "-"
    if res.get("status") == "error":
        return f"error ({res.get('stage')})"
    if res.get("status") == "mismatch":
        return f"MISMATCH {res['rel_err']:.1e}"
    return res.get("status", "-")


def summarize(records: list[dict]) -> dict:
    out = {}
    for source in ("torchvision", "timm"):
        recs = [r for r in records if r["source"] == source]
        ok = lambda res: bool(res) and res.get("status") == "ok"  # noqa: E731
        out[source] = {
            "models": len(recs),
            "build_failures": sum("failure" in r for r in recs),
            "today_ok": sum(ok(r.get("today")) for r in recs),
            "detected_ok": sum(ok(r.get("detected")) for r in recs),
            "detection_changed_plan": sum(r.get("unsafe_in_plan", 0) > 0 for r in recs),
            "static_traceable": sum(r.get("static", {}).get("traceable", False) for r in recs),
            "static_agrees": sum(r.get("static", {}).get("agrees", False) for r in recs),
        }
    return out


def markdown(records: list[dict], summary: dict) -> str:
    lines = ["# Model coverage: structurize -> project_ -> decompose, float64, ratio 2", ""]
    for source, s in summary.items():
        lines.append(
            f"- **{source}**: {s['models']} models; exact today {s['today_ok']}, exact with detection "
            f"{s['detected_ok']}; detection changed the plan of {s['detection_changed_plan']}; build failures "
            f"{s['build_failures']}; fx-traceable {s['static_traceable']}, static == dynamic {s['static_agrees']}"
        )
    lines += ["", "`‡` layers wider than --max-width left dense (a cheap sweep's trim).", ""]
    head = ["source", "model", "px", "params M checked (full)", "layers", "structured", "left dense (reason: n)", "today",
            "with detection", "rel err", "static", "time s", "peak MB"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if "failure" in r:
            cells = [r["source"], r["name"], "", "", "", "", "", f"FAIL: {r['failure'][:80]}", "", "", "", "",
                     f"{r.get('peak_rss_mb', 0):.0f}"]  # fmt: skip
        else:
            det = r["detected"]
            st = r.get("static", {})
            static = "n/a" if not st.get("traceable") else ("=" if st["agrees"] else "≠")
            dense = ", ".join(f"{k}: {v}" for k, v in sorted(r["dense_by_reason"].items()))
            name = r["name"] + (" ‡" if r.get("width_filtered") else "")
            err = det.get("rel_err")
            full = f" ({r['full_params'] / 1e6:.1f})" if r.get("full_params", r["params"]) != r["params"] else ""
            cells = [r["source"], name, str(r["input"]), f"{r['params'] / 1e6:.1f}{full}", str(r["candidates"]),
                     str(det.get("structured", 0)), dense, _status(r.get("today")), _status(det),
                     "" if err is None else f"{err:.1e}", static, f"{r['t_total']:.1f}", f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    fails = [r for r in records if "failure" in r or any((r.get(k) or {}).get("status") in ("error", "mismatch")
                                                         for k in ("today", "detected", "reparameterize"))]  # fmt: skip
    if fails:
        lines += ["", "## Failures", ""]
        for r in fails:
            for key in ("today", "detected", "reparameterize"):
                res = r.get(key) or {}
                if res.get("status") in ("error", "mismatch") and not res.get("same_as_detected"):
                    lines.append(f"- {r['source']} `{r['name']}` [{key}] {res.get('stage', '')}: "
                                 f"{res.get('exception', res.get('rel_err'))} ({res.get('where', '')})")  # fmt: skip
            if "failure" in r:
                lines.append(f"- {r['source']} `{r['name']}` [build]: {r['failure']} ({r.get('where', '')})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="model names (either library)")
    p.add_argument("--source", choices=["torchvision", "timm"], help="one library only")
    p.add_argument("--jobs", type=int, default=1, help="children at once (each single-threaded)")
    p.add_argument("--mem-gb", type=float, default=12.0, help="address-space cap per child")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default=str(HERE / "results" / "model_coverage"))
    p.add_argument("--full", action="store_true",
                   help="build each model with its own init and all its blocks (default: cheap_model with every "
                        "repeated shape-preserving block past the second dropped, max_params=0)")  # fmt: skip
    p.add_argument("--max-width", type=int, default=1024,
                   help="leave layers with more input channels per group / in_features dense (0: no limit)")
    p.add_argument("--resume", action="store_true", help="keep the models already in the JSON, run the others")
    p.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rewrite:
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(data["models"], data["summary"]))
        return 0
    if args.worker:
        width = args.max_width if args.max_width > 0 else None
        print(json.dumps(worker(args.worker, args.mem_gb, args.full, width), default=str), flush=True)
        return 0
    specs = all_models()
    if args.source:
        specs = [s for s in specs if s[0] == args.source]
    if args.only:
        specs = [s for s in specs if s[1] in args.only]
    from concurrent.futures import ThreadPoolExecutor

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = {}
    if out.with_suffix(".json").exists() and (args.only or args.source or args.resume):
        for r in json.loads(out.with_suffix(".json").read_text())["models"]:
            existing[f"{r['source']}:{r['name']}"] = r
    if args.resume:
        specs = [s for s in specs if f"{s[0]}:{s[1]}" not in existing]
    order = {f"{s}:{n}": i for i, (s, n) in enumerate(all_models())}
    meta = {"torch": torch.__version__, "tolerance": TOL, "ratio": 2.0, "mode": "full" if args.full else "shrunk",
            "max_width": args.max_width or None}
    try:
        import timm
        import torchvision

        meta.update(torchvision=torchvision.__version__, timm=timm.__version__)
    except ImportError:
        pass

    def write() -> dict:
        final = sorted(existing.values(), key=lambda r: order.get(f"{r['source']}:{r['name']}", 1 << 30))
        summary = summarize(final)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "models": final},
                                                       indent=1, default=str))  # fmt: skip
        out.with_suffix(".md").write_text(markdown(final, summary))
        return summary

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {f"{s}:{n}": pool.submit(_run_child, f"{s}:{n}", args.mem_gb, args.timeout, args.full, args.max_width)
                   for s, n in specs}  # fmt: skip
        for spec, fut in futures.items():
            r = fut.result()
            existing[spec] = r
            det = r.get("detected", {})
            print(f"{spec:45s} today={_status(r.get('today')):22s} detected={_status(det):22s} "
                  f"{r.get('failure', '')[:60]} {r.get('t_total', 0):7.1f}s {r.get('peak_rss_mb', 0):6.0f}MB",
                  flush=True)  # fmt: skip
            write()
    print(json.dumps(write(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
