"""Colab set-up cell, copyable package, notebook hygiene."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def test_four_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_setup_cell_installs_the_matching_release(path, monkeypatch, capsys):
    setup = source(cells(path)[0])
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, **kw: calls.append(cmd))
    exec(compile(setup, "setup", "exec"), {})  # outside Colab: nothing runs
    assert calls == [] and "Not in Colab" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    namespace = {}
    exec(compile(setup, "setup", "exec"), namespace)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert not any(arg.split("=")[0].split("<")[0] in {"torch", "torchvision"} for arg in cmd)
    import eva_utils
    assert cmd[-1] == f"eva-utils @ git+{namespace['REPO']}@v{eva_utils.__version__}"  # not main
    if not __import__("torch").cuda.is_available():  # a CPU runtime is named, with the way out
        assert "no GPU" in capsys.readouterr().out
    # the repository's address is the one written in pyproject.toml and used by the README badges
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert namespace["REPO"] == urls["Repository"]
    assert f"colab.research.google.com/github/{urls['Repository'].split('github.com/')[1]}" \
           f"/blob/main/notebooks/{path.name}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_parameters_cell_and_no_absolute_paths(path):
    code = cells(path)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1
    assert any("NBVAL_CHECK_OUTPUT" in source(c) for c in code)
    for c in code:
        assert "/work/" not in source(c) and "/home/" not in source(c)
        assert ".cuda()" not in source(c)


STUDENT = """
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import eva_utils as eva

assert eva.__file__.startswith(sys.argv[1]), eva.__file__
print("heavy imports at import:", sorted({"pytorch_grad_cam", "sklearn", "torchvision"} & set(sys.modules)))
eva.seed_everything(0)  # as the README's example does: the same weights and batches every run
rng = np.random.default_rng(0)
shapes = ["circle", "cross", "ring", "square", "star"]
for split, n in (("train", 24), ("test", 8)):
    for k, name in enumerate(shapes):
        folder = Path("shapes", split, name)
        folder.mkdir(parents=True)
        for i in range(n):  # a class is a colour, plus noise: learnable in two epochs
            pixels = rng.normal(40 + 40 * k, 30, (48, 48, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")

data = eva.load_image_folder("shapes")
train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 12,
                         train=True, augment=eva.Augment(pad=4, flip=True, rotate=5, cutout=8))
test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 20, train=False)
model = eva.SmallResNet(num_classes=len(data.classes))
print(eva.summary(model, input_size=(1, 3, *data.image_size)), file=open("summary.txt", "w"))
found = eva.lr_range_test(model, train, start_lr=1e-4, end_lr=1, num_iter=12)
eva.plot_lr_finder(found, path="figures/lr.png")
config = eva.TrainConfig(epochs=2, lr=found.minimum, schedule="onecycle", tta=True)
history = eva.fit(model, train, test, config, progress=False)
loss, acc = eva.evaluate(model, test, tta=True)
predictions = eva.predict(model, test, data.classes, tta=True)
assert abs(predictions.accuracy - acc) < 1e-9 and abs(acc - history.test_acc[-1]) < 1e-9
cm = eva.confusion_matrix(predictions)
assert tuple(cm.shape) == (5, 5) and int(cm.sum()) == 40
wrong = eva.misclassified(predictions)
eva.plot_history(history, path="figures/curves.png")
eva.plot_augmentations(train, path="figures/augmentations.png")
eva.plot_confusion(predictions, path="figures/confusion.png")
eva.plot_misclassified(wrong, data.mean, data.std, path="figures/misclassified.png")
eva.plot_gradcam(model, wrong if len(wrong) else predictions, eva.gradcam_layers(model)[1:3],
                 data.mean, data.std, path="figures/gradcam.png")
print(data.classes, data.image_size, len(history), sorted(p.name for p in Path("figures").iterdir()))
print("optional extras imported:", sorted({"gradio", "lightning", "safetensors"} & set(sys.modules)))

# A second assignment: grayscale pictures of mixed sizes, refused without image_size, then resized.
for split in ("train", "test"):
    for k, name in enumerate(("cat", "dog", "owl")):
        Path("pets", split, name).mkdir(parents=True)
        for i, size in enumerate([(30, 50), (64, 64), (41, 37), (40, 40)]):
            pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(f"pets/{split}/{name}/{i}.jpg")
try:
    eva.load_image_folder("pets")
