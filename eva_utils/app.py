"""A trained classifier as a web page (Gradio): upload an image or pick an example, read its top
classes, look at Grad-CAM from any layer at any opacity, and browse the test images it got wrong.

    python -m eva_utils.serve runs/ckpt-04/best.pt --data data    # try a finished run
    python app.py                                                       # in a folder export_app wrote

Gradio is an optional extra (``pip install "eva-utils[app]"``): ``import eva_utils`` never imports
it, and ``build_app`` without it raises one ImportError that says what to install. The app carries
this module, ``classifier`` and what they import, and no training code.
"""
# No "from __future__ import annotations": gradio finds the SelectData argument of a handler by
# its annotation, which must then be the class itself, not a string.
from pathlib import Path

import numpy as np

from .classifier import MAX_TOP, Classifier, read_json
from .machinery.images import DataError

MAX_UPLOAD = "10mb"    # larger uploads are refused by the server before anything is decoded
MAX_REQUEST = 11 * 2**20  # bytes one upload request may carry: one 10 MB picture and its form
MAX_FILES = 1          # files one upload request may carry: the page sends one picture at a time
# Larger pictures are refused before they are decoded: a few KB of PNG can hold 7000x7000 pixels,
# seconds and gigabytes to decode. 16 megapixels takes a phone photo and is plenty for a 32-64 px model.
MAX_PIXELS = 16_000_000
SHOWN = 224            # pictures smaller than this are enlarged (whole pixels) to be seen
LONGEST = 2048         # ... and larger ones shrunk to this long side (the page's WebP stops at 16383)
CACHE = (3600, 3600)   # seconds: Gradio deletes uploads and answers older than an hour, hourly


def gradio():
    """The gradio module, or one ImportError with the fix."""
    try:
        import gradio
    except ImportError:
        raise ImportError("The web app needs Gradio, which is not installed. Fix: pip install "
                          '"eva-utils[app]" (or: pip install gradio safetensors).') from None
    return gradio


