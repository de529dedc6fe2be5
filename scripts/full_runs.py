"""Full runs of the suite: executed notebooks, figures, run records and the README's results table.

    python scripts/full_runs.py --cpu                    # notebooks 01 and 02 (about 2 h on 2 CPU cores)
    python scripts/full_runs.py --gpu                    # 03, 04 with seeds 0 1 2, the speed benchmark
    python scripts/full_runs.py --only 04 benchmark      # some of them (one device-tool call each)
    python scripts/full_runs.py --gpu --smoke --out runs/smoke   # smoke-sized, on a CPU: what CI runs
    python scripts/full_runs.py --only 04 --seeds 0 1 2 --budget 150 # 04 on a CPU, in 150-minute stretches

Every run keeps checkpoints (and 04's LR range test) in checkpoints/NN-seedS/ (ignored by git) and
continues from them when run again. With --budget (minutes of training and 04's range test;
loading and figures come on top) training stops at the last epoch that fits, the script exits with status
75 ("run me again"), and the same command continues the run; delete checkpoints/NN-seedS/ to start
that run afresh. Papermill executes into runs/full/ first, so an unfinished stretch never
overwrites a committed notebook. A seed that finished keeps its record in
checkpoints/NN-seedS/finished.json and is never executed again, so a run of several seeds that
stopped in a later seed continues there (and results/NN.json already holds the finished seeds).

A full run overwrites notebooks/NN_*.ipynb with the executed notebook (seed 0's; other seeds' go to
runs/), writes figures to images/, each run's record to results/raw/, their summary with the command
to results/NN.json (results/benchmark.json) and regenerates the results tables (README.md, docs/)
(scripts/results_table.py). A smoke run writes all of that under --out and touches nothing
tracked. The data is found as everywhere else: $EVA_DATA_DIR, else the nearest data/ folder.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"01": "01_cnn_vs_resnet", "02": "02_resnet_under_500k",
             "03": "03_resnet18_layernorm", "04": "04_custom_resnet"}
SEEDS = {"04": [0, 1, 2]}  # mean ± std over seeds where the spread is the point
CPU_JOBS, GPU_JOBS = ["01", "02"], ["03", "04", "benchmark"]
IPYKERNEL_FILE = re.compile(r"\S*ipykernel_\d+[/\\]\d+\.py")  # where a cell's code runs from
UNFINISHED = 75  # exit status when the budget ran out: run the same command again (EX_TEMPFAIL)


class Unfinished(Exception):
    """A notebook stopped at its time budget; its checkpoint is kept for the next invocation."""


def clean(path: Path) -> None:
    """Tidy an executed notebook: show papermill's injected-parameters cell as markdown
    (``show_parameters``), drop its timing metadata, the progress bars (tqdm's notebook widgets,
    whose state is not saved, so a reader would see "model not found" where they were; the epoch
    lines stay), and the machine's path to the repository in printed text (data and checkpoint
    paths print relative to it)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    show_parameters(nb)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
            for o in cell.outputs:  # "image folder /home/x/repo/data": the repository's own path
                if "text" in o:  # and a warning's "/tmp/ipykernel_123/456.py:8": the cell's
                    o.text = IPYKERNEL_FILE.sub("cell", o.text.replace(f"{ROOT}/", ""))
    nbformat.write(nb, path)


SHOWN = "run-parameters"  # the tag of the markdown cell that shows a committed run's parameters


def show_parameters(nb: nbformat.NotebookNode) -> None:
    """Turn papermill's injected-parameters cell into markdown that shows what the committed run
    was given (seed, record, checkpoint folder, figure folder, the last stretch's budget), and drop
    an earlier run's. Never code: Run all in the committed notebook would continue that run from
    its checkpoint folder, under its budget, writing over its figures."""
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if SHOWN in tags:
            continue  # the run this notebook held before
        if cell.cell_type == "code" and "injected-parameters" in tags:
            given = [line for line in cell.source.splitlines()
                     if line.strip() and not line.startswith("#")]
            cell = nbformat.v4.new_markdown_cell(
                "The committed run below was given these parameters by `scripts/full_runs.py` "
                "(shown, not run: Run all starts a new run from the settings above):\n"
                "```python\n" + "\n".join(given) + "\n```", metadata={"tags": [SHOWN]})
        cells.append(cell)
    nb.cells = cells


