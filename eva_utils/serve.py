"""A finished run in the browser, without writing any code: the checkpoint ``fit`` wrote becomes
the web app (``deploy.export_checkpoint``), served on 127.0.0.1:7860 or kept as a folder.

    python -m eva_utils.serve checkpoints/04-seed0/best.pt --data data
    python -m eva_utils.serve checkpoints/04-seed0/best.pt --data data --out space --no-launch

(A module of its own, which ``import eva_utils`` does not import, so ``python -m`` runs it cleanly.)
"""
import argparse
import socket
import tempfile
from pathlib import Path

from .app import gradio, launch
from .checkpoint import CheckpointError
from .deploy import export_checkpoint
from .images import DataError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eva_utils.serve", description=(
        "Serve a checkpoint written by eva.fit as a web app (Gradio), or export it as a folder "
        "for Hugging Face Spaces."))
    parser.add_argument("checkpoint", help="a best.pt or last.pt that fit wrote")
    parser.add_argument("--data", help="the data it trained on (for examples and mistakes)")
    parser.add_argument("--out", help="write the app folder here (default: a temporary folder)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--no-launch", action="store_true", help="export only, do not serve")
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.strip():
        parser.error(f"--out {args.out!r}: give the folder to write the app into, e.g. --out space")
    if args.no_launch and not args.out:
        parser.error("--no-launch keeps only the app folder: say where with --out FOLDER")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: give a port from 1 to 65535 (default 7860)")
    if not args.no_launch and not port_free(args.port):  # said before minutes of exporting
        parser.exit(2, f"error: port {args.port} on 127.0.0.1 is in use (another app still "
                       "running?). Fix: stop it, or give another --port.\n")
    # Without --out the app lives in a temporary folder, removed when the server stops.
    with tempfile.TemporaryDirectory(prefix="eva-app-") as scratch:
        try:
            gradio()  # the missing extra, said before minutes of exporting
            folder = export_checkpoint(args.checkpoint, args.out or Path(scratch) / "app",
                                       args.data)
        except (ImportError, CheckpointError, DataError, FileExistsError, ValueError) as exc:
            parser.exit(2, f"error: {exc}\n")  # the message is the whole story: no traceback
        print(f"App written to {folder}", flush=True)  # flushed: a log file gets it now
        if not args.no_launch:
            launch(folder, server_port=args.port)


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    main()