except eva.DataError as err:
    print("refused:", "image_size=" in str(err))
pets = eva.load_image_folder("pets", image_size=40)
train = eva.TensorLoader(pets.train_images, pets.train_labels, pets.mean, pets.std, 4, train=True)
test = eva.TensorLoader(pets.test_images, pets.test_labels, pets.mean, pets.std, 4, train=False)
model = eva.SmallResNet(num_classes=3)
eva.fit(model, train, test, eva.TrainConfig(epochs=1, schedule="constant"), progress=False)
p = eva.predict(model, test, pets.classes)
print(pets.train_images.shape, pets.classes, tuple(eva.confusion_matrix(p).shape))
"""


def copied_package(tmp_path):
    shutil.copytree(ROOT / "eva_utils", tmp_path / "eva_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "EVA_SMOKE"}}


def test_student_workflow_with_the_copied_package(tmp_path):
    """eva_utils copied alone into an empty folder: a 5-class folder of 48x48 images, loaded,
    summarised, LR-range-tested, trained, evaluated, analysed and drawn, in a fresh interpreter;
    then a 3-class folder of grayscale pictures of mixed sizes, refused until image_size is given."""
    env = copied_package(tmp_path)
    out = subprocess.run([sys.executable, "-c", STUDENT, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "('circle', 'cross', 'ring', 'square', 'star') (48, 48) 2" in out.stdout
    assert "optional extras imported: []" in out.stdout  # the app and Lightning only when asked for
    # grad-cam (with its scikit-learn) and torchvision load on first use, not at import
    assert "heavy imports at import: []" in out.stdout
    assert "['augmentations.png', 'confusion.png', 'curves.png', 'gradcam.png', 'lr.png', " \
           "'misclassified.png']" in out.stdout
    assert "Total params" in (tmp_path / "summary.txt").read_text()
    assert "refused: True" in out.stdout
    assert "(12, 40, 40, 3) ('cat', 'dog', 'owl') (3, 3)" in out.stdout


EXTRA_MODULES = ("app.py", "classifier.py", "deploy.py", "serve.py", "streaming.py", "lightning.py")
CORE_ALONE = """
import sys
import eva_utils as eva
data = eva.synthetic_data(train=200, test=100, seed=1)
train, test = (eva.TensorLoader(getattr(data, f"{s}_images"), getattr(data, f"{s}_labels"),
                                data.mean, data.std, 20, train=s == "train") for s in ("train", "test"))
config = eva.TrainConfig(epochs=2, lr=0.01, checkpoint_dir=sys.argv[1])
found = eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=10, verbose=False)
history = eva.fit(eva.PlainCNN(num_classes=10), train, test, config, resume=True, time_budget=600,
                  progress=False)
print("trained", len(history), "epochs; extras imported:",
      sorted(m for m in sys.modules if m.removeprefix("eva_utils.") + ".py" in {EXTRAS}))
