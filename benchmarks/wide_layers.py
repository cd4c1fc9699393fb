"""Wide structured layers: time and peak memory of the basis operators (one scenario per process).

    python benchmarks/wide_layers.py linear   # StructuredLinear(8192, 256, r=4096): structure_error(), SR step
    python benchmarks/wide_layers.py conv     # StructuredConv2d(8192, 16, 1, c=4096, n=1).project_()
    python benchmarks/wide_layers.py vgg16    # structurize(vgg16, 2) + project_() + decompose(), SR step
    python benchmarks/wide_layers.py resnet50

Peak memory is the process's VmHWM (Linux), reset after the model is built, minus its RSS
then.  The address space is capped (``--limit-gb``) so a regression fails with an error
instead of waking the OOM killer.  One thread; SR steps timed with ``interleaved_times``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time


def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=["linear", "conv", "vgg16", "resnet50"])
    p.add_argument("--limit-gb", type=float, default=12.0)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    limit = int(args.limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import torch

    import structconv as sc
    from structconv._timing import interleaved_times, median_ms

    torch.set_num_threads(1)
    torch.manual_seed(0)

    def sr_step_ms(model) -> float:
        params = [m.weight for m in model.modules() if isinstance(m, sc.StructuredLayer)]

        def step():
            for w in params:
                w.grad = None
            sc.structural_regularization(model).backward()

        return median_ms(interleaved_times({"sr": step}, warmup=1, repeats=args.repeats)["sr"])

    if args.scenario in ("linear", "conv"):
        if args.scenario == "linear":
            layer = sc.StructuredLinear(8192, 256, r=4096)
        else:
            layer = sc.StructuredConv2d(8192, 16, 1, c=4096, n=1)
        gc.collect()
        base = _status_gib("VmRSS")
        _reset_peak()
        t0 = time.perf_counter()
        if args.scenario == "linear":
            err = layer.structure_error()
        else:
            layer.project_()
            err = layer.structure_error()
        took = time.perf_counter() - t0
        what = "structure_error()" if args.scenario == "linear" else "project_()"
        print(f"{layer}: first {what} {took:.3f} s, peak {_status_gib('VmHWM') - base:.3f} GiB above, error {err:.3g}")
        print(f"  SR forward+backward: {sr_step_ms(layer):.2f} ms/step")
        return

    import torchvision

    model = getattr(torchvision.models, args.scenario)(num_classes=1000)
    gc.collect()
    base = _status_gib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    structured = sc.structurize(model, 2.0)
    t1 = time.perf_counter()
    for m in structured.modules():
        if isinstance(m, sc.StructuredLayer):
            m.project_()
    t2 = time.perf_counter()
    decomposed = sc.decompose(structured)
    t3 = time.perf_counter()
    peak = _status_gib("VmHWM") - base
    print(f"{args.scenario}: structurize {t1 - t0:.2f} s, project_ {t2 - t1:.2f} s, decompose {t3 - t2:.2f} s, "
          f"total {t3 - t0:.2f} s; peak {peak:.3f} GiB above the model ({base:.2f} GiB RSS)")  # fmt: skip
    del decomposed, model
    gc.collect()
    print(f"  SR forward+backward: {sr_step_ms(structured):.2f} ms/step")


if __name__ == "__main__":
    main()