def enlarged(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) as the page shows it: repeated to at least ``SHOWN`` pixels on its short
    side (a 32x32 picture becomes 224x224 in sharp blocks: the pixels the model saw, not a
    browser's blur), or shrunk to ``LONGEST`` pixels on its long side (a 20000x20 strip)."""
    short, long = sorted(picture.shape[:2])
    if long > LONGEST:
        from PIL import Image
        small = Image.fromarray(picture)
        small.thumbnail((LONGEST, LONGEST))
        return np.asarray(small)
    times = max(1, min(-(-SHOWN // short), LONGEST // long))  # a 1x2000 strip stays 1x2000
    return picture.repeat(times, 0).repeat(times, 1)


def upload_problem(exc: Exception, path) -> str:
    """What is wrong with an uploaded file, named as the user named it (not the server's copy)."""
    name = Path(path).name
    if str(exc).startswith("Cannot read image"):
        return (f"{name} is not an image this app can read (a truncated file, or another kind of "
                "file). Upload a picture: JPEG, PNG, WebP, BMP, GIF or TIFF.")
    return str(exc).replace(str(path), name)


def build_app(clf: Classifier, examples=(), mistakes=(), *, title: str = "Image classifier",
              about: str = ""):
    """A ``gradio.Blocks`` page for ``clf``. ``examples``: image file paths offered as a gallery to
    pick from (10 is plenty). ``mistakes``: test images the model got wrong, as dicts with "path",
    "true", "predicted" and "confidence" (``export_app`` writes them). ``about``: Markdown shown
    under the title."""
    gr = gradio()
    examples = [str(p) for p in examples]
    mistakes = list(mistakes)
    layers = list(clf.layers)

    def switch(value, name: str) -> bool:
        """A checkbox's value; the API can send anything (a string, null): said, not guessed."""
        if not isinstance(value, bool):
            raise gr.Error(f"{name}: send true or false, not {value!r}.", print_exception=False)
        return value

    def answer(path, k, show_cam, layer, opacity):
        """(picture as uploaded, the model's view, top classes, Grad-CAM or hidden)."""
        if path is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        show_cam = switch(show_cam, "Show Grad-CAM")
        try:
            original, seen = clf.pictures(path, max_pixels=MAX_PIXELS)
        except DataError as exc:  # said in the page, naming the file as the user knows it
            raise gr.Error(upload_problem(exc, path), print_exception=False) from None
        try:
            top = clf.top(clf.probabilities(seen), k)
            heat = clf.heatmap(seen, layer, opacity) if show_cam else None
        except ValueError as exc:  # a setting out of range (sent around the page's controls)
            raise gr.Error(str(exc), print_exception=False) from None
        return (enlarged(original), enlarged(seen), top,
                gr.update(value=None if heat is None else enlarged(heat), visible=show_cam))

    def upload(path, *controls):
        return (path, *answer(path, *controls))

    def pick(k, show_cam, layer, opacity, evt: gr.SelectData):  # gradio fills in evt by its type
        i = evt.index
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(examples):
            raise gr.Error(f"There is no example {i!r}: pick one of the {len(examples)} shown.",
                           print_exception=False)
        return upload(examples[i], k, show_cam, layer, opacity)

    def wrong(show, n, show_cam, layer, opacity):
        """The first ``n`` mistakes (most confident first), with Grad-CAM when it is switched on."""
        if not switch(show, "Show misclassified test images"):
            return gr.update(visible=False)
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) \
                or not 1 <= n <= len(mistakes):
            raise gr.Error(f"How many: {n!r}; choose a whole number from 1 to {len(mistakes)}.",
                           print_exception=False)
        show_cam = switch(show_cam, "Show Grad-CAM")
        shown = []
        try:
            for m in mistakes[:int(n)]:
                _, seen = clf.pictures(m["path"])
                picture = clf.heatmap(seen, layer, opacity) if show_cam else seen
                shown.append((enlarged(picture), f"{m['true']} → {m['predicted']} "
                                                 f"({100 * m['confidence']:.0f}%)"))
        except DataError as exc:  # a damaged file: named, but not by the server's path
            raise gr.Error(upload_problem(exc, m["path"]), print_exception=False) from None
        except ValueError as exc:  # a setting out of range (sent around the page's controls)
            raise gr.Error(str(exc), print_exception=False) from None
        return gr.update(value=shown, visible=True)

    with gr.Blocks(title=title, delete_cache=CACHE) as page:
        gr.Markdown(f"# {title}\n{about}")
        chosen = gr.State(None)  # the image file now shown: an upload or an example
        with gr.Row():
            with gr.Column():
                upload_box = gr.File(label="Upload an image", file_types=["image"],
                                     type="filepath", elem_id="upload")
                if examples:
                    picker = gr.Gallery([(p, Path(p).stem) for p in examples], columns=5,
                                        height="auto", label="Or pick an example",
                                        allow_preview=False, elem_id="examples")
                k = gr.Slider(1, min(MAX_TOP, len(clf.classes)), value=min(3, len(clf.classes)),
                              step=1, label="How many top classes", elem_id="topk")
                show_cam = gr.Checkbox(label="Show Grad-CAM (where the model looked)",
                                       elem_id="show-cam")
                layer = gr.Dropdown(layers, value=layers[-1], label="Grad-CAM layer",
                                    elem_id="layer")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Grad-CAM opacity",
                                    elem_id="opacity")
            with gr.Column():
                top = gr.Label(label="Top classes", elem_id="top")
                with gr.Row():
                    original = gr.Image(label="Your image", interactive=False, elem_id="original")
                    h, w = clf.image_size
                    seen = gr.Image(label=f"What the model sees ({w}x{h})", interactive=False,
                                    elem_id="seen")
                heat = gr.Image(label="Grad-CAM", interactive=False, visible=False, elem_id="heat")
        controls = [k, show_cam, layer, opacity]
        shown = [original, seen, top, heat]
        upload_box.upload(upload, [upload_box, *controls], [chosen, *shown])
        if examples:
            picker.select(pick, controls, [chosen, *shown])
        for control in controls:
            control.change(answer, [chosen, *controls], shown)
        if mistakes:
            gr.Markdown("## Test images it got wrong")
            with gr.Row():
                show_wrong = gr.Checkbox(label="Show misclassified test images",
                                         elem_id="show-wrong")
                if len(mistakes) > 1:
                    n_wrong = gr.Slider(1, len(mistakes), value=min(10, len(mistakes)), step=1,
                                        label="How many", elem_id="n-wrong")
                else:  # a slider needs two ends (Gradio refuses Slider(1, 1)): one is shown alone
                    n_wrong = gr.Number(1, visible=False, elem_id="n-wrong")
            gallery = gr.Gallery(label="true → predicted (confidence), most confident first",
                                 columns=5, height="auto", visible=False, elem_id="wrong")
            for control in (show_wrong, n_wrong, show_cam, layer, opacity):
                control.change(wrong, [show_wrong, n_wrong, show_cam, layer, opacity], gallery)
    return page


def load_app(folder: str | Path):
    """The page for a folder ``export_app`` wrote (model, examples, mistakes, README's title). Only
    regular files inside the folder are shown: an example or mistake of ``app.json`` that names a
    path outside it (``/etc/hostname``, ``../secret.txt``), or a link that leads out of it (a Space's
    git repository can carry one), is left out, in one line naming them all."""
    folder = Path(folder)
    clf = Classifier.load(folder)
    about = read_json(folder / "app.json")
    damaged = app_json_problem(about)
    if damaged:
        raise ValueError(f"{folder / 'app.json'} is damaged: {damaged}. Fix: export the app again "
                         "(eva.export_app).")
    examples = [p for p in about["examples"] if _inside(folder, p)]
    mistakes = [{**m, "path": folder / m["path"]} for m in about["mistakes"]
                if _inside(folder, m["path"])]
    left_out = ([p for p in about["examples"] if p not in examples]
                + [m["path"] for m in about["mistakes"] if not _inside(folder, m["path"])])
    if left_out:
        print(f"Not served (not a file inside {folder}): {', '.join(map(str, left_out))}",
              flush=True)
    return build_app(clf, [folder / p for p in examples], mistakes, title=about["title"],
                     about=about["about"])


def app_json_problem(about) -> str:
    """What makes an ``app.json`` unusable, in words, or ""."""
    if not isinstance(about, dict):
        return "it holds no settings"
    for key in ("title", "about"):
        if not isinstance(about.get(key), str):
            return f"{key} is not text"
    if not (isinstance(about.get("examples"), list)
            and all(isinstance(p, str) for p in about["examples"])):
        return "examples is not a list of file names"
    keys = {"path", "true", "predicted", "confidence"}
    if not (isinstance(about.get("mistakes"), list)
            and all(isinstance(m, dict) and keys <= set(m) and isinstance(m["path"], str)
                    and isinstance(m["confidence"], (int, float)) for m in about["mistakes"])):
        return f"mistakes is not a list of {{{', '.join(sorted(keys))}}}"
    return ""


def _inside(folder: Path, name) -> bool:
    """Whether ``name`` (a path from app.json) is a regular file inside ``folder``, links followed."""
    try:
        path = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError, TypeError):  # missing, a loop of links, not a path
        return False
    return path.is_relative_to(folder.resolve()) and path.is_file()


class UploadLimit:
    """ASGI middleware: a POST to Gradio's upload route with more than ``MAX_FILES`` files or
    ``MAX_REQUEST`` bytes is answered 413 before Gradio stores any of it (one anonymous request
    could otherwise fill the disk, kept an hour)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" \
                or not scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if int(headers.get(b"content-length", b"0") or 0) > MAX_REQUEST:
            return await self.refuse(send, f"more than {MAX_REQUEST // 2**20} MB in one request")
        body, more = bytearray(), True  # appended in place: linear in the request's size
        while more:  # read it all (bounded) before Gradio sees any of it
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_REQUEST:
                return await self.refuse(send, f"more than {MAX_REQUEST // 2**20} MB in one request")
        kind = headers.get(b"content-type", b"").decode("latin-1")
        boundary = kind.partition("boundary=")[2].strip('"').encode("latin-1")
        if boundary and body.count(b"--" + boundary) - 1 > MAX_FILES:
            return await self.refuse(send, f"more than {MAX_FILES} file in one request")
        replayed = False

        async def again():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, again, send)

    @staticmethod
    async def refuse(send, why: str) -> None:
        text = f"Upload refused: {why}. Upload one picture of at most {MAX_UPLOAD}.".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})


def launch(folder: str | Path, **options) -> None:
    """Serve the app in ``folder`` (``options``: ``gradio.Blocks.launch``'s, e.g. server_port).
    SIGTERM (docker stop, systemd) stops it as Ctrl-C does: Gradio deletes the uploads it kept."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt
    # (class, args, kwargs): what the web framework's Middleware unpacks to, without importing it
    load_app(folder).launch(max_file_size=MAX_UPLOAD,
                            app_kwargs={"middleware": [(UploadLimit, (), {})]}, **options)
