"""How long a ~1,000-job sweep takes to check and plan, in-process and from the shell.

Builds a gpt2-small spec in a temp folder (a 12-layer transcoder sweep and an SAE sweep,
~1,000 jobs), then times:

  compile   load + validate + check + compile, in-process (best of several runs)
  plan      `tcspec plan SPEC` as a subprocess (interpreter start and imports included)
  dry-run   `snakemake -n` on the spec (Snakemake builds the whole DAG)

against the targets 2 s, 2 s and 5 s. Nothing is downloaded; gpt2's dims come from the
offline catalog. Usage: python bench/compile.py [--repeat 5] [--skip-snakemake]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tcspec.plan import compile_plan
from tcspec.spec.loader import load_spec

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"compile": 2.0, "plan": 2.0, "dry-run": 5.0}


def sweep_spec(n_l1: int = 40, n_sae: int = 12) -> str:
    """A gpt2 spec: tc at all 12 layers with 2 widths x n_l1 L1 values, an SAE at 2 layers."""
    l1s = ", ".join(f"{1e-5 * (i + 1):.1e}" for i in range(n_l1))
    sae_l1s = ", ".join(f"{2e-5 * (i + 1):.1e}" for i in range(n_sae))
    return f"""\
experiment: bench-sweep
seed: 0
model: {{kind: pretrained, name: gpt2}}
data: {{kind: hub, name: Skylion007/openwebtext, context: 128, train_tokens: 60_000_000, eval_tokens: 3_276_800}}
layers: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
dictionaries:
  tc:
    kind: transcoder
    expansion: [16, 32]
    l1: [{l1s}]
  sae:
    kind: sae
    layers: [6, 8]
    expansion: 32
    l1: [{sae_l1s}]
"""


def wall(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its stdout). CPU time is the steadier figure
    on a shared machine: wall time there includes waiting for other processes."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return seconds, cpu, run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="in-process compile runs")
    parser.add_argument("--skip-snakemake", action="store_true")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent

    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "sweep.yaml"
        spec_file.write_text(sweep_spec())

        times, cpu_times = [], []
        for _ in range(args.repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            plan = compile_plan(load_spec(spec_file))
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        n_jobs = len(plan.tasks)
        results = {"compile": (min(times), min(cpu_times))}

        seconds, cpu, out = wall([str(bin_dir / "tcspec"), "plan", str(spec_file)], ROOT)
        assert f"{n_jobs} jobs" in out.splitlines()[0]
        results["plan"] = (seconds, cpu)

        if not args.skip_snakemake:
            cmd = [str(bin_dir / "snakemake"), "-n", "--nolock", "--quiet", "all"]
            cmd += ["--config", f"spec={spec_file}", f"results={Path(tmp) / 'results'}"]
            seconds, cpu, _ = wall(cmd, ROOT)
            results["dry-run"] = (seconds, cpu)

    print(f"spec: {n_jobs} jobs (gpt2, 12 layers; tc 2 x 40 sweep points, sae 12 at 2 layers)")
    print(f"in-process compile runs: {', '.join(f'{t:.3f}' for t in times)} s")
    print(
        f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    print(f"{'step':<9} {'wall s':>7} {'CPU s':>7} {'target':>7}  verdict (on wall time)")
    for name, (seconds, cpu) in results.items():
        verdict = "ok" if seconds < TARGETS[name] else "OVER"
        print(f"{name:<9} {seconds:7.2f} {cpu:7.2f} {TARGETS[name]:7.1f}  {verdict}")


if __name__ == "__main__":
    main()