"""


def test_the_core_trains_without_the_extras(tmp_path):
    """The layout's promise: the teaching core and machinery/ alone (the web app, its export and
    serving, streaming and Lightning left out) import, sweep, and train with checkpoints and a
    budget."""
    env = copied_package(tmp_path)
    for name in EXTRA_MODULES:
        (tmp_path / "eva_utils" / name).unlink()
    code = CORE_ALONE.replace("{EXTRAS}", repr(set(EXTRA_MODULES)))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained 2 epochs; extras imported: []" in out.stdout
    assert (tmp_path / "run" / "last.pt").exists()

def test_package_imports_only_declared_dependencies():
    """Every third-party import in eva_utils is a dependency declared in pyproject.toml."""
    import ast
    declared = {"torch", "torchvision", "numpy", "PIL", "albumentations", "cv2", "matplotlib",
                "pytorch_grad_cam", "torch_lr_finder", "torchinfo", "tqdm"}
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for name in ("pillow", "opencv", "grad-cam", "torch-lr-finder", "torchinfo", "albumentations"):
        assert name in deps
    # The optional extras, each imported only by its own module and only when used.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    optional = {"app.py": {"gradio"}, "classifier.py": {"safetensors"}, "lightning.py": {"lightning"}}
    assert {"gradio", "safetensors"} <= {d.split(">")[0].split("=")[0] for d in extras["app"]}
    assert any(d.startswith("lightning") for d in extras["lightning"])
    for path in (ROOT / "eva_utils").rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
        allowed = declared | optional.get(path.name, set())
        assert found - set(sys.stdlib_module_names) <= allowed, (path.name, found - allowed)


def test_version():
    import eva_utils
    assert eva_utils.__version__.count(".") == 2


def test_gpu_runbook_smoke(tmp_path):
    """The full-run script as the README's GPU command uses it (--gpu is 03, 04 and the benchmark;
    03 is left out here, nbval runs it), smoke-sized on the CPU with one seed, so it cannot rot:
    executed notebooks (the run's parameters shown), figures, run records and a results table, all
    under --out; nothing tracked is touched. 04 and the benchmark run side by side, a process and
    a thread each (two cores). The seed loop and the budget's exit are tested without training
    below; a notebook stopped by its budget and resumed is test_resume's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs
    assert full_runs.GPU_JOBS == ["03", "04", "benchmark"]
    env = {**os.environ, "EVA_DATA_DIR": str(ROOT / "data"), "OMP_NUM_THREADS": "1"}
    script = [sys.executable, str(ROOT / "scripts" / "full_runs.py")]
    bench = tmp_path / "benchmark"
    jobs = [subprocess.Popen([*script, *args], env=env, cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for args in (["--only", "04", "--smoke", "--seeds", "0", "--out", str(tmp_path)],
                         ["--only", "benchmark", "--smoke", "--out", str(bench)])]
    for job in jobs:
        log, _ = job.communicate(timeout=900)
        assert job.returncode == 0, log[-3000:]
    assert json.loads((bench / "results" / "benchmark.json").read_text())["runs"]
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == ["04_custom_resnet.ipynb"]
    record = json.loads((tmp_path / "results" / "04.json").read_text())
    assert [r["seed"] for r in record["runs"]] == [0] and record["smoke"]
    assert len(record["runs"][0]["seconds_per_epoch"]) == 2
    assert record["command"] == f"python scripts/full_runs.py --only 04 --smoke --seeds 0 --out {tmp_path}"
    assert {"04_gradcam.png", "04_lr_range_test.png"} <= {p.name for p in (tmp_path / "images").iterdir()}
    table = (tmp_path / "README.md").read_text()
    assert "(SMOKE: not a result)" in table
    assert "| 01 |  | CNN 74.2 %, ResNet 73.8 %, 25 | not run yet |" in table  # rows without a run say so
    executed = json.loads((tmp_path / "notebooks" / "04_custom_resnet.ipynb").read_text())
    assert "widgets" not in executed["metadata"] and "papermill" not in executed["metadata"]
    tags = [c["metadata"].get("tags", []) for c in executed["cells"]]
    assert not any("injected-parameters" in t for t in tags)  # shown as markdown, never run
    assert sum("run-parameters" in t for t in tags) == 1


def test_full_runs_exits_75_when_the_budget_is_spent(tmp_path, monkeypatch, capsys):
    """--budget: the notebook gets the seconds left as TIME_BUDGET; when its fit stops there
    (BudgetSpent) the script says to run the same command again and exits 75, writing no
    executed notebook, record or table (papermill stands in for the notebook)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs
    import papermill
    given = {}

    def stopped(src, dst, parameters, **kwargs):
        given.update(parameters)
        raise papermill.PapermillExecutionError(8, 5, "eva.fit(...)", "BudgetSpent",
                                                "Stopped after epoch 1 of 2.", [])
    monkeypatch.setattr(full_runs.papermill, "execute_notebook", stopped)
    monkeypatch.setattr(sys, "argv", ["full_runs.py", "--only", "04", "--smoke", "--seeds", "0",
                                      "--budget", "2", "--out", str(tmp_path)])
    monkeypatch.setenv("EVA_SMOKE", "1")  # main sets it for the notebooks
    with pytest.raises(SystemExit) as exited:
        full_runs.main()
    assert exited.value.code == full_runs.UNFINISHED == 75
    assert isinstance(given["TIME_BUDGET"], int) and 60 <= given["TIME_BUDGET"] <= 120
    printed = capsys.readouterr().out
    assert "Stopped after epoch 1 of 2" in printed and "Run the same command again" in printed
    assert not list((tmp_path / "notebooks").glob("*.ipynb")) and not (tmp_path / "README.md").exists()
    assert not (tmp_path / "results" / "04.json").exists()


def test_full_runs_trains_every_seed_in_order(tmp_path, monkeypatch):
    """04's default seeds 0, 1, 2: seed 0's notebook is the committed one, the others go to runs/,
    and the summary record holds every seed's run (papermill stands in for the training)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs

    def execute(src, dst, parameters, **kwargs):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SEED = 0")])
        nbformat.write(nb, dst)
        record = ROOT / parameters["RESULTS_JSON"]
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"runs": [{"seed": parameters["SEED"]}]}))
    monkeypatch.setattr(full_runs.papermill, "execute_notebook", execute)
    full_runs.run_notebook("04", tmp_path, smoke=True, command="cmd", seeds=None, deadline=None)
    record = json.loads((tmp_path / "results" / "04.json").read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2]
    assert (tmp_path / "notebooks" / "04_custom_resnet.ipynb").exists()
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.ipynb")) == \
        ["04_custom_resnet-seed1.ipynb", "04_custom_resnet-seed2.ipynb"]


