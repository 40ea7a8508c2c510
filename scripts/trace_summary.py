#!/usr/bin/env python3
"""Summarize a Kineto/Chrome trace written by `pgolf eval --profile`: GPU time
by kernel (top N), total GPU busy time and the wall span of the trace; then
where the host's time went: CUDA runtime calls (launches, copies, waits,
allocations) and ATen operators, by total time (an operator's includes the
operators it calls)."""
import json, sys, collections

def main(path, top=25):
    ev = json.load(open(path))
    ev = ev.get("traceEvents", ev)
    by = collections.defaultdict(lambda: [0.0, 0])
    t0, t1, busy = None, None, 0.0
    for e in ev:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        d = float(e.get("dur", 0))
        name = e.get("name", "?")
        by[name][0] += d
        by[name][1] += 1
        busy += d
        s = float(e["ts"])
        t0 = s if t0 is None else min(t0, s)
        t1 = s + d if t1 is None else max(t1, s + d)
    span = (t1 - t0) if t0 is not None else 0
    print(f"GPU busy {busy/1e3:.1f} ms over a span of {span/1e3:.1f} ms ({100*busy/max(span,1):.0f}%)")
    for name, (d, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{d/1e3:9.1f} ms {100*d/max(busy,1):5.1f}% {n:7d}x  {name[:110]}")
    for cat, title in (("cuda_runtime", "CUDA runtime calls"), ("cpu_op", "ATen operators")):
        host = collections.defaultdict(lambda: [0.0, 0])
        for e in ev:
            if e.get("ph") == "X" and e.get("cat") == cat:
                host[e.get("name", "?")][0] += float(e.get("dur", 0))
                host[e.get("name", "?")][1] += 1
        if host:
            print(f"host: {title} by total time")
            for name, (d, n) in sorted(host.items(), key=lambda kv: -kv[1][0])[:12]:
                print(f"{d/1e3:9.1f} ms {n:7d}x  {name[:100]}")

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
