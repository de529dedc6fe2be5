"""The trained model as an app: what checkpoints record, the Classifier's answers against
eva.predict, bad uploads, the exported folder (complete, no training code, runs on its own) and the
deploy command. The page itself is driven in a browser in test_browser.py."""
import ast
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eva_utils as eva
import eva_utils.app
from eva_utils.app import upload_problem
from eva_utils.deploy import CARRIED, REQUIREMENTS
from eva_utils.serve import main as serve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from lr_rules import draw_shapes  # noqa: E402

gradio = pytest.importorskip("gradio", reason="the app needs the optional extra: pip install gradio")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SmallResNet trained for an epoch on drawn shapes (4 classes, 32x32 RGB), its checkpoint,
    its predictions on the test split, and the app exported from them."""
    root = tmp_path_factory.mktemp("app")
    draw_shapes(root / "shapes", size=32, gray=False, per_class=(24, 6))
    data = eva.load_image_folder(root / "shapes")
    train = eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 8,
                             train=True, classes=data.classes)
    test = eva.TensorLoader(data.test_images, data.test_labels, data.mean, data.std, 100,
                            train=False, classes=data.classes)
    torch.manual_seed(0)
    model = eva.SmallResNet(num_classes=data.num_classes, repeats=1)
    eva.fit(model, train, test, eva.TrainConfig(epochs=1, lr=0.05, checkpoint_dir=str(root / "ck")),
            progress=False)
    predictions = eva.predict(model, test, data.classes, amp=False)
    folder = eva.export_app(model.train(), data, predictions, root / "space")
    assert model.training  # exporting left the model as it was
    return {"root": root, "data": data, "model": model, "predictions": predictions,
            "folder": folder, "checkpoint": root / "ck" / "last.pt"}


def test_the_app_without_gradio_is_one_clear_error(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "eva-utils\[app\]"'):
        eva.build_app(eva.Classifier.load(trained["folder"]))


def test_checkpoints_record_what_the_model_takes(trained):
    ckpt = eva.load_checkpoint(trained["checkpoint"])
    data = trained["data"]
    assert ckpt["inputs"] == {"classes": list(data.classes), "mean": list(data.mean),
                              "std": list(data.std), "image_size": [32, 32]}
    model = eva.build_model(ckpt["model_class"], ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the trained model is channels-last: the same sums in another order
        torch.testing.assert_close(model.eval()(x), trained["model"].eval()(x))


def test_the_app_answers_as_predict_for_every_test_picture(trained, tmp_path):
    clf, p = eva.Classifier.load(trained["folder"]), trained["predictions"]
    for i, picture in enumerate(trained["data"].test_images):
        Image.fromarray(picture).save(tmp_path / "upload.png")
        _, seen = clf.pictures(tmp_path / "upload.png")
        probabilities = clf.probabilities(seen)
        assert probabilities.argmax() == p.preds[i]
        assert probabilities.max() == pytest.approx(float(p.confidence[i]), abs=1e-5)
        top = clf.top(probabilities, 4)
        assert list(top) == [clf.classes[j] for j in np.argsort(-probabilities, kind="stable")]
        assert sum(top.values()) == pytest.approx(1.0, abs=1e-5)


def test_uploads_of_any_size_and_mode_become_the_models_picture(trained, tmp_path):
    clf = eva.Classifier.load(trained["folder"])
    picture = trained["data"].test_images[0]
    big = Image.fromarray(picture).resize((300, 200))
    cases = {"big.jpg": big, "gray.png": big.convert("L"), "palette.gif": big.convert("P"),
             "alpha.png": big.convert("RGBA"), "sixteen.png": big.convert("I;16")}
    turned = big.rotate(90, expand=True)  # stored sideways, with the EXIF turn that rights it
    exif = turned.getexif()
    exif[0x0112] = 6
    for name, im in cases.items():
        im.save(tmp_path / name)
    turned.save(tmp_path / "phone.jpg", exif=exif)
    for name in [*cases, "phone.jpg"]:
        original, seen = clf.pictures(tmp_path / name)
        assert seen.shape == (32, 32, 3) and seen.dtype == np.uint8, name
        assert original.shape == (200, 300, 3), name  # upright, as a viewer shows it
    _, gray = clf.pictures(tmp_path / "gray.png")
    assert (gray[..., 0] == gray[..., 2]).all()
    _, upright = clf.pictures(tmp_path / "phone.jpg")
    _, plain = clf.pictures(tmp_path / "big.jpg")
    assert np.abs(upright.astype(int) - plain).mean() < 8  # the same picture, JPEG aside


def test_bad_uploads_and_settings_get_one_message_each(trained, tmp_path, monkeypatch):
    clf = eva.Classifier.load(trained["folder"])
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(trained["data"].test_images[0]).resize((64, 64)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    for name in ("notes.png", "cut.png"):
        with pytest.raises(eva.DataError, match=rf"Cannot read image .*{name}.*Fix") as caught:
            clf.pictures(tmp_path / name)
        said = upload_problem(caught.value, tmp_path / name)  # what the page shows
        assert said.startswith(f"{name} is not an image") and str(tmp_path) not in said
    monkeypatch.setattr(eva.machinery.images, "MAX_PIXELS", 64 * 64 - 1)
    with pytest.raises(eva.DataError, match="64x64 pixels .*Fix: shrink it"):
        clf.pictures(tmp_path / "whole.png")
    probabilities = np.full(4, 0.25, dtype=np.float32)
    for k in (0, 5, 11, 2.5, True, "3", None):
        with pytest.raises(ValueError, match=r"choose a whole number from 1 to 4"):
            clf.top(probabilities, k)
    assert list(clf.top(probabilities, 2.0)) == list(clf.classes[:2])  # a slider's 2.0 is 2
    seen = trained["data"].test_images[0]
    with pytest.raises(ValueError, match="choose one of"):
        clf.heatmap(seen, "fc", 0.5)
    with pytest.raises(ValueError, match="from 0 to 1"):
        clf.heatmap(seen, clf.layers[-1], 1.5)


def test_grad_cam_in_the_app_changes_with_layer_and_opacity(trained):
    clf = eva.Classifier.load(trained["folder"])
    seen = trained["data"].test_images[0]
    plain = clf.heatmap(seen, clf.layers[-1], 0.0)
    assert np.array_equal(plain, seen)  # opacity 0: the picture alone
    half, full = clf.heatmap(seen, clf.layers[-1], 0.5), clf.heatmap(seen, clf.layers[-1], 1.0)
    assert not np.array_equal(half, full)
    assert not np.array_equal(clf.heatmap(seen, clf.layers[0], 1.0), full)
    assert all(p.grad is None for p in clf.model.parameters())  # hooks and gradients cleaned up


def _imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_the_exported_folder_is_complete_and_has_no_training_code(trained):
    folder = trained["folder"]
    package = folder / "eva_utils"
    carried = sorted(str(p.relative_to(package)) for p in package.rglob("*")
                     if "__pycache__" not in p.parts and package / "models" not in p.parents)
    assert carried == sorted([*CARRIED, "__init__.py", "machinery", "machinery/__init__.py"])
    for path in folder.rglob("*.py"):
        text = path.read_text()
        for training in ("def fit(", ".backward(", "optimizer.step(", "from .train ",
                         "from .loaders ", "from .schedule ", "from .data "):
            assert training not in text, f"{path.relative_to(folder)} holds {training}"
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    module_of = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow",
                 "pytorch_grad_cam": "grad-cam", "gradio": "gradio", "safetensors": "safetensors",
                 "eva_utils": None}
    third_party = _imports(folder) - stdlib
    assert third_party <= set(module_of), third_party - set(module_of)
    pins = dict(line.split("==") for line in (folder / "requirements.txt").read_text().split())
    assert set(pins) == set(REQUIREMENTS) >= {module_of[m] for m in third_party} - {None}
    assert all(v[0].isdigit() and "+" not in v for v in pins.values()), pins
    readme = (folder / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front
    assert f"sdk_version: {pins['gradio']}" in front
    about = json.loads((folder / "app.json").read_text())
    assert [Path(p).name for p in about["examples"]][:4] == [
        "00-circle.png", "01-cross.png", "02-square.png", "03-triangle.png"]  # one per class first
    assert len(about["examples"]) == 10
    wrong = eva.misclassified(trained["predictions"])
    assert len(about["mistakes"]) == min(20, len(wrong))
    first = about["mistakes"][0]
    assert (first["true"], first["predicted"]) == (wrong.classes[wrong.labels[0]],
                                                   wrong.classes[wrong.preds[0]])
    # The stored mistake is the test picture itself, pixel for pixel.
    stored = np.asarray(Image.open(folder / first["path"]))
    pictures = trained["data"].test_images
    assert any(np.array_equal(stored, p) for p in pictures)
    model_json = json.loads((folder / "model.json").read_text())
    assert model_json["architecture"] == "SmallResNet" and model_json["image_size"] == [32, 32]
    # Safetensors: plain tensors, no pickle; the loaded weights are the trained ones.
    loaded = eva.Classifier.load(folder).model.state_dict()
    for k, v in trained["model"].state_dict().items():
        assert torch.equal(loaded[k], v.cpu()), k


def test_the_exported_app_runs_on_its_own_modules(trained):
    """The folder's own eva_utils, not this checkout's: the page builds and answers an example,
    importing no training module."""
    code = ("import sys, eva_utils\n"
            "from eva_utils.app import load_app\n"
            "from eva_utils.classifier import Classifier\n"
            "page = load_app('.')\n"
            "clf = Classifier.load('.')\n"
            "print(clf.top(clf.probabilities(clf.pictures('examples/00-circle.png')[1]), 2))\n"
            "print(eva_utils.__file__)\n"
            "print(sorted(m for m in sys.modules if m.startswith('eva_utils')))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    out = subprocess.run([sys.executable, "-c", code], cwd=trained["folder"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert Path(lines[-2]).resolve().is_relative_to(trained["folder"].resolve())
    loaded = set(eval(lines[-1]))
    assert loaded <= {"eva_utils", "eva_utils.machinery",
                      *(f"eva_utils.{m.removesuffix('.py').replace('/', '.')}" for m in CARRIED),
                      *(f"eva_utils.models.{p.stem}" for p in (ROOT / "eva_utils/models").glob("*.py"))}
    assert not loaded & {"eva_utils.train", "eva_utils.loaders", "eva_utils.data"}


def test_export_refuses_what_it_cannot_serve(trained, tmp_path):
    data, model, p = trained["data"], trained["model"], trained["predictions"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no earlier export"):
        eva.export_app(model, data, p, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").exists()
    other = dataclasses.replace(p, classes=tuple("abcd"))
    with pytest.raises(ValueError, match="predict on this data's test loader"):
        eva.export_app(model, data, other, tmp_path / "space")
    with pytest.raises(ValueError, match="mistakes=-1"):
        eva.export_app(model, data, p, tmp_path / "space", mistakes=-1)

    class Mine(torch.nn.Module):  # a student's own model: no init_args to rebuild it from
        gradcam_layers = ("conv",)

        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    earlier = eva.export_app(model, data, p, tmp_path / "space")
    before = sorted(q.relative_to(earlier) for q in earlier.rglob("*"))
    with pytest.raises(ValueError, match=r"cannot rebuild this model: it is a Mine, not one of "
                                         r"eva_utils' models.*serve yours with your own code"):
        eva.export_app(Mine(), data, p, tmp_path / "space")
    assert sorted(q.relative_to(earlier) for q in earlier.rglob("*")) == before  # left as it was
    assert [q.name for q in tmp_path.iterdir() if "draft" in q.name] == []


def test_the_serve_command_exports_a_checkpoint(trained, tmp_path, capsys):
    serve([str(trained["checkpoint"]), "--data", str(trained["root"] / "shapes"), "--out",
            str(tmp_path / "space"), "--no-launch"])
    assert "App written to" in capsys.readouterr().out
    about = json.loads((tmp_path / "space" / "app.json").read_text())
    assert len(about["examples"]) == 10
    clf = eva.Classifier.load(tmp_path / "space")
    assert clf.classes == trained["data"].classes
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    del ckpt["inputs"]  # as written before checkpoints recorded it
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(SystemExit) as stopped:
        serve([str(tmp_path / "old.pt"), "--out", str(tmp_path / "old"), "--no-launch"])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "does not record the classes" in said and "export_app" in said
    assert "Traceback" not in said
    with pytest.raises(SystemExit):
        serve([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "none"), "--no-launch"])
    assert "No checkpoint at" in capsys.readouterr().err


def test_serve_names_a_checkpoint_whose_arguments_do_not_fit_its_weights(trained, tmp_path,
                                                                           capsys):
    """A checkpoint whose model arguments do not match its weights (edited, or another package's)
    ended in torch's size-mismatch traceback; an empty --out served from a temporary folder."""
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["model_args"] = {**ckpt["model_args"], "num_classes": 10}
    torch.save(ckpt, tmp_path / "edited.pt")
    data = str(trained["root"] / "shapes")
    for argv, words in [([str(tmp_path / "edited.pt"), "--data", data, "--out",
                          str(tmp_path / "a"), "--no-launch"],
                         r"holds a SmallResNet\(\{.*'num_classes': 10.*\}\) that cannot be built again "
                         r"with its weights \(Error\(s\) in loading state_dict"),
                        ([str(trained["checkpoint"]), "--out", " "], r"--out ' ': give the folder")]:
        with pytest.raises(SystemExit) as stopped:
            serve(argv)
        said = capsys.readouterr().err
        assert stopped.value.code == 2 and re.search(words, said), said
        assert "Traceback" not in said
    assert not (tmp_path / "a").exists()


def test_compiled_and_data_parallel_models_export_as_the_network_inside(trained, tmp_path):
    """torch.compile's and DataParallel's wrappers were refused as models without arguments; a
    subclass or a model wrapped with a new head was told to "build your model yourself", which
    does not apply to an export. The wrappers export the network inside; the others say why not."""
    data, model, p = trained["data"], trained["model"], trained["predictions"]
    picture = np.asarray(Image.open(next((trained["folder"] / "examples").iterdir())))
    want = eva.Classifier(model, data.classes, data.mean, data.std, data.image_size)
    for name, wrapped in [("compiled", torch.compile(model)),
                          ("parallel", torch.nn.DataParallel(model))]:
        folder = eva.export_app(wrapped, data, p, tmp_path / name)
        about = json.loads((folder / "model.json").read_text())
        assert about["architecture"] == "SmallResNet", name
        np.testing.assert_allclose(eva.Classifier.load(folder).probabilities(picture),
                                   want.probabilities(picture), atol=1e-6)

    class Mine(eva.SmallResNet):
        pass
    mine = Mine(num_classes=4, repeats=1)
    for other, words in [(mine, r"it is a Mine, a subclass of SmallResNet \(whose forward may "
                                r"differ\)"),
                         (torch.nn.Sequential(model, torch.nn.Softmax(1)),
                          r"it is a Sequential, not one of eva_utils' models")]:
        with pytest.raises(ValueError, match=rf"The app cannot rebuild this model: {words}.*Fix: "
                                             r"export a model built as one of them"):
            eva.export_app(other, data, p, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("file, damage, words", [
    ("model.safetensors", b"garbage", r"model.safetensors cannot be loaded into the SmallResNet "
                                      r"that model.json names \(Error while deserializing header"),
    ("model.safetensors", "half", r"model.safetensors cannot be loaded into the SmallResNet"),
    ("model.safetensors", None, r"model.safetensors cannot be loaded .*No such file"),
    ("model.json", b"{not json", r"model.json is damaged: it is not JSON"),
    ("model.json", None, r"model.json is missing: .* is not a folder export_app wrote"),
    ("app.json", b"\xff\xfe", r"app.json is damaged: it is not JSON"),
])
def test_a_damaged_file_of_an_export_is_named_when_the_app_starts(trained, tmp_path, file, damage,
                                                                   words):
    """Damaged weights or settings files started the app with safetensors' or json's traceback."""
    import eva_utils.app
    folder = tmp_path / "space"
    shutil.copytree(trained["folder"], folder)
    if damage is None:
        (folder / file).unlink()
    else:
        whole = (folder / file).read_bytes()
        (folder / file).write_bytes(whole[:len(whole) // 2] if damage == "half" else damage)
    with pytest.raises(ValueError, match=rf"{words}.*Fix: export the app again"):
        eva_utils.app.load_app(folder)


@pytest.fixture
def app_url(trained, tmp_path):
    """The exported app served by its own ``python app.py`` on a free localhost port."""
    from test_browser import free_port, served
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False")
    url = f"http://127.0.0.1:{port}/"
    with served([sys.executable, "app.py"], url, tmp_path / "app.log", cwd=trained["folder"],
                env=env):
        yield url


def _top(page, entries: int) -> list[tuple[str, int]]:
    """The page's top classes as (name, percent), once it lists ``entries`` of them."""
    shown = page.locator("#top")
    # the page builds #top after it loads: null until then, which must mean "wait", not an error
    page.wait_for_function(f"() => {{ const t = document.querySelector('#top'); "
                           f"return t !== null && (t.innerText.match(/%/g) || []).length === {entries}; }}",
                           timeout=30000)
    lines = [line.strip() for line in shown.inner_text().split("\n") if line.strip()]
    return [(lines[i - 1], int(line[:-1])) for i, line in enumerate(lines)
            if re.fullmatch(r"\d+%", line)]  # each percentage follows its class name


def _changed(page, selector: str, before: str | None) -> str:
    """The src of ``selector``'s image once it differs from ``before``."""
    page.wait_for_function(f"() => {{ const i = document.querySelector('{selector} img'); "
                           f"return i && i.src && i.src !== {json.dumps(before)}; }}", timeout=30000)
    return page.locator(f"{selector} img").first.get_attribute("src")


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed "
                    "(apt-get install chromium); the app's browser test needs it")
def test_the_app_in_a_real_browser(trained, app_url, tmp_path):
    """Upload, read the top-k, Grad-CAM on with layer and opacity changed, the mistakes gallery
    with a count, an example picked, and a file that is not an image: all in headless Chromium."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_ARGS

    clf = eva.Classifier.load(trained["folder"])
    picture = trained["data"].test_images[3]
    Image.fromarray(picture).resize((96, 96)).save(tmp_path / "upload.png")
    expected = clf.probabilities(clf.pictures(tmp_path / "upload.png")[1])
    (tmp_path / "notes.png").write_text("not an image")
    (ROOT / "artifacts").mkdir(exist_ok=True)  # screenshots
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app_url)
            page.locator("#upload input[type=file]").set_input_files(tmp_path / "upload.png")
            top = _top(page, 3)
            assert top == [(name, round(100 * p)) for name, p in clf.top(expected, 3).items()]
            _set_number(page, "topk", 2)
            assert len(_top(page, 2)) == 2
            # Grad-CAM: shown when switched on; a new picture for another opacity and another layer.
            page.locator("#show-cam input").check()
            heat = _changed(page, "#heat", None)
            _set_number(page, "opacity", 0.4)
            heat = _changed(page, "#heat", heat)
            page.locator("#layer input").click()
            page.locator("[role=option]", has_text=clf.layers[0]).click()
            _changed(page, "#heat", heat)
            # The mistakes, as many as asked for, captioned true → predicted.
            page.locator("#show-wrong input").check()
            _set_number(page, "n-wrong", 3)
            page.wait_for_function("() => document.querySelectorAll('#wrong img').length === 3",
                                   timeout=30000)
            assert "→" in page.locator("#wrong").inner_text()
            # An example picked from the gallery is classified too.
            example = json.loads((trained["folder"] / "app.json").read_text())["examples"][1]
            chosen = clf.top(clf.probabilities(clf.pictures(trained["folder"] / example)[1]), 2)
            page.locator("#examples img").nth(1).click()
            page.wait_for_function(f"() => document.querySelector('#top')?.innerText.split('\\n')[1]"
                                   f" === {json.dumps(next(iter(chosen)))}", timeout=30000)
            assert _top(page, 2) == [(name, round(100 * p)) for name, p in chosen.items()]
            assert page.locator("text=Error").count() == 0
            page.screenshot(path=str(ROOT / "artifacts" / "app.png"), full_page=True)
            # Not an image: one message in the page, no traceback.
            page.locator("#upload").get_by_label("Clear").click()
            page.locator("#upload input[type=file]").set_input_files(tmp_path / "notes.png")
            page.get_by_text("notes.png is not an image this app can read").first.wait_for(timeout=30000)
            assert "Traceback" not in page.inner_text("body")
        except Exception:  # what the page and the server showed, for whoever reads the failure
            page.screenshot(path=str(ROOT / "artifacts" / "app-failed.png"), full_page=True)
            print((tmp_path / "app.log").read_text()[-3000:])
            raise
        browser.close()


@pytest.mark.skipif(os.environ.get("EVA_FRESH_VENV") != "1", reason="set EVA_FRESH_VENV=1 to "
                    "install the exported app's requirements into a new venv (about 3 minutes, 6 GB)")
def test_the_exported_app_runs_from_a_fresh_venv_with_only_its_requirements(trained, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                    str(trained["folder"] / "requirements.txt")], check=True, timeout=1800)
    code = ("from eva_utils.app import load_app\nfrom eva_utils.classifier import Classifier\n"
            "load_app('.')\nclf = Classifier.load('.')\n"
            "print(clf.top(clf.probabilities(clf.pictures('examples/00-circle.png')[1]), 1))\n")
    out = subprocess.run([str(python), "-W", "error::UserWarning", "-c", code],
                         cwd=trained["folder"], capture_output=True, text=True, timeout=300,
                         env={"PATH": os.environ["PATH"], "GRADIO_ANALYTICS_ENABLED": "False"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("{")


def test_the_app_is_launched_with_an_upload_limit(trained, monkeypatch):
    """Gradio refuses larger uploads before anything is decoded (the page says so)."""
    import eva_utils.app
    import signal
    seen, handlers = {}, {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setattr(signal, "signal", lambda number, handler: handlers.update({number: handler}))
    eva_utils.app.launch(trained["folder"], server_port=1234)
    middleware = seen.pop("app_kwargs")["middleware"]
    assert seen == {"max_file_size": "10mb", "server_port": 1234}
    assert [m[0] for m in middleware] == [eva_utils.app.UploadLimit]
    assert handlers == {signal.SIGTERM: signal.default_int_handler}  # stops as Ctrl-C does


def test_the_app_serves_only_files_inside_its_folder(trained, tmp_path, monkeypatch, capsys):
    """An app.json example or mistake that names a path outside the folder, or a link out of it
    (a Space's git repository can carry one), would be copied into Gradio's cache and downloadable
    by any client: it is left out, in one line naming them."""
    import eva_utils.app
    folder = tmp_path / "space"
    shutil.copytree(trained["folder"], folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    (folder / "examples" / "link.png").symlink_to(secret)
    about = json.loads((folder / "app.json").read_text())
    honest = len(about["examples"]), len(about["mistakes"])
    about["examples"] += ["examples/link.png", "/etc/hostname", "../secret.txt"]
    about["mistakes"].append({**about["mistakes"][0], "path": "../secret.txt"})
    (folder / "app.json").write_text(json.dumps(about))
    seen = {}
    monkeypatch.setattr(eva_utils.app, "build_app", lambda clf, examples, mistakes, **kw:
                        seen.update(examples=examples, mistakes=mistakes))
    eva_utils.app.load_app(folder)
    assert (len(seen["examples"]), len(seen["mistakes"])) == honest
    served = [Path(p) for p in seen["examples"]] + [Path(m["path"]) for m in seen["mistakes"]]
    assert all(p.resolve().parent.parent == folder.resolve() and p.is_file() for p in served)
    assert capsys.readouterr().out == (f"Not served (not a file inside {folder}): examples/link.png, "
                                       "/etc/hostname, ../secret.txt, ../secret.txt\n")


def test_re_export_replaces_only_what_export_app_writes(trained, tmp_path):
    """Exporting again into a Space's clone keeps its .git, .gitattributes and the user's notes;
    the earlier export's own files (a stale example too) are replaced."""
    folder = tmp_path / "space"
    export = lambda title: eva.export_app(trained["model"], trained["data"], trained["predictions"],
                                          folder, title=title)
    export("first")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "notes.md").write_text("mine")
    (folder / "examples" / "stale.png").write_bytes(b"an earlier export's")
    export("second")
    assert (folder / ".git" / "config").read_text() == "[core]\n"
    assert (folder / ".gitattributes").exists() and (folder / "notes.md").read_text() == "mine"
    assert not (folder / "examples" / "stale.png").exists()
    assert json.loads((folder / "app.json").read_text())["title"] == "second"
    assert not list(tmp_path.glob(".space.*"))  # no draft left beside it


@pytest.mark.parametrize("title", ['Say """hi"""', "\\N{no such name}",
                                   '"""\nimport pathlib; pathlib.Path("pwned").touch()\n"""'])
def test_a_title_is_data_never_code(trained, tmp_path, title):
    """A title was pasted into app.py's docstring: triple quotes or \\N made a SyntaxError, and a
    crafted one ran code when app.py was imported. app.py is now the same for every export."""
    folder = eva.export_app(trained["model"], trained["data"], trained["predictions"],
                            tmp_path / "space", title=title)
    code = (folder / "app.py").read_text()
    ast.parse(code)
    assert code == (trained["folder"] / "app.py").read_text()
    assert json.loads((folder / "app.json").read_text())["title"] == title


def test_the_app_refuses_a_picture_too_large_from_its_header(trained, tmp_path):
    """A 6 KB PNG of 7000x7000 pixels cost 5.7 s and 860 MB a request: the app refuses more than
    16 megapixels before decoding, naming the limit; Gradio deletes its cache of uploads hourly."""
    import eva_utils.app
    bomb = tmp_path / "bomb.png"
    Image.new("1", (7000, 7000)).save(bomb)
    assert bomb.stat().st_size < 20_000
    page = eva_utils.app.load_app(trained["folder"])
    upload = page.fns[0].fn  # what an upload runs
    layer = eva.Classifier.load(trained["folder"]).layers[-1]
    with pytest.raises(gradio.Error, match=r"Image bomb.png is 7000x7000 pixels \(49 megapixels\), "
                                           r"more than the 16 this decodes\. Fix: shrink it"):
        upload(str(bomb), 3, False, layer, 0.5)
    assert page.delete_cache == (3600, 3600)
    strip = tmp_path / "strip.png"  # 0.4 megapixels, but wider than the page's WebP can hold
    Image.new("RGB", (20000, 20)).save(strip)
    _, shown, seen, top, heat = upload(str(strip), 3, False, layer, 0.5)
    assert max(shown.shape[:2]) <= 2048 and seen.shape == (224, 224, 3)


def test_export_refuses_a_model_the_app_cannot_repeat(trained, tmp_path):
    """The app rebuilds its model from class and arguments: a model changed after it was built
    (GELU swapped in for ReLU: the same weight names) answered 0.9 apart in logits; a 10-output
    model exported with 4 classes failed every request; data loaded at 64x64 for a model scored
    at 32x32 exported the wrong size. Each is refused, with the reason; nothing is written."""
    import copy
    data, predictions = trained["data"], trained["predictions"]
    swapped = copy.deepcopy(trained["model"])
    for name, module in list(swapped.named_modules()):
        for child, layer in list(module.named_children()):
            if isinstance(layer, torch.nn.ReLU):
                setattr(module, child, torch.nn.GELU())
    with pytest.raises(ValueError, match=r"would answer otherwise than this SmallResNet.*changed "
                                         r"after it was built"):
        eva.export_app(swapped, data, predictions, tmp_path / "a")
    ten = eva.SmallResNet(num_classes=10, repeats=1)
    with pytest.raises(ValueError, match=r"has 10 outputs, but the data names 4 classes"):
        eva.export_app(ten, data, predictions, tmp_path / "b")
    bigger = eva.load_image_folder(trained["root"] / "shapes", image_size=64)
    with pytest.raises(ValueError, match=r"predictions were made on 32x32 images, but the data is "
                                         r"64x64"):
        eva.export_app(trained["model"], bigger, predictions, tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_export_compares_a_gpu_model_with_its_rebuild_on_the_cpu(trained, tmp_path, monkeypatch):
    """export_app compared the model where it was (a GPU: TF32 convolutions from Ampere on) with
    its CPU rebuild at 1e-3, and could refuse a correct model. Here the model stands "on a GPU"
    whose answers are 0.01 off the CPU's; a CPU copy of it is what is compared."""
    import copy
    model = copy.deepcopy(trained["model"])
    cpu = eva.Classifier.probabilities

    def on_gpu(self, picture, *args, **kwargs):
        p = cpu(self, picture, *args, **kwargs)
        return p + 0.01 * (self.model is model)  # the GPU's arithmetic, this model's alone
    monkeypatch.setattr(eva.Classifier, "probabilities", on_gpu)
    real = next(model.parameters()).device
    monkeypatch.setattr(torch.Tensor, "device", property(
        lambda t: torch.device("cuda", 0) if any(t is p for p in model.parameters()) else real))
    folder = eva.export_app(model, trained["data"], trained["predictions"], tmp_path / "app")
    assert (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("file, change, words", [
    ("model.json", {"std": [0.2, 0.0, 0.2]}, r"std=\[0.2, 0.0, 0.2\]: give three numbers > 0"),
    ("model.json", {"classes": ["a", "b", "c"]}, r"num_classes=4, but 3 classes are named"),
    ("model.json", {"image_size": [0, 32]}, r"image_size=\[0, 32\]: give \[height, width\]"),
    ("model.json", {"image_size": [100000, 100000]}, r"whole numbers from 1 to 4096"),
    ("app.json", {"examples": "examples/00.png"}, r"examples is not a list of file names"),
    # the same weights under other arguments: shared blocks applied 3 times answer otherwise
    ("model.json", {"arguments": {"repeats": 3, "num_classes": 4}},
     r"answers a drawn picture otherwise than the exported model did"),
    ("model.json", {"arguments": {"repeats": 10**9, "num_classes": 4}},
     r"repeats=1000000000: give a whole number from 0 to 64"),
    ("model.json", {"arguments": {"repeats": "4", "num_classes": 4}},
     r"repeats='4': give a whole number, like its default 1"),
    ("model.json", {"arguments": {"repeats": True, "num_classes": 4}}, r"repeats=True: give a whole"),
    ("model.json", {"arguments": {"repeats": 1, "num_classes": 4, "colour": 1}},
     r"SmallResNet takes no argument 'colour'"),
    ("model.json", {"arguments": {"repeats": 1, "num_classes": 10**12}},
     r"num_classes=1000000000000, but 4 classes are named"),
    ("model.json", {"arguments": {"repeats": 1, "num_classes": 4.0}}, r"num_classes=4.0, but 4"),
    ("model.json", {"std": [1e-300, 0.2, 0.2]}, r"give three numbers > 0 \(from 1e-6 to 1e6\)"),
    ("model.json", {"mean": [1e308, 0.0, 0.0]}, r"give three numbers from -1e6 to 1e6"),
    ("model.json", {"classes": ["cat", "cat", "dog", "cow"]}, r"a class name appears twice"),
    ("model.json", {"answer": [0.1, "x", 0.2, 0.3]}, r"answer: give 4 numbers"),
])
def test_a_damaged_export_is_named_when_the_app_starts(trained, tmp_path, file, change, words):
    """A hand-edited or damaged folder started a server whose every request failed, answered NaN
    (std 0 or 1e-300, mean 1e308), ran out of memory (image size 100000, 10**12 classes), never
    started (repeats 10**9), collapsed its top classes (one name four times) or answered otherwise
    than the exported model, silently (repeats 3 with the same weights): one message at start."""
    import eva_utils.app
    folder = tmp_path / "space"
    shutil.copytree(trained["folder"], folder)
    about = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**about, **change}))
    with pytest.raises(ValueError, match=rf"{file} (is damaged: .*)?{words}"):
        eva_utils.app.load_app(folder)


def test_settings_sent_around_the_page_get_one_message_each(trained):
    """Through the API a setting can be a string or null, and a gallery index anything: each gets a
    message that names it (a blank "Error" before)."""
    import eva_utils.app
    page = eva_utils.app.load_app(trained["folder"])
    handler = {f.fn.__name__: f.fn for f in page.fns.values()}
    picture = str(trained["folder"] / json.loads((trained["folder"] / "app.json").read_text())
                  ["examples"][0])
    layer = eva.Classifier.load(trained["folder"]).layers[-1]
    cases = [(lambda: handler["answer"](picture, 3, "yes", layer, 0.5), r"Show Grad-CAM: send true"),
             (lambda: handler["answer"](picture, None, False, layer, 0.5), r"whole number from 1"),
             (lambda: handler["answer"](picture, 3, True, layer, "0.5"), r"from 0 to 1"),
             (lambda: handler["wrong"](True, None, False, layer, 0.5), r"How many: None; choose"),
             (lambda: handler["wrong"](True, 2.5, False, layer, 0.5), r"How many: 2.5; choose"),
             (lambda: handler["wrong"](None, 3, False, layer, 0.5), r"Show misclassified .*: send"),
             (lambda: handler["pick"](3, False, layer, 0.5, gradio.SelectData(
                 None, {"index": 99, "value": None})), r"There is no example 99: pick one of the 10")]
    for call, words in cases:
        with pytest.raises(gradio.Error, match=words):
            call()


def test_a_damaged_mistake_is_named_without_the_servers_path(trained, tmp_path):
    """The mistakes gallery answered a damaged picture with the server's absolute path to it."""
    import eva_utils.app
    folder = tmp_path / "space"
    shutil.copytree(trained["folder"], folder)
    (folder / "mistakes" / "000.png").write_bytes(b"not a picture")
    page = eva_utils.app.load_app(folder)
    wrong = next(f.fn for f in page.fns.values() if f.fn.__name__ == "wrong")
    layer = eva.Classifier.load(folder).layers[-1]
    with pytest.raises(gradio.Error) as said:
        wrong(True, 1, False, layer, 0.5)
    assert said.value.message.startswith("000.png is not an image this app can read")
    assert str(tmp_path) not in said.value.message


def test_a_decompression_bomb_is_called_one(trained, tmp_path):
    """A PNG whose header claims 200 megapixels was called "not an image ... a truncated file"."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)
    clf = eva.Classifier.load(trained["folder"])
    with pytest.raises(eva.DataError) as caught:
        clf.pictures(bomb)
    said = upload_problem(caught.value, bomb)
    assert said.startswith("Image bomb.png claims more pixels than Pillow will open")
    assert "megapixels this decodes" in said and "truncated" not in said


def test_an_export_with_one_mistake_starts_and_one_the_page_refuses_is_never_written(
        trained, tmp_path, monkeypatch):
    """With exactly one mistake the page asked Gradio for Slider(1, 1), which it refuses when the
    page is built: export_app reported success and `python app.py` failed. One mistake is shown
    without a slider, and the page is built from the draft before anything moves into place."""
    from eva_utils.app import load_app
    p = trained["predictions"]
    wrong = (p.preds != p.labels).nonzero().flatten()
    assert len(wrong) >= 1
    keep = p.preds == p.labels
    keep[wrong[0]] = True
    one = p[keep]
    assert len(eva.misclassified(one)) == 1
    folder = eva.export_app(trained["model"], trained["data"], one, tmp_path / "one")
    assert len(json.loads((folder / "app.json").read_text())["mistakes"]) == 1
    load_app(folder)  # builds, as `python app.py` does

    def refused(*args, **kwargs):
        raise ValueError("Slider minimum must be less than maximum")
    monkeypatch.setattr(eva_utils.app, "build_app", refused)
    with pytest.raises(ValueError, match="Slider minimum"):
        eva.export_app(trained["model"], trained["data"], one, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


def test_a_half_precision_model_exports_in_float32_and_the_package_folder_is_refused(trained,
                                                                                      tmp_path):
    """export_app(model.half()) failed in torch's dtype check (float16 weights, float32 pictures);
    the app computes in float32, so the export does too, from a copy (the model stays float16). An
    export into eva_utils itself would be carried inside every later export: refused."""
    data, p = trained["data"], trained["predictions"]
    half = copy.deepcopy(trained["model"]).half()
    folder = eva.export_app(half, data, p, tmp_path / "half")
    assert next(half.parameters()).dtype == torch.float16
    clf = eva.Classifier.load(folder)
    assert next(clf.model.parameters()).dtype == torch.float32
    package = Path(eva.__file__).parent
    for inside in (package, package / "app"):
        with pytest.raises(FileExistsError, match="inside the eva_utils package"):
            eva.export_app(trained["model"], data, p, inside)
    assert not (package / "app").exists()


def test_one_request_cannot_fill_the_disk_and_sigterm_cleans_up(trained, tmp_path):
    """200 files of 1 MiB in one POST were accepted in 1.4 s and kept an hour (for ever if the
    server died by SIGTERM). Now a request with more than one file, or more than MAX_REQUEST
    bytes, is refused with 413 before Gradio stores anything, one picture is accepted, and SIGTERM
    (docker stop) shuts the server down as Ctrl-C does, deleting the uploads it kept."""
    import signal

    import httpx
    from test_browser import free_port, served

    port, cache = free_port(), tmp_path / "gradio-cache"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(cache))
    url = f"http://127.0.0.1:{port}"
    picture = (trained["folder"] / "examples").iterdir().__next__().read_bytes()
    stored = lambda: [p for p in cache.rglob("*") if p.is_file()]  # noqa: E731
    with served([sys.executable, "app.py"], url + "/", tmp_path / "app.log",
                cwd=trained["folder"], env=env) as server:
        before = len(stored())
        many = [("files", (f"{i}.png", b"x" * 1024, "image/png")) for i in range(200)]
        answer = httpx.post(f"{url}/gradio_api/upload", files=many, timeout=30)
        assert answer.status_code == 413 and "more than 1 file" in answer.text
        big = [("files", ("big.png", b"x" * (12 * 2**20), "image/png"))]
        answer = httpx.post(f"{url}/gradio_api/upload", files=big, timeout=30)
        assert answer.status_code == 413 and "MB in one request" in answer.text
        assert len(stored()) == before  # nothing of either kept
        answer = httpx.post(f"{url}/gradio_api/upload",
                            files=[("files", ("mine.png", picture, "image/png"))], timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(stored()) == before + 1 and [p.name for p in stored()].count("mine.png") == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) is not None
    assert "mine.png" not in [p.name for p in stored()]  # the upload is gone


def test_a_model_whose_head_was_wrapped_is_refused_by_name(trained, tmp_path):
    """A SmallResNet whose head was wrapped after it was built (dropout in front) is still a
    SmallResNet, but the app rebuilds a plain one: the export failed in torch's load_state_dict
    ("Missing key(s) ... Unexpected key(s)"). It is refused, naming the layers that differ."""
    model = copy.deepcopy(trained["model"])
    model.head = torch.nn.Sequential(torch.nn.Dropout(0.2), model.head)
    with pytest.raises(ValueError, match=r"cannot rebuild this model: its layers differ from a new "
                                         r"SmallResNet.* in head\.1\.1\.bias, head\.1\.1\.weight, "
                                         r"head\.1\.bias, head\.1\.weight \(was a layer wrapped"):
        eva.export_app(model, trained["data"], trained["predictions"], tmp_path / "app")
    assert not (tmp_path / "app").exists()