def test_full_runs_continues_a_stopped_seed_and_never_reruns_a_finished_one(tmp_path, monkeypatch):
    """Seeds 0, 1, 2 in stretches: the budget ends in seed 1. The next invocation executes seeds
    1 and 2 only (seed 0's committed notebook stays as it was), and the summary holds all three;
    an invocation after that executes nothing."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs
    import papermill
    executed = []

    def execute(src, dst, parameters, **kwargs):
        executed.append(parameters["SEED"])
        if parameters["SEED"] == 1 and executed.count(1) == 1:
            raise papermill.PapermillExecutionError(8, 5, "eva.fit(...)", "BudgetSpent",
                                                    "Stopped after epoch 3 of 24.", [])
        nbformat.write(nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(f"SEED = {parameters['SEED']}")]), dst)
        record = ROOT / parameters["RESULTS_JSON"]
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"runs": [{"seed": parameters["SEED"]}]}))
    monkeypatch.setattr(full_runs.papermill, "execute_notebook", execute)
    summary = tmp_path / "results" / "04.json"
    with pytest.raises(full_runs.Unfinished, match="seed 1: Stopped after epoch 3 of 24"):
        full_runs.run_notebook("04", tmp_path, smoke=True, command="cmd", seeds=None, deadline=None)
    assert [r["seed"] for r in json.loads(summary.read_text())["runs"]] == [0]
    committed = tmp_path / "notebooks" / "04_custom_resnet.ipynb"
    stamp = committed.stat().st_mtime_ns
    full_runs.run_notebook("04", tmp_path, smoke=True, command="cmd", seeds=None, deadline=None)
    assert executed == [0, 1, 1, 2]
    assert [r["seed"] for r in json.loads(summary.read_text())["runs"]] == [0, 1, 2]
    assert committed.stat().st_mtime_ns == stamp
    full_runs.run_notebook("04", tmp_path, smoke=True, command="cmd", seeds=None, deadline=None)
    assert executed == [0, 1, 1, 2]


def test_cpu_precision_learning_goes_on_in_stretches(tmp_path, monkeypatch):
    """The float32-against-bfloat16 comparison takes hours: a run that would not fit in the budget
    is not started, every finished run is kept, and the same call again trains only the rest;
    kept runs under other settings do not count."""
    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cpu_precision
    import eva_utils as eva
    monkeypatch.setattr(cpu_precision, "MODELS", {"Linear": lambda: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))})
    # float32 measures fast, bfloat16 so slow that it never fits in a budget of a minute
    monkeypatch.setattr(cpu_precision, "images_per_second",
                        lambda model, layout, dtype, steps: 1e-3 if dtype else 1e4)
    trained = []
    real_fit = eva.fit
    monkeypatch.setattr(eva, "fit", lambda model, train, test, cfg, **kw: (
        trained.append(cfg.amp), real_fit(model, train, test, cfg, **kw))[1])
    data = eva.synthetic_data(train=1280, test=32, seed=0)  # 10 steps of 128 an epoch
    progress = tmp_path / "checkpoints" / "learn.json"

    def learn(epochs=1, budget_s=None):
        return cpu_precision.learning(data, ["Linear"], [0], epochs, 0.05, progress, budget_s)

    assert learn(budget_s=60) is None and trained == [False]
    assert [r["precision"] for r in json.loads(progress.read_text())["runs"]] == ["float32"]
    runs = learn()
    assert trained == [False, True]  # float32 kept, bfloat16 trained
    assert [(r["model"], r["seed"], r["precision"]) for r in runs] == [("Linear", 0, "float32"),
                                                                       ("Linear", 0, "bfloat16")]
    assert learn() == runs and trained == [False, True]
    learn(epochs=2)  # other settings: nothing kept counts
    assert trained == [False, True, False, True]


def test_results_table_shows_each_seed_its_mean_and_where_each_ran(tmp_path):
    """04 over three seeds: each seed's accuracy and their mean; the target is met only if every
    seed reaches it; a seed trained on another machine is named with its device and arithmetic."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import results_table

    def run(seed, plain, device="cpu: A", precision="bfloat16"):
        return {"model": "CustomResNet", "seed": seed, "epochs": 24, "parameters": 6573120,
                "test_acc": plain, "test_acc_tta": plain + 0.7, "train_seconds": 100.0 * (seed + 1),
                "seconds_per_epoch": [1.0], "device": device, "precision": precision, "layout": "NHWC"}
    record = {"notebook": "04", "command": "cmd", "date": "2026-12-05", "smoke": False,
              "runs": [run(0, 90.36), run(1, 90.5), run(2, 89.9, "cpu: B", "float32")]}
    (tmp_path / "04.json").write_text(json.dumps(record))
    row = [line for line in results_table.rows(tmp_path) if line.startswith("| 04 |")]
    assert row == ["| 04 | CustomResNet | 92.30 % (24 x 65 s), 24 | 90.36 / 90.50 / 89.90 % (seeds 0 / 1 / 2), "
                   "mean 90.25 ± 0.31 % | 91.06 / 91.20 / 90.60 % (seeds 0 / 1 / 2), mean 90.95 ± 0.31 % | "
                   "90.0 % (003's target): missed (2 of 3 seeds reach it) | "
                   f"{results_table.RECIPES['04']} | 24 | 6,573,120 | 200 s (mean) | "
                   "cpu: A (seeds 0, 1); cpu: B (seed 2) | bfloat16, NHWC (seeds 0, 1); float32, NHWC (seed 2) "
                   "| `cmd` (2026-12-05) |"]
    record["runs"] = record["runs"][:1]
    (tmp_path / "04.json").write_text(json.dumps(record))
    row = [line for line in results_table.rows(tmp_path) if line.startswith("| 04 |")]
    assert (f"| 90.36 % | 91.06 % | 90.0 % (003's target): met | {results_table.RECIPES['04']} | 24 | "
            "6,573,120 | 100 s | cpu: A | bfloat16, NHWC |") in row[0]
    # a run in stretches, stopped between the seeds its command names: the row says which are missing
    record["command"] = "python scripts/full_runs.py --only 04 --seeds 0 1 2 --budget 150"
    (tmp_path / "04.json").write_text(json.dumps(record))
    row = [line for line in results_table.rows(tmp_path) if line.startswith("| 04 |")]
    assert ("| 90.36 % (seed 0; seeds 1, 2 not finished yet) | 91.06 % | "
            "90.0 % (003's target): met (1 of 1 finished seeds reach it) |") in row[0]
    record["runs"] = [run(0, 90.36), run(1, 90.5)]
    (tmp_path / "04.json").write_text(json.dumps(record))
    row = [line for line in results_table.rows(tmp_path) if line.startswith("| 04 |")]
    assert ("mean 90.43 ± 0.10 % (seed 2 not finished yet) | 91.06 / 91.20 % (seeds 0 / 1), mean 91.13 ± 0.10 % "
            "| 90.0 % (003's target): met (2 of 2 finished seeds reach it) |") in row[0]


