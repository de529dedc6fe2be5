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
        "on the real images: mkdir -p data && tar xJf ../shared/data/cifar10-jpeg.tar.xz -C data "
        "(see the README's Data section), or set EVA_DATA_DIR.", yellow=True)


def pytest_collection_modifyitems(config, items):
    """Leave out the cell papermill injected into a committed full run (tagged `injected-parameters`):
    it names that run's checkpoint, figure and record paths, so executing it here would write a smoke
    run into them (and resume the next test from it). Papermill drops the cell the same way when it runs
    a notebook with new parameters; the smoke run starts from the notebook's own settings."""
    injected = [item for item in items
                if "injected-parameters" in getattr(item, "cell", {}).get("metadata", {}).get("tags", [])]
    if injected:
        config.hook.pytest_deselected(items=injected)
        items[:] = [item for item in items if item not in injected]
