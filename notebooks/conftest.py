"""`pytest --nbval-lax notebooks` runs every notebook in smoke mode: a small subset of the data, two
epochs, on the CPU. The kernels inherit these variables."""
import os
from pathlib import Path

os.environ["EVA_SMOKE"] = "1"
os.environ.setdefault("EVA_DATA_DIR", str(Path(__file__).resolve().parent.parent / "data"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def pytest_terminal_summary(terminalreporter):
    """Say loudly, at the end of the run, when the notebooks had no CIFAR-10 and ran on stand-in
    data: the tests still pass then, so the reader must be told."""
    root = Path(os.environ["EVA_DATA_DIR"])
    if (root / "train").is_dir() or (root / "cifar-10-batches-py").is_dir():
        terminalreporter.write_line(f"notebooks: CIFAR-10 from {root}")
        return
    terminalreporter.write_sep("!", "notebooks ran on SYNTHETIC stand-in data", yellow=True)
    terminalreporter.write_line(
        f"No CIFAR-10 under {root}, so the notebook tests used a small synthetic data set. To test "
        "on the real images, put CIFAR-10 in data/ as docs/data.md says, or set "
        "EVA_DATA_DIR.", yellow=True)

