"""`pytest --nbval-lax notebooks` runs every notebook in smoke mode: a small subset of the data, an
epoch or less, on the CPU. The kernels inherit these variables."""
import os
from pathlib import Path

os.environ["EVA_SMOKE"] = "1"
os.environ.setdefault("EVA_DATA_DIR", str(Path(__file__).resolve().parent.parent / "data"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