def run_notebook(key: str, out: Path, smoke: bool, command: str, seeds: list[int] | None,
                 deadline: float | None) -> None:
    name = NOTEBOOKS[key]
    runs = []
    for i, seed in enumerate(seeds or SEEDS.get(key, [0])):
        first = i == 0  # the committed notebook and figures
        finished = out / "checkpoints" / f"{key}-seed{seed}" / "finished.json"
        if finished.exists():  # an earlier stretch finished this seed: never execute it again
            print(f"== {name}, seed {seed}: finished earlier (delete {finished.parent} to "
                  "train it afresh)", flush=True)
            runs += json.loads(finished.read_text())["runs"]
            continue
        executed = (out / "notebooks" / f"{name}.ipynb" if first
                    else out / "runs" / f"{name}-seed{seed}.ipynb")  # runs/ is not committed
        executed.parent.mkdir(parents=True, exist_ok=True)
        scratch = out / "runs" / "full" / f"{name}-seed{seed}.ipynb"  # until the run completes
        scratch.parent.mkdir(parents=True, exist_ok=True)
        record = out / "results" / "raw" / f"{key}-seed{seed}.json"  # the notebook writes it
        params = {"SEED": seed, "RESULTS_JSON": os.path.relpath(record, ROOT),
                  "CHECKPOINT_DIR": os.path.relpath(out / "checkpoints" / f"{key}-seed{seed}", ROOT)}
        if deadline is not None:
            params["TIME_BUDGET"] = round(max(deadline - time.time(), 1.0))  # seconds
        if first:  # figures from the committed run only
            params["FIGURE_DIR"] = os.path.relpath(out / "images", ROOT)
        print(f"== {name}, seed {seed} -> {executed}", flush=True)
        try:
            papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(scratch),
                                       parameters=params, cwd=str(ROOT), log_output=True,
                                       progress_bar=False, kernel_name="python3")
        except papermill.PapermillExecutionError as exc:
            if exc.ename == "BudgetSpent":
                raise Unfinished(f"{name}, seed {seed}: {exc.evalue}") from None
            raise
        clean(scratch)
        os.replace(scratch, executed)
        finished.parent.mkdir(parents=True, exist_ok=True)
        finished.write_text(record.read_text())
        runs += json.loads(record.read_text())["runs"]
        # after every seed, so that a run stopped in a later seed shows the finished ones
        save(out / "results" / f"{key}.json", {"notebook": key, "command": command,
                                               "smoke": smoke, "date": today(), "runs": runs})


def run_benchmark(out: Path, smoke: bool, command: str) -> None:
    target = out / "results" / "benchmark.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = out / "results" / "raw" / "benchmark.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--out", str(raw),
                    *(["--smoke"] if smoke else [])], check=True, cwd=ROOT)
    runs = json.loads(raw.read_text())
    save(target, {"notebook": "benchmark", "command": command, "smoke": smoke, "date": today(),
                  "runs": runs})


def save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def today() -> str:
    return datetime.date.today().isoformat()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help=f"run {', '.join(CPU_JOBS)}")
    p.add_argument("--gpu", action="store_true", help=f"run {', '.join(GPU_JOBS)}")
    p.add_argument("--only", nargs="+", default=[], choices=[*NOTEBOOKS, "benchmark"])
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds to run (default: 0; 0 1 2 for 04)")
    p.add_argument("--budget", type=float, default=None,
                   help="minutes of training and 04's range test in this invocation (loading "
                        "data and figures come on top); then stop at an epoch's end, exit "
                        f"{UNFINISHED}, and continue when run again (default: no limit)")
    p.add_argument("--smoke", action="store_true", help="smoke-sized runs (EVA_SMOKE=1)")
    p.add_argument("--out", type=Path, default=None,
                   help="where everything goes (default: the repository; required with --smoke)")
    args = p.parse_args()
    jobs = args.only + (CPU_JOBS if args.cpu else []) + (GPU_JOBS if args.gpu else [])
    if not jobs:
        p.error("say what to run: --cpu, --gpu or --only ...")
    if args.smoke and args.out is None:
        p.error("--smoke writes only under --out, e.g. --out runs/smoke")
    if args.gpu and not args.smoke:
        import torch
        if not torch.cuda.is_available():
            p.error("--gpu needs a CUDA device; this machine has none (use --smoke to test it)")
    out = (args.out or ROOT).resolve()
    deadline = time.time() + 60 * args.budget if args.budget is not None else None
    command = "python scripts/full_runs.py " + " ".join(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notebooks' output, live
    if args.smoke:
        os.environ["EVA_SMOKE"] = "1"
    for job in dict.fromkeys(jobs):  # in order, once each
        try:
            if job == "benchmark":
                run_benchmark(out, args.smoke, command)
            else:
                run_notebook(job, out, args.smoke, command, args.seeds, deadline)
        except Unfinished as exc:
            print(f"\nUnfinished: {exc}\nRun the same command again to continue.", flush=True)
            sys.exit(UNFINISHED)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"),
                    "--results", str(out / "results"), "--root", str(out)],
                   check=True)


if __name__ == "__main__":
    main()
