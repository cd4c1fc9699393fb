"""Wide structured layers: time and peak memory of the basis operators (one scenario per process).

    python benchmarks/wide_layers.py linear   # StructuredLinear(8192, 256, r=4096): structure_error(), SR step
    python benchmarks/wide_layers.py conv     # StructuredConv2d(8192, 16, 1, c=4096, n=1).project_()
    python benchmarks/wide_layers.py vgg16    # structurize(vgg16, 2) + project_() + decompose(), SR share of a step
    python benchmarks/wide_layers.py resnet50

Peak memory is the process's VmHWM (Linux), reset after the model is built, minus its RSS
then.  The address space is capped (``--limit-gb``) so a regression fails with an error
instead of waking the OOM killer.  One thread; SR steps timed with ``interleaved_times``.  For
the torchvision models the SR term's share of a training step is the median SR forward+backward
over the median task step (forward + cross-entropy backward of the structured model on a
``--batch`` of 224x224 images) plus SR, both timed interleaved in this one process.
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
    p.add_argument("--batch", type=int, default=8, help="images per task step (torchvision models)")
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
    params = [m.weight for m in structured.modules() if isinstance(m, sc.StructuredLayer)]
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, 1000, (args.batch,))

    def task_step():
        structured.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(structured(images), labels).backward()

    def sr_step():
        for w in params:
            w.grad = None
        sc.structural_regularization(structured).backward()

    times = interleaved_times({"task": task_step, "sr": sr_step}, warmup=1, repeats=args.repeats)
    task, sr = median_ms(times["task"]), median_ms(times["sr"])
    print(f"  task step (batch {args.batch}, 224x224): {task:.1f} ms; SR forward+backward: {sr:.1f} ms; "
          f"SR share of a step {100 * sr / (task + sr):.1f} %")


if __name__ == "__main__":
    main()
