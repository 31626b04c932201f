#!/usr/bin/env python3
"""Plots bench_worker results (--json files) as an SVG, without matplotlib.

    python3 bench/worker_plot.py out.svg t2.json [t1.json ...]

One panel: aggregate generated tokens/s against concurrent streams (log2 x axis),
a solid line for hearth and a dashed one for llama.cpp per input file, labelled
with the file's "label" (bench_worker --label; else its thread count).
"""
import json
import math
import sys

W, H = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50
COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, inputs = sys.argv[1], sys.argv[2:]
    series = []
    for i, path in enumerate(inputs):
        with open(path) as f:
            r = json.load(f)
        color = COLORS[i % len(COLORS)]
        rows = r["levels"]
        tag = r.get("label", f"{r['threads']} thr")
        series.append((f"hearth, {tag}", color, "",
                       [(x["streams"], x["hearth_tps"]) for x in rows]))
        llama = [(x["streams"], x["llama_cpp_tps"]) for x in rows if "llama_cpp_tps" in x]
        if llama:
            series.append((f"llama.cpp, {tag}", color, "6,4", llama))
    xs = sorted({p[0] for s in series for p in s[3]})
    ymax = max(p[1] for s in series for p in s[3]) * 1.1
    x0, x1 = math.log2(xs[0]), math.log2(xs[-1])

    def px(x):
        return LEFT + (math.log2(x) - x0) / max(x1 - x0, 1e-9) * (W - LEFT - RIGHT)

    def py(y):
        return H - BOTTOM - y / ymax * (H - TOP - BOTTOM)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2 - 60}" y="22" font-size="14">Aggregate decode throughput</text>']
    # Axes and grid.
    svg.append(f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="black"/>')
    svg.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="black"/>')
    for x in xs:
        svg.append(f'<text x="{px(x) - 6}" y="{H - BOTTOM + 18}">{x}</text>')
    steps = 5
    for k in range(steps + 1):
        y = ymax * k / steps
        svg.append(f'<line x1="{LEFT}" y1="{py(y)}" x2="{W - RIGHT}" y2="{py(y)}" stroke="#ddd"/>')
        svg.append(f'<text x="{LEFT - 45}" y="{py(y) + 4}">{y:.0f}</text>')
    svg.append(f'<text x="{(W - RIGHT) / 2}" y="{H - 12}">concurrent streams</text>')
    svg.append(f'<text x="14" y="{H / 2 + 30}" transform="rotate(-90 14 {H / 2 + 30})">tokens/s</text>')
    for i, (label, color, dash, points) in enumerate(series):
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for x, y in points:
            svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        ly = TOP + 10 + 20 * i
        svg.append(f'<line x1="{W - RIGHT + 10}" y1="{ly}" x2="{W - RIGHT + 40}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        svg.append(f'<text x="{W - RIGHT + 45}" y="{ly + 4}">{label}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
