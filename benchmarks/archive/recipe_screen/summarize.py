"""Tables (mean ± std over seeds) from results/<group>/*.json.

    python benchmarks/archive/recipe_screen/summarize.py GROUP [--csv out.csv]
"""
import csv
import json
import re
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

RES = Path(__file__).resolve().parent / "results"


def ms(vals, fmt="{:.2f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(st.mean(vals))} ± {fmt.format(st.stdev(vals))}"


def load(group):
    runs = defaultdict(list)
    for p in sorted((RES / group).glob("*.json")):
        m = re.match(r"(.*)_s(\d+)$", p.stem)
        runs[m.group(1)].append(json.loads(p.read_text()))
    return runs


def rows(group):
    out = []
    for name, rs in load(group).items():
        f = [r["final"] for r in rs]
        types = sorted({t for x in f for t in x.get("error_by_type_max", {})})
        row = {"config": name, "seeds": len(rs), "steps": rs[0]["cfg"]["steps"],
               "acc": ms([x["acc"] for x in f]),
               "acc_decomposed": ms([x.get("acc_decomposed") for x in f]),
               "decomp_cost": ms([x.get("decomp_cost") for x in f]),
               "acc_dec_bnrecal": ms([x.get("acc_decomposed_bnrecal") for x in f]),
               "err_max": ms([x.get("error_max") for x in f], "{:.1e}"),
               "init_acc": ms([r.get("init", {}).get("acc") for r in rs]),
               "s_per_step": ms([r["sec_per_step"] for r in rs], "{:.3f}")}
        for t in types:
            row[f"err[{t}]"] = ms([x["error_by_type_max"].get(t) for x in f], "{:.1e}")
        out.append(row)
    return out


if __name__ == "__main__":
    group = sys.argv[1]
    rs = rows(group)
    keys = []
    for r in rs:
        keys += [k for k in r if k not in keys]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rs:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if "--csv" in sys.argv:
        with open(sys.argv[sys.argv.index("--csv") + 1], "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(rs)