def test_precision_comparison_shows_each_models_means_beside_the_seed_spread():
    sys.path.insert(0, str(ROOT / "scripts"))
    import results_table

    def run(model, seed, precision, acc):
        return {"model": model, "seed": seed, "precision": precision, "held_out_acc": acc}
    runs = [run("A", 0, "float32", 70.0), run("A", 0, "bfloat16", 70.5),
            run("A", 1, "float32", 71.0), run("A", 1, "bfloat16", 70.1),
            run("B", 0, "float32", 60.0), run("B", 0, "bfloat16", 61.0)]  # B: one seed, no spread
    assert results_table.precision_means(runs) == [
        "- A, mean over 2 and 2 seeds: float32 70.50 %, bfloat16 70.30 % (-0.20 points; the seeds "
        "of one precision differ by up to 1.00)"]


def test_speed_summary_names_the_range_and_every_model_the_default_is_not_fastest_for():
    sys.path.insert(0, str(ROOT / "scripts"))
    import results_table

    def row(model, *speeds, default="bfloat16 NHWC"):
        names = ["float32 NCHW", "float32 NHWC", "bfloat16 NCHW", "bfloat16 NHWC"]
        return {"model": model, "images_per_s": dict(zip(names, speeds)), "default": default}
    fast = [row("A", 100, 110, 150, 300), row("B", 50, 60, 70, 80)]
    assert results_table.speed_summary(fast) == (
        "The default runs 1.60x (B) to 3.00x (A) the speed of float32 NCHW. "
        "It is the fastest of the variants for every model.")
    beaten = fast + [row("C", 60, 70, 166, 142)]
    assert results_table.speed_summary(beaten).endswith(
        "for every model but C, where bfloat16 NCHW ran 17 % faster.")


