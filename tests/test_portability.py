"""Colab set-up cell, copyable package, notebook hygiene."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

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
def test_colab_setup_cell_installs_only_what_colab_lacks(path, monkeypatch, capsys):
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
    assert cmd[-1] == f"eva-utils @ git+{namespace['REPO']}"
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


def test_package_is_copyable(tmp_path):
    """eva_utils copied alone into an empty folder imports and trains a batch in a fresh interpreter."""
    shutil.copytree(ROOT / "eva_utils", tmp_path / "eva_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent("""
        import sys
        import eva_utils as eva
        assert eva.__file__.startswith(sys.argv[1]), eva.__file__
        data = eva.synthetic_cifar10(train=64, test=32)
        train = eva.GpuLoader(data.train_images, data.train_labels, data.mean, data.std, 32, train=True)
        test = eva.GpuLoader(data.test_images, data.test_labels, data.mean, data.std, 32, train=False)
        h = eva.fit(eva.SmallResNet(), train, test, eva.TrainConfig(epochs=1, lr=0.05, schedule="constant"),
                  progress=False)
        ours = {m.split(".")[0] for m in sys.modules if m.startswith("eva_utils")}
        print(eva.__version__, len(h), sorted(ours))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "1"


def test_package_imports_only_declared_dependencies():
    """Every third-party import in eva_utils is a dependency declared in pyproject.toml."""
    import ast
    declared = {"torch", "torchvision", "numpy", "PIL", "albumentations", "cv2", "matplotlib",
                "pytorch_grad_cam", "torch_lr_finder", "torchinfo", "tqdm"}
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for name in ("pillow", "opencv", "grad-cam", "torch-lr-finder", "torchinfo", "albumentations"):
        assert name in deps
    found = set()
    for path in (ROOT / "eva_utils").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    assert found - set(sys.stdlib_module_names) <= declared, found - declared


def test_version():
    import eva_utils
    assert eva_utils.__version__.count(".") == 2


def test_headless_seed_runs_write_results(tmp_path):
    """The README's headless command (papermill through scripts/run_seeds.py), smoke-sized."""
    env = {**os.environ, "EVA_SMOKE": "1", "EVA_DATA_DIR": str(ROOT / "data")}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_seeds.py"),
                          str(ROOT / "notebooks" / "04_custom_resnet.ipynb"), "--seeds", "0", "1",
                          "--out", str(tmp_path / "04.json")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "04.json").read_text())
    accs = [r["test_acc"] for r in summary["runs"]]
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert (tmp_path / "04-seed1.ipynb").exists()
    assert "over 2 seeds" in out.stdout
