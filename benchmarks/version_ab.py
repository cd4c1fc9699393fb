#!/usr/bin/env python
"""Before/after a change: the decomposed model of an earlier commit against today's, in one process.

The earlier package is taken from git (``git archive REF src/structconv``) into a temporary
directory and imported under another name (its imports are relative), so both versions run
side by side: the same dense weights, decomposed by each version, BatchNorm folded, timed
interleaved (``structconv._timing``: warm-up, A B A B ..., medians, fixed threads) in each
memory layout, eager and without autotune -- the hot path a refactor could slow down.  The
outputs must agree (same weights, same function).

    python benchmarks/version_ab.py --ref e7e4f7e --arch resnet18 --struct A --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import structconv as sc
from structconv._timing import fixed_threads, interleaved_times, median_ms, paired_ratio
from structconv.allocator import retain_freed_memory
from structconv.benchmark import build_models, input_size_for
from structconv.deploy import fold_batchnorm
from structconv.reporting import format_table, relative_error

ROOT = Path(__file__).resolve().parents[1]


def import_revision(ref: str, directory: Path):
    """The ``structconv`` package of git revision ``ref``, imported as ``structconv_<ref>``."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/structconv"], check=True,
                          capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(directory, filter="data")
    name = f"structconv_{ref}"
    package = directory / "src" / "structconv"
    # a package spec at its own location: its relative imports resolve inside it, and nothing
    # is added to sys.path (so today's structconv stays the one `import structconv` finds)
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py", submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def old_decomposed(old, arch: str, struct: str, state_dict: dict):
    """The earlier version's decomposed Struct model carrying ``state_dict``'s weights."""
    try:
        bench = importlib.import_module(f"{old.__name__}.benchmark")
    except ModuleNotFoundError:  # its name before the library/command split
        bench = importlib.import_module(f"{old.__name__}.bench")
    _, structured = bench.build_models(arch, struct=struct)
    structured.load_state_dict(state_dict)
    decomposed = old.decompose(structured)
    return importlib.import_module(f"{old.__name__}.deploy").fold_batchnorm(decomposed.eval())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the earlier git revision (e.g. the last commit before a refactor)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--struct", default="A")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--min-time", type=float, default=10.0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    retain_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.ref, Path(tmp))
        dense, structured = build_models(args.arch, struct=args.struct, seed=0)
        new = fold_batchnorm(sc.decompose(structured))
        before = old_decomposed(old, args.arch, args.struct, structured.state_dict())
        dense = fold_batchnorm(dense)
        chans, h, w = input_size_for(args.arch, None)
        x = torch.randn(args.batch, chans, h, w)
        fns, outs = {}, {}
        with torch.inference_mode(), fixed_threads(args.threads):
            for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
                xi = x.contiguous(memory_format=fmt)
                for label, model in (("dense", dense), (f"decomposed@{args.ref}", before), ("decomposed@HEAD", new)):
                    m = model.to(memory_format=fmt)
                    outs[(label, layout)] = m(xi)
                    fns[(label, layout)] = lambda m=m, xi=xi: m(xi)
            err = relative_error(outs[(f"decomposed@{args.ref}", "channels_last")], outs[("decomposed@HEAD", "channels_last")])
            times = interleaved_times(fns, warmup=3, repeats=args.rounds, min_time_s=args.min_time)
    rows = [("model", "layout", "median ms", "vs HEAD (per-round median)")]
    result = {"ref": args.ref, "arch": args.arch, "struct": args.struct, "batch": args.batch, "threads": args.threads,
              "torch": torch.__version__, "rel_err_old_vs_new": err, "rows": []}  # fmt: skip
    for (label, layout), t in times.items():
        ratio = paired_ratio(t, times[("decomposed@HEAD", layout)])
        rows.append((label, layout, f"{median_ms(t):.2f}", f"{ratio:.3f}"))
        result["rows"].append({"model": label, "layout": layout, "median_ms": median_ms(t), "over_head": ratio,
                               "rounds": len(t)})  # fmt: skip
    print(f"{args.arch} Struct-{args.struct}, batch {args.batch}, {args.threads} threads, {len(t)} interleaved rounds; "
          f"old and new decomposed outputs differ by {err:.1e} (relative)")  # fmt: skip
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