def test_readme_results_table_is_generated():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_hygiene(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"] and "papermill" not in nb["metadata"]
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"
              and c["execution_count"] is not None]
    assert counts == sorted(counts)  # run top to bottom, in order
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            text = json.dumps(output)
            assert "application/vnd.jupyter.widget" not in text
            assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text
            assert "SMOKE" not in text and "SYNTHETIC" not in text  # smoke output is not a result


# Words that mark a sentence as about how the project ran its jobs (machines, arithmetic, stretches,
# commits), not about ResNets: the reader's business only in the README.
LOGISTICS = ("papermill", "smoke", "stretch", "commit", "session", "epyc", "xeon", "amx", "processor",
             "bfloat16", "float32", "float16", "precision", "earlier run", "not measured",
             "full_runs", "budget", "machine", "our run", "this run", "nhwc", "channels-last")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_teaches_more_than_it_logs(path):
    """Half of each notebook's prose was once about how the project ran its jobs. The sentences of
    its markdown that name machines, arithmetic, stretches or commits stay under 15 % of its words
    (the one line that says where the outputs come from is among them)."""
    total, logistics = 0, []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "markdown" or "run-parameters" in cell["metadata"].get("tags", []):
            continue
        text = re.sub(r"```.*?```", "", source(cell), flags=re.S)  # drawings of a network
        for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
            total += len(sentence.split())
            if any(word in sentence.lower() for word in LOGISTICS):
                logistics.append(sentence)
    share = sum(len(s.split()) for s in logistics) / total
    assert share <= 0.15, (f"{path.name}: {share:.0%} of its markdown is about how it was run:\n"
                           + "\n".join(logistics))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_ends_with_exercises_its_quick_preset_shrinks(path):
    """Every notebook ends with "Try this": 4 to 6 exercises, each meant for the QUICK preset,
    which must shrink the run (fewer epochs on fewer images) without the test's smoke mode."""
    nb = json.loads(path.read_text())["cells"]
    last = source(nb[-1])
    assert nb[-1]["cell_type"] == "markdown" and last.startswith("## Try this"), path.name
    assert 4 <= len(re.findall(r"^\d+\. \*\*", last, re.M)) <= 6, path.name
    assert "QUICK = True" in last
    code = [source(c) for c in cells(path)]
    settings = next(c for c in code if re.search(r"^QUICK = False ", c, re.M))
    preset = next(c for c in code if c.startswith("if QUICK:"))
    full, quick = {}, {"eva": types.SimpleNamespace(smoke_mode=lambda: False)}
    exec(settings, full)
    exec(settings.replace("QUICK = False", "QUICK = True") + "\n" + preset, quick)
    epochs = full["EPOCHS"] or 60  # 02: None is its fast recipe's 60
    assert quick["EPOCHS"] < epochs and quick["TRAIN_SIZE"] <= 5000, path.name


def test_committed_runs_show_their_parameters_and_never_execute_them():
    """Run all in a committed notebook starts a new run: papermill's injected cell (the committed
    run's checkpoint folder, budget, figure and record paths) would continue that run, under its
    budget, writing over its figures. So a committed notebook shows those parameters as markdown,
    right after its own parameters cell, and holds no injected code cell."""
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())["cells"]
        tags = [c["metadata"].get("tags", []) for c in nb]
        assert not any("injected-parameters" in t for t in tags), path.name
        shown = [i for i, t in enumerate(tags) if "run-parameters" in t]
        assert shown == [tags.index(["parameters"]) + 1], path.name
        cell = nb[shown[0]]
        assert cell["cell_type"] == "markdown" and "CHECKPOINT_DIR = " in "".join(cell["source"])


