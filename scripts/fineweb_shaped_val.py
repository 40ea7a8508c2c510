#!/usr/bin/env python3
"""Writes a validation shard whose documents have the lengths of FineWeb's
50,000-document validation set, for projecting TTT's time on it.

TTT's cost depends on the document lengths (each chunk forwards up to L tokens
of its document), and the shared corpus's documents are longer on average
(1,092 tokens) than FineWeb's (811). The lengths here are rebuilt from the
reference's own log (records/track_10min_16mb/2026-04-10_VarLenAttn/logs/
train0.txt): its TTT prints, for batches of 64 documents sorted by length, the
shortest and longest length in the batch (the table below: batch, shortest,
longest), and its header gives the stream's 40,540,160 tokens. Lengths between
the printed batches are interpolated linearly; batches 0-6 (not printed) rise
linearly from 20 to 84 tokens; the 144 documents after batch 778 (not printed)
grow geometrically from 9,000 tokens so that the lengths sum to 40,540,160.

`--every K` keeps every K-th document of the length-sorted list (1/K of the
set, the same distribution): pgolf's time on it times K is the set's time on
one GPU, and divided by the GPU count, the projection for that many GPUs.
The tokens are real text: consecutive tokens of the --tokens shards with its
BOS tokens left out, each document starting with BOS (1).
Usage: fineweb_shaped_val.py --tokens SHARD... --every K --out SHARD
"""
import argparse
import array
import bisect
import os
import struct
import sys

TOTAL_TOKENS, DOCS, BOS = 40_540_160, 50_000, 1

# (batch, shortest, longest) as printed by the reference's TTT progress lines.
BATCHES = """
7 84 86|14 94 95|21 102 103|28 108 109|34 114 115|41 119 120|49 126 126|52 128 129|58 133 134|66 139 140
71 143 144|79 149 150|86 154 155|92 159 160|100 165 166|106 170 171|113 175 176|120 180 181|129 187 187
135 191 192|142 197 198|150 204 204|155 207 208|162 213 214|169 219 220|176 225 226|183 231 232|190 237 238
197 244 245|204 250 251|211 256 257|218 263 264|225 270 271|232 277 278|239 284 285|246 291 292|253 298 299
259 305 306|266 313 314|273 321 322|279 327 329|287 336 337|293 343 345|301 353 354|308 362 363|315 370 371
322 380 381|329 389 390|336 398 399|343 407 408|350 417 418|357 426 427|364 436 437|371 446 447|378 456 457
385 466 467|392 476 478|399 487 489|406 498 500|413 510 511|420 521 522|427 533 535|434 545 547|441 559 560
448 571 573|455 584 586|462 597 599|469 610 611|476 624 626|483 639 641|490 653 655|497 668 671|504 685 686
511 700 703|518 717 720|525 735 737|532 752 754|537 764 767|543 779 782|549 795 798|556 815 818|565 843 846
572 865 868|579 888 891|581 894 897|588 917 921|600 958 963|607 986 990|614 1016 1020|621 1046 1050
628 1078 1082|635 1111 1116|642 1144 1150|647 1171 1177|652 1198 1203|659 1239 1245|667 1288 1295
671 1316 1321|684 1407 1414|689 1450 1458|695 1504 1513|700 1552 1562|706 1617 1627|719 1793 1816
725 1900 1915|730 1995 2016|736 2140 2165|743 2355 2388|751 2689 2740|757 3033 3108|762 3431 3533
767 3963 4123|771 4701 4937|773 5203 5550|778 7961 8997
"""


def lengths():
    """The 50,000 document lengths, ascending."""
    pts = []
    for item in BATCHES.replace("\n", "|").split("|"):
        if item.strip():
            b, lo, hi = map(int, item.split())
            pts += [(64 * b, lo), (64 * b + 63, hi)]
    pts.sort()
    xs = [x for x, _ in pts]
    out = []
    for i in range(64 * 779):
        if i < xs[0]:
            out.append(20 + (84 - 20) * i / (xs[0] - 1))
            continue
        j = min(bisect.bisect_right(xs, i) - 1, len(pts) - 2)
        (x0, y0), (x1, y1) = pts[j], pts[j + 1]
        out.append(y0 + (y1 - y0) * (i - x0) / (x1 - x0))
    out = [max(2, round(v)) for v in out]
    # The rest: 9000 r^k, k < n, summing to what is left (r by bisection).
    n, left = DOCS - len(out), TOTAL_TOKENS - sum(out)
    lo_r, hi_r = 1.0, 2.0
    for _ in range(100):
        r = (lo_r + hi_r) / 2
        if sum(9000 * r**k for k in range(n)) < left:
            lo_r = r
        else:
            hi_r = r
    tail = [round(9000 * r**k) for k in range(n)]
    tail[-1] += left - sum(tail)
    return out + tail


def read_shard(path):
    with open(path, "rb") as f:
        header = struct.unpack("<256i", f.read(1024))
        if header[0] != 20240520 or header[1] != 1:
            sys.exit(f"{path}: not a token shard (magic {header[0]}, version {header[1]})")
        tokens = array.array("H")
        tokens.frombytes(f.read(2 * header[2]))
    if len(tokens) != header[2]:
        sys.exit(f"{path}: truncated ({len(tokens)} of {header[2]} tokens)")
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", required=True, nargs="+", help="shards to take the text tokens from, in order")
    ap.add_argument("--every", type=int, default=8, help="keep every K-th document by length")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lens = lengths()
    assert len(lens) == DOCS and sum(lens) == TOTAL_TOKENS
    keep = lens[a.every // 2 :: a.every]
    text = array.array("H")
    for path in a.tokens:
        text.extend(t for t in read_shard(path) if t != BOS)
    need = sum(keep) - len(keep)
    if len(text) < need:
        sys.exit(f"{' '.join(a.tokens)}: {len(text)} text tokens, {need} needed")
    out, pos = array.array("H"), 0
    for n in keep:
        out.append(BOS)
        out.extend(text[pos : pos + n - 1])
        pos += n - 1
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, len(out), *([0] * 253)))
        f.write(out.tobytes())
    os.replace(tmp, a.out)
    print(f"{a.out}: {len(keep)} documents, {len(out)} tokens, mean {sum(keep) / len(keep):.0f}, "
          f"longest {max(keep)} (1/{a.every} of {DOCS} documents, {TOTAL_TOKENS} tokens)")


if __name__ == "__main__":
    main()
