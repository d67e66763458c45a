"""Whether XLA's CPU options make the training step's convolutions faster (issue 31's step speed).

A stack of four 3-D convolutions (3x3x3, `--width` channels in and out, leaky ReLU), its forward pass
and its gradient, timed in a fresh process for each value of `XLA_FLAGS` below (best of 3 after a
warm-up call): the default, oneDNN (`--xla_cpu_use_onednn`, alone and with
`--xla_cpu_experimental_onednn_custom_call`), XNNPACK (`--xla_cpu_use_xnnpack`) and the runtime
before thunks (`--xla_cpu_use_thunk_runtime=false`).
The value of the forward pass is printed too: a flag that changed the arithmetic would show there.

    python bench/xla_cpu_flags.py --size 48 --width 16 --json bench/results/xla_cpu_flags_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import provenance

FLAGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_thunk_runtime=false",
)


def child(size: int, width: int) -> dict:
    import jax

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (1, size, size, size, width))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, width, width))

    def stack(w, x):
        for _ in range(4):
            x = jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
            x = jax.nn.leaky_relu(x, 0.2)
        return (x**2).mean()

    out = {}
    for name, fn in (("forward", jax.jit(stack)), ("gradient", jax.jit(jax.grad(stack)))):
        jax.block_until_ready(fn(w, x))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fn(w, x))
            times.append(time.perf_counter() - start)
        out[f"{name}_seconds"] = min(times)
    out["value"] = float(jax.jit(stack)(w, x))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--json", help="result file (a markdown table is written beside it, .md)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.size, args.width)))
        return
    if not args.json:
        parser.error("--json is required")
    prov = provenance.collect()
    rows = []
    for flags in FLAGS:
        env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
        argv = [sys.executable, __file__, "--child", "--size", str(args.size), "--width", str(args.width)]
        row = {"xla_flags": flags or "(default)"}
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=900)
        except subprocess.TimeoutExpired:
            row |= {"exit": None, "error": "no answer in 900 s"}
        else:
            lines = done.stdout.strip().splitlines()
            row["exit"] = done.returncode
            if done.returncode == 0 and lines:
                row |= json.loads(lines[-1])
            else:
                row["exit"] = done.returncode or 1
                row["error"] = (done.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
        rows.append(row)
        print(row, flush=True)
    report = {"provenance": provenance.finish(prov), "size": args.size, "width": args.width, "runs": rows}
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = ["| XLA_FLAGS | forward s | gradient s | value |", "|---|---:|---:|---:|"]
    for r in rows:
        if r["exit"] == 0:
            lines.append(
                f"| `{r['xla_flags']}` | {r['forward_seconds']:.3f} | {r['gradient_seconds']:.3f} | {r['value']:.6g} |"
            )
        else:
            lines.append(f"| `{r['xla_flags']}` | failed: {r['error']} | | |")
    with open(os.path.splitext(args.json)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(
            f"# XLA's CPU options and 3-D convolutions (bench/xla_cpu_flags.py), {args.size}^3 x {args.width}\n\n"
            + provenance.markdown(report["provenance"])
            + "\n"
            + "\n".join(lines)
            + "\n"
        )


if __name__ == "__main__":
    main()
