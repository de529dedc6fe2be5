"""Run a notebook headless once per seed (papermill) and collect its RESULTS_JSON numbers.

    python scripts/run_seeds.py notebooks/04_custom_resnet.ipynb --seeds 0 1 2 --out results/04.json
    python scripts/run_seeds.py notebooks/04_custom_resnet.ipynb --seeds 0 1 -p DATA_DIR data

Writes {"runs": [...], "test_acc_mean": ..., "test_acc_std": ...} to --out and prints a summary; the
executed notebooks are kept beside it (04-seed0.ipynb, ...).
"""
import argparse
import json
import statistics
from pathlib import Path

import papermill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra notebook parameter (value parsed as JSON if it can be)")
    args = parser.parse_args()
    extra = {}
    for name, value in args.p:
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        stem = f"{args.out.stem}-seed{seed}"
        result = (args.out.parent / f"{stem}.json").resolve()
        papermill.execute_notebook(str(args.notebook), str(args.out.parent / f"{stem}.ipynb"),
                                   parameters={**extra, "SEED": seed, "RESULTS_JSON": str(result)},
                                   cwd=str(args.notebook.parent))
        runs.append(json.loads(result.read_text()))
        print(f"seed {seed}: {runs[-1]['test_acc']:.2f}% in {runs[-1]['train_seconds']} s")
    accs = [r["test_acc"] for r in runs]
    summary = {"runs": runs, "test_acc_mean": statistics.mean(accs),
               "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"{args.notebook.name}: {summary['test_acc_mean']:.2f} ± {summary['test_acc_std']:.2f}% "
          f"over {len(accs)} seeds on {runs[0]['device']}")


if __name__ == "__main__":
    main()
