#!/usr/bin/env python3
"""Summarize `pgolf ttt --timeline FILE.tsv`: where the device waited for the
host and how long each step shape kept it busy. A step starts on the device
once the previous step is done and the host has issued it (for a replay, when
its launch returns), so per step: wait = max(0, host_end - previous
device_end) and device time = device_end - max(previous device_end, host_end)
(for eager steps and captures, whose kernels start while the host still
issues them, the split is approximate). Graphs captured ahead after a step
(graphs_captured > 0 on a replay or eager row) delay the next step's issue:
its wait counts as capture."""
import collections, csv, sys

def main(path):
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    if not rows:
        print("timeline: no steps"); return
    prev = 0.0
    ahead = False  # the previous step was followed by captures ahead (its mark came before them)
    wait_by = collections.defaultdict(float)
    shapes = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for r in rows:
        hb, he, de = float(r["host_begin_ms"]), float(r["host_end_ms"]), float(r["device_end_ms"])
        wait = max(0.0, he - prev)
        wait_by["capture" if ahead else r["run"]] += wait
        ahead = r["run"] != "capture" and int(r.get("graphs_captured", 0)) > 0
        key = f'{r["rows"]:>3}x{r["width"]:<5} {"upd" if r["update"] == "1" else "   "}'
        s = shapes[key]
        s[0] += 1
        s[1] += de - max(prev, he)
        s[2] += he - hb
        s[3] += wait
        prev = de
    end = float(rows[-1]["device_end_ms"])
    waits = sum(wait_by.values())
    print(f"timeline: {len(rows)} steps, {end:.1f} ms to the last step's end; device waited for the host "
          f"{waits:.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in sorted(wait_by.items())) + ")")
    caps = [r for r in rows if int(r.get("graphs_captured", r["run"] == "capture"))]
    if caps and "capture_ms" in rows[0]:
        n = sum(int(r.get("graphs_captured", 1)) for r in caps)
        total = lambda k: sum(float(r[k]) for r in caps)
        ahead = sum(1 for r in caps if r["run"] != "capture")
        print(f"captures: {n} graphs during {len(caps)} steps ({ahead} after a launch), host ms each: capture "
              f"{total('capture_ms') / n:.1f}, instantiate {total('instantiate_ms') / n:.1f}; replays' launch "
              f"{sum(float(r['launch_ms']) for r in rows if r['run'] != 'eager'):.1f} ms in all")
    print("shape              steps  device ms/step  host ms/step  waits ms (total)")
    for key, (n, dev, host, w) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
        print(f"{key}  {n:5d}  {dev/n:14.2f}  {host/n:12.2f}  {w:8.1f}")
    if "reserved_mib" in rows[0]:
        mib = [float(r["reserved_mib"]) for r in rows]
        after = [f'{r["rows"]}x{r["width"]}:{float(r["reserved_mib"]):.0f}' for r in caps]
        print(f"device memory held by the allocator: max {max(mib):.0f} MiB, at the end {mib[-1]:.0f} MiB; "
              f"after each capture (MiB): " + " ".join(after))

if __name__ == "__main__":
    main(sys.argv[1])