def test_full_runs_shows_the_injected_parameters_as_markdown(tmp_path):
    """What papermill wrote (the notebook as committed, with the run it held before shown as
    markdown, and its new injected code cell) becomes one markdown cell of the new run's."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SEED = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('# Parameters\nSEED = 0\nCHECKPOINT_DIR = "ckpt/new"\n',
                                          metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell('```python\nCHECKPOINT_DIR = "ckpt/old"\n```',
                                              metadata={"tags": ["run-parameters"]}),
                nbformat.v4.new_code_cell("print(SEED)")]
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    full_runs.clean(path)
    kinds = [(c.cell_type, c.metadata.get("tags", [])) for c in nbformat.read(path, as_version=4).cells]
    assert kinds == [("code", ["parameters"]), ("markdown", ["run-parameters"]), ("code", [])]
    shown = nbformat.read(path, as_version=4).cells[1].source
    assert 'SEED = 0\nCHECKPOINT_DIR = "ckpt/new"\n```' in shown and "# Parameters" not in shown


def test_the_licence_and_the_changelog_a_reader_needs():
    """pyproject.toml declared the MIT licence with no LICENSE file, and the notebooks install a
    release tag that no changelog described."""
    import eva_utils
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    changes = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {eva_utils.__version__} (" in changes and "\n## Unreleased\n" in changes


def test_every_link_in_the_readme_and_docs_leads_to_a_file():
    """The README's reference moved to docs/: each relative link in README.md and docs/*.md (pages,
    notebooks, images) must name a file of the repository, and every docs page must be linked from
    the README."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in pages[1:] if f"](docs/{p.name})" not in readme] == []


def test_the_step_profile_runs_and_its_table_is_generated(tmp_path):
    """benchmarks/profile_step.py at smoke size: a record with each model's operators, the share
    outside convolutions and their rate against a matrix product's measured in the same run,
    rendered by results_table into docs/performance.md's table."""
    out = tmp_path / "profile_step-test.json"
    ran = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--smoke",
                          "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    record = json.loads(out.read_text())
    run = record["runs"][0]
    assert record["smoke"] and run["model"] == "PlainCNN" and len(run["top"]) == 10
    assert 0 <= run["outside_convolutions_and_matmuls"] < 1 and run["tflops"] > 0
    # the convolutions' own rate is the step's FLOPs over their share of the step: never below the step's
    assert run["arithmetic_tflops"] >= run["tflops"] and record["reference"]["tflops"] > 0
    # each to 4 significant figures: rounded to 3 decimals, a loaded machine's small reference rate
    # made this ratio miss the record's
    assert run["of_reference"] == pytest.approx(run["arithmetic_tflops"] / record["reference"]["tflops"], rel=2e-3)
    sys.path.insert(0, str(ROOT / "scripts"))
    import results_table
    table = "\n".join(results_table.profile(tmp_path))
    assert "SMOKE: not a result" in table and "| PlainCNN |" in table
    assert "matrix product in " in table and f"({100 * run['of_reference']:.0f} %)" in table


def test_a_warning_in_a_committed_notebook_names_no_machines_path():
    """A warning printed by a cell named the kernel's temporary file (/tmp/ipykernel_10901/...):
    full_runs writes "cell" instead."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import full_runs
    said = "/tmp/ipykernel_10901/284011598.py:8: UserWarning: Mirror test-time augmentation"
    assert full_runs.IPYKERNEL_FILE.sub("cell", said) == "cell:8: UserWarning: Mirror test-time augmentation"


def test_module_docstrings_stay_short():
    """A module's docstring says what it holds in at most 10 lines (the package's own may draw the
    layout in 40): rationale and measurements live in docs/, where they are kept true."""
    import ast
    long = {}
    for path in sorted((ROOT / "eva_utils").rglob("*.py")):
        tree = ast.parse(path.read_text())
        first = tree.body[0] if tree.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            lines = first.end_lineno - first.lineno + 1
            if lines > (40 if path.name == "__init__.py" and path.parent.name == "eva_utils" else 10):
                long[str(path.relative_to(ROOT))] = lines
    assert not long, long
