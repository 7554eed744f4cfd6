#!/usr/bin/env python3
"""Mean +- population std over seeds of `zipmerge reproduce table1 --json` outputs.

usage: combine_seeds.py OUT1/table1.json OUT2/table1.json ... > table.md
Rows are matched by label; every run must hold the same rows (one endpoint group each).
"""
import json
import statistics
import sys

runs = [json.load(open(p)) for p in sys.argv[1:]]
rows = [r["rows"][0] for r in runs]
labels = [r["label"] for r in rows[0]]
n_tasks = len(rows[0][0]["accuracy"]["tasks"])
head = ["Method", "GFLOPs", "Joint"] + [f"Task {chr(65 + t)}" for t in range(n_tasks)] + ["Avg"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))


def cell(v):
    m = statistics.fmean(v)
    s = statistics.pstdev(v) if len(v) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


for i, label in enumerate(labels):
    rs = [run[i] for run in rows]
    assert all(r["label"] == label for r in rs), f"row {i} differs between runs"
    acc = [r["accuracy"] for r in rs]
    c = [label, f"{rs[0]['flops'] / 1e9:.3f}", cell([a["joint"] for a in acc])]
    c += [cell([a["tasks"][t]["accuracy"] for a in acc]) for t in range(n_tasks)]
    c.append(cell([a["avg"] for a in acc]))
    print("| " + " | ".join(c) + " |")
print(f"\n{len(runs)} seeds ({', '.join(str(r['settings']['seed']) for r in runs)}), "
      f"{runs[0]['test_images']} test images; mean ± population std.")
