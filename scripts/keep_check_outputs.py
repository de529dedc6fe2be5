"""Strip a notebook executed in smoke mode down to what may be committed without a full run.

Keeps the outputs of cells marked `# NBVAL_CHECK_OUTPUT` (parameter counts, summaries: the same on
every machine, so nbval compares them) and clears every other output, which would be smoke results.
For notebooks that have not had a full run yet (03 and 04 need a GPU: scripts/full_runs.py --gpu).

    EVA_SMOKE=1 jupyter nbconvert --to notebook --execute notebooks/01_cnn_vs_resnet.ipynb --output /tmp/01.ipynb
    python scripts/keep_check_outputs.py /tmp/01.ipynb notebooks/01_cnn_vs_resnet.ipynb
"""
import sys

import nbformat


def main(src: str, dst: str) -> None:
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # progress-bar widget state: not part of a committed notebook
    nbformat.write(nb, dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])
