#!/usr/bin/env python3
"""Summarize a Kineto/Chrome trace written by `pgolf eval --profile`: GPU time
by kernel (top N), total GPU busy time and the wall span of the trace; then
where the host's time went: CUDA runtime calls (launches, copies, waits,
allocations) and ATen operators, by total time (an operator's includes the
operators it calls). With CUDA graph launches in the trace: per launch, its host
time against its kernels' GPU time (grouped by kernel count, a proxy for the
step's shape), the kernels of the largest graph by name, and the GPU's
longest idle gaps with the host operator running during each."""
import json, sys, collections

def main(path, top=25):
    ev = json.load(open(path))
    ev = ev.get("traceEvents", ev) if isinstance(ev, dict) else ev
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
    calls = [e for e in ev if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"]
    if calls:  # single calls that block: which call, on which host thread, when
        c0 = min(float(e["ts"]) for e in calls)
        print("host: the longest CUDA runtime calls (thread, start ms, ms)")
        for e in sorted(calls, key=lambda e: -float(e.get("dur", 0)))[:20]:
            print(f"  tid {str(e.get('tid', '?')):>8}  {(float(e['ts']) - c0)/1e3:8.1f}  {float(e.get('dur', 0))/1e3:8.2f}  "
                  f"{e.get('name', '?')[:60]}")
    graph_launches(ev)

def graph_launches(ev, top=25):
    launches = sorted((float(e["ts"]), float(e.get("dur", 0)), e.get("args", {}).get("correlation"))
                      for e in ev if e.get("ph") == "X" and e.get("name") == "cudaGraphLaunch")
    if not launches:
        return
    gpu = [e for e in ev if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    by_corr = collections.defaultdict(list)
    for e in gpu:
        by_corr[e.get("args", {}).get("correlation")].append((float(e["ts"]), float(e.get("dur", 0)), e.get("name", "?")))
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
    for ts, dur, corr in launches:
        k = by_corr.get(corr, [])
        if not k:
            continue
        g = groups[len(k)]
        g[0] += 1
        g[1] += dur
        g[2] += sum(d for _, d, _ in k)
        g[3] += max(s + d for s, d, _ in k) - min(s for s, _, _ in k)
        g[4] += min(s for s, _, _ in k) - ts
    print("graph launches by kernels per graph: launches, mean host launch ms, mean GPU busy ms, mean GPU span ms, "
          "mean delay launch->first kernel ms")
    for n, (c, h, b, sp, dl) in sorted(groups.items(), key=lambda kv: -kv[1][2]):
        print(f"{n:6d} kernels {c:5d}x  host {h/c/1e3:6.2f}  busy {b/c/1e3:6.2f}  span {sp/c/1e3:6.2f}  delay {dl/c/1e3:7.2f}")
    big = max((by_corr[c] for _, _, c in launches if by_corr.get(c)), key=len)
    names = collections.defaultdict(lambda: [0, 0.0])
    for _, d, name in big:
        names[name][0] += 1
        names[name][1] += d
    print(f"the largest graph: {len(big)} kernels, {sum(d for _, d, _ in big)/1e3:.2f} ms; by count:")
    for name, (c, d) in sorted(names.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{c:6d}x {d/1e3:8.3f} ms  {name[:100]}")
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in gpu)
    gaps, end = [], spans[0][1]
    for s, t in spans[1:]:
        if s > end:
            gaps.append((s - end, end))
        end = max(end, t)
    ops = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e.get("name", "?")) for e in ev
           if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime")]
    print(f"GPU idle: {sum(g for g, _ in gaps)/1e3:.1f} ms in {len(gaps)} gaps, "
          f"{sum(g for g, _ in gaps if g > 1000)/1e3:.1f} ms in gaps over 1 ms; the longest:")
    t0 = spans[0][0]
    for g, at in sorted(gaps, reverse=True)[:15]:
        over = [(min(t, at + g) - max(s, at), n) for s, t, n in ops if s < at + g and t > at]
        host = max(over)[1] if over else "-"
        print(f"{g/1e3:8.2f} ms at {(at - t0)/1e3:8.1f} ms  host: {host[:80]}")

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
