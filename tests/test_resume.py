"""Runs in stretches: fit's time budget and resume=True, the range test kept with the run, every
notebook's checkpoint and budget wiring, and notebook 01 interrupted at smoke size and resumed to the
same weights and history as an unbroken run."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import papermill
import pytest
import torch

import eva_utils as eva
from eva_utils.machinery.checkpoint import load_checkpoint
from test_train import Tiny, cfg, loaders, same_run

ROOT = Path(__file__).resolve().parent.parent

def test_a_budget_stops_at_an_epoch_end_and_resume_true_finishes_the_same_run(tiny, tmp_path):
    torch.manual_seed(0)
    start = Tiny().state_dict()
    whole = Tiny()
    whole.load_state_dict(start)
    eva.fit(whole, *loaders(tiny), cfg(checkpoint_dir=str(tmp_path / "whole")), time_budget=1e6,
            progress=False)

    def stretch(**kw):
        model = Tiny()
        model.load_state_dict(start)
        return eva.fit(model, *loaders(tiny), cfg(checkpoint_dir=str(tmp_path / "cut")),
                       resume=True, progress=False, **kw)

    # The first epoch always runs (the budget cannot measure it sooner); then the stop says the
    # budget is shorter than an epoch, and what would fit.
    with pytest.raises(eva.BudgetSpent, match=r"Stopped after epoch 1 of 3.*run it again with "
                                              r"time_budget=60 or more: the budget is shorter"):
        stretch(time_budget=1e-9)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    # A budget shorter than the epochs already measured (kept in the checkpoint) could never train
    # one: refused up front, with the epoch's length and a budget that fits (it trained 0 epochs,
    # "an epoch takes about ...", every time it was run again).
    with pytest.raises(eva.TrainingError, match=r"The time budget, 0 s, is shorter than one epoch "
                                                r"of this run \(about \d+ s\).*Fix: time_budget=60 or more"):
        stretch(time_budget=1e-9)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    history = stretch()
    assert len(history) == 3 and history.resumed_at == [1]
    same_run(load_checkpoint(tmp_path / "cut" / "last.pt"),
             load_checkpoint(tmp_path / "whole" / "last.pt"))
    record = eva.run_record(history, Tiny(), "cpu")
    assert record["resumed_after_epochs"] == [1] and len(record["seconds_per_epoch"]) == 3


def test_resume_true_replays_the_earlier_epochs(tiny, tmp_path, capsys):
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=str(tmp_path)), progress=False)
    eva.fit(Tiny(), *loaders(tiny), cfg(epochs=2, checkpoint_dir=str(tmp_path)), resume=True)
    out = capsys.readouterr().out
    assert f"Resumed from {tmp_path / 'last.pt'} after epoch 2 of 2; epochs 1-2 as trained" in out
    assert out.count("epoch   1  train loss") == 1 and out.count("epoch   2  train loss") == 1


def test_resume_true_starts_afresh_without_a_checkpoint_and_needs_a_folder(tiny, tmp_path):
    h = eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1, checkpoint_dir=str(tmp_path / "new")),
                resume=True, progress=False)
    assert len(h) == 1 and h.resumed_at == [] and (tmp_path / "new" / "last.pt").exists()
    assert len(eva.fit(Tiny(), *loaders(tiny), cfg(epochs=1), resume=False, progress=False)) == 1
    with pytest.raises(ValueError, match=r"resume=True needs TrainConfig\(checkpoint_dir"):
        eva.fit(Tiny(), *loaders(tiny), cfg(), resume=True)
    with pytest.raises(ValueError, match=r"time_budget needs TrainConfig\(checkpoint_dir"):
        eva.fit(Tiny(), *loaders(tiny), cfg(), time_budget=60)
    for bad in (0, -5, "2h", float("nan")):
        with pytest.raises(ValueError, match="time_budget=.*give seconds"):
            eva.fit(Tiny(), *loaders(tiny), cfg(checkpoint_dir=str(tmp_path)), time_budget=bad)


def test_a_run_resumed_on_other_hardware_names_every_device(tiny, tmp_path, capsys):
    here = eva.device_name("cpu")
    with pytest.raises(eva.BudgetSpent):
        eva.fit(Tiny(), *loaders(tiny), cfg(checkpoint_dir=str(tmp_path)), time_budget=1e-9,
                progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["history"]["devices"] == [here]
    ckpt["history"]["devices"] = ["Tesla T4"]  # as if the first stretch ran in Colab
    torch.save(ckpt, tmp_path / "last.pt")
    capsys.readouterr()
    history = eva.fit(Tiny(), *loaders(tiny), cfg(checkpoint_dir=str(tmp_path)), resume=True)
    assert "after epoch 1 of 3; epoch 1 as trained before on Tesla T4:" in capsys.readouterr().out
    assert history.devices == ["Tesla T4", here, here]
    assert eva.run_record(history, Tiny(), "cpu")["device"] == f"Tesla T4 + {here}"


def test_the_range_test_is_kept_with_the_run_and_never_trusted_blindly(tiny, tmp_path, capsys):
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                             train=True)

    def sweep(model=None, **kw):
        torch.manual_seed(0)
        return eva.lr_range_test(model or eva.PlainCNN(num_classes=10), train, num_iter=10,
                                 checkpoint_dir=tmp_path, **kw)

    first = sweep()
    kept = tmp_path / "range_test.json"
    assert json.loads(kept.read_text())["result"]["minimum"] == first.minimum
    capsys.readouterr()
    again = sweep()
    assert again == first and "loaded from" in capsys.readouterr().out
    assert first.seconds > 0  # the sweep's own time, kept: a resumed run's record reports it
    kept.write_text('{"setup": {"model": "PlainCNN"}, "result": {"lrs"')  # cut short
    with pytest.warns(UserWarning, match="unreadable.*sweeping again"):
        redone = sweep()
    assert json.loads(kept.read_text())["result"]["losses"] == redone.losses  # replaced
    with pytest.warns(UserWarning, match="another model, loss, loader or sweep"):
        sweep(eva.SmallResNet(num_classes=10))
    assert json.loads(kept.read_text())["setup"]["model"] == "SmallResNet"
    with pytest.warns(UserWarning, match="another model, loss, loader or sweep"):  # the loss
        sweep(eva.SmallResNet(num_classes=10),
              criterion=torch.nn.CrossEntropyLoss(label_smoothing=0.2))
    assert "label_smoothing=0.2" in json.loads(kept.read_text())["setup"]["loss"]
    # this very sweep's setup, but picks no curve gives: returned as the result before
    for damage in ({"valley": -1.0}, {"minimum": float("nan")}, {"losses": [1.0]}):
        stored = json.loads(kept.read_text())
        stored["result"].update(damage)
        kept.write_text(json.dumps(stored))
        with pytest.warns(UserWarning, match="unreadable.*sweeping again"):
            redone = sweep(eva.SmallResNet(num_classes=10),
                           criterion=torch.nn.CrossEntropyLoss(label_smoothing=0.2))
        assert redone.valley > 0 and redone.minimum == redone.minimum


def test_a_run_resumed_on_another_device_keeps_its_range_test(tiny, tmp_path, capsys):
    """range_test.json was keyed on the precision and layout: a run begun on a T4 (float16) and
    resumed on a CPU swept again, overwrote the file, could pick a neighbouring rate, and fit then
    refused the resume ("lr: checkpoint 0.0853, now 0.0904"). The curve's meaning is the model's,
    the data's, the loss's and the sweep's; where and in what arithmetic it ran is kept beside it."""
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                             train=True)

    def sweep(**kw):
        torch.manual_seed(0)
        return eva.lr_range_test(eva.PlainCNN(num_classes=10), train, num_iter=10,
                                 checkpoint_dir=tmp_path, **kw)

    first = sweep(amp=True, channels_last=True)  # bfloat16 NHWC, as on one machine
    kept = json.loads((tmp_path / "range_test.json").read_text())
    assert kept["swept"] == {"device": "cpu", "precision": "bfloat16", "layout": "NHWC"}
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = sweep(amp=False, channels_last=False)  # float32 NCHW, as on another
    assert again == first and "loaded from" in capsys.readouterr().out


def test_a_sweep_cut_off_goes_on_where_it_was_kept(tiny, tmp_path, monkeypatch, capsys):
    """Nothing of the range test was kept until it ended (31 minutes on a 2-core CPU), so a
    disconnect during it cost the whole sweep. Its steps are kept as it goes; swept again, it
    replays them and goes on, to the same curve as a sweep never cut off."""
    from eva_utils.machinery import sweep as sweeping

    def loader():  # a new notebook kernel's: its shuffles start again
        return eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 10,
                                train=True)

    def sweep(folder, **kw):
        torch.manual_seed(0)
        return eva.lr_range_test(eva.PlainCNN(num_classes=10), loader(), num_iter=30,
                                 checkpoint_dir=folder, amp=False, **kw)

    whole = sweep(tmp_path / "whole")
    monkeypatch.setattr(sweeping.KeptFinder, "EVERY", 0.0)  # keep after every step
    real_step = sweeping.Progress.step

    def killed_at_12(self):
        real_step(self)
        if self.begun == 12:  # step 12 begins: 11 are done and kept
            raise KeyboardInterrupt
    monkeypatch.setattr(sweeping.Progress, "step", killed_at_12)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sweep(cut)
    part = torch.load(cut / "range_test.part.pt", weights_only=True)
    assert len(part["raw"]) == 11 and not (cut / "range_test.json").exists()
    monkeypatch.setattr(sweeping.Progress, "step", real_step)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's scheduler warning for the replayed steps too
        resumed = sweep(cut, verbose=True)
    out = capsys.readouterr().out
    assert "going on after step 11" in out and "11 of them kept from before" in out
    assert resumed.lrs == whole.lrs and resumed.losses == whole.losses  # float32 on the CPU: exact
    assert (cut / "range_test.json").exists() and not (cut / "range_test.part.pt").exists()

    # kept steps of another sweep, or a damaged file, are swept over, never replayed
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(sweeping.Progress, "step", killed_at_12)
        sweep(tmp_path / "other")
    monkeypatch.setattr(sweeping.Progress, "step", real_step)
    with pytest.warns(UserWarning, match="another model, loss, loader, sweep, kind of device or "
                                         "arithmetic; sweeping from the start"):
        torch.manual_seed(0)
        eva.lr_range_test(eva.PlainCNN(num_classes=10), loader(), num_iter=30, amp=True,
                          checkpoint_dir=tmp_path / "other")  # bfloat16 now
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "range_test.part.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.warns(UserWarning, match="unreadable.*sweeping from the start"):
        again = sweep(tmp_path / "damaged")
    assert again.losses == whole.losses


NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def execute(path: Path, out: Path, **params) -> nbformat.NotebookNode:
    papermill.execute_notebook(str(path), str(out), parameters=params, cwd=str(ROOT),
                               progress_bar=False, kernel_name="python3")
    return nbformat.read(out, as_version=4)


def up_to_the_record(path: Path, folder: Path) -> Path:
    """The notebook's cells up to the one that saves its run record: what resuming touches (the
    figures after it are the nbval run's to test)."""
    nb = nbformat.read(path, as_version=4)
    last = next(i for i, c in enumerate(nb.cells)
                if "save_json(RESULTS_JSON" in c.source or "save_runs(RESULTS_JSON" in c.source)
    nb.cells = nb.cells[:last + 1]
    short = folder / path.name
    nbformat.write(nb, short)
    return short


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_notebook_wires_its_checkpoints_and_budget_into_fit(path):
    """What makes a notebook resumable, read from its code: the run's training (its config built
    from EPOCHS) keeps its checkpoints in CHECKPOINT_DIR, resumes from there and stops at
    TIME_BUDGET: through fit, or fit_each for several models sharing one budget (01, also run,
    interrupted and resumed below). A lesson's short experiment (minutes) runs again instead."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "code")
    calls = re.findall(r"eva\.fit(?:_each)?\((?:[^()]|\([^()]*\))*\)", code)
    runs = [c for c in calls if "time_budget=" in c]
    assert runs, "no fit of the run's own"
    for call in runs:  # 04: the TimeBudget its range test drew on first
        assert "time_budget=TIME_BUDGET" in call or "time_budget=budget" in call
        assert ("checkpoint_dir=CHECKPOINT_DIR" in call if call.startswith("eva.fit_each(")
                else "resume=CHECKPOINT_DIR is not None" in call)
    configs = re.findall(r"eva\.TrainConfig\((?:[^()]|\([^()]*\))*\)", code)
    run_configs = [c for c in configs if "epochs=EPOCHS" in c]
    assert run_configs
    for config in run_configs:  # fit_each gives each model its own folder inside CHECKPOINT_DIR
        assert "checkpoint_dir=CHECKPOINT_DIR" in config or "eva.fit_each(" in code


def test_an_interrupted_notebook_resumes_to_the_same_run(tmp_path, monkeypatch):
    """Notebook 01, whose two models share one budget, at smoke size (two epochs each):
    TIME_BUDGET stops training after epoch 1; running the notebook again continues from the
    checkpoint, says so, records both epochs, and ends with the weights and history of an unbroken
    run. The unbroken run executes meanwhile in a second process: the machine's two cores, one
    thread each (the same arithmetic in all three runs)."""
    monkeypatch.setenv("EVA_SMOKE", "1")  # the kernels inherit these
    monkeypatch.setenv("EVA_DATA_DIR", os.environ.get("EVA_DATA_DIR", str(ROOT / "data")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    path = up_to_the_record(ROOT / "notebooks" / "01_cnn_vs_resnet.ipynb", tmp_path)
    unbroken = subprocess.Popen([sys.executable, "-m", "papermill", "--no-progress-bar", str(path),
                                 str(tmp_path / "3.ipynb"), "-p", "CHECKPOINT_DIR", str(whole)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(papermill.PapermillExecutionError) as stopped:
            execute(path, tmp_path / "1.ipynb", CHECKPOINT_DIR=str(cut), TIME_BUDGET=1e-9)
        assert stopped.value.ename == "BudgetSpent"
        resumed = execute(path, tmp_path / "2.ipynb", CHECKPOINT_DIR=str(cut),
                          RESULTS_JSON=str(tmp_path / "record.json"))
    finally:
        log, _ = unbroken.communicate(timeout=600)
    assert unbroken.returncode == 0, log[-3000:]
    text = "".join(o.get("text", "") for c in resumed.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "Resumed from" in text and "after epoch 1 of 2" in text
    runs = json.loads((tmp_path / "record.json").read_text())["runs"]
    assert runs[0]["resumed_after_epochs"] == [1] and len(runs[0]["seconds_per_epoch"]) == 2
    checkpoints = sorted(p.relative_to(cut) for p in cut.rglob("last.pt"))
    assert len(checkpoints) == 2  # each model in its own folder
    assert checkpoints == sorted(p.relative_to(whole) for p in whole.rglob("last.pt"))
    for name in checkpoints:
        same_run(load_checkpoint(cut / name), load_checkpoint(whole / name))


def test_a_budget_stop_in_a_notebook_is_one_line_not_a_traceback(tmp_path):
    """In Jupyter, Colab and papermill a stop at TIME_BUDGET showed a red traceback through fit's
    internals; it is one line that says where the run stopped and how to go on."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import eva_utils as eva\n"
        "data = eva.synthetic_data(train=200, test=100, seed=1)\n"
        "loaders = [eva.TensorLoader(data.train_images, data.train_labels, data.mean, data.std, 20,\n"
        "                            train=t) for t in (True, False)]\n"
        f"config = eva.TrainConfig(epochs=2, checkpoint_dir={str(tmp_path / 'run')!r})\n"
        "eva.fit(eva.PlainCNN(num_classes=10), *loaders, config, resume=True, time_budget=1e-9)")]
    nbformat.write(nb, tmp_path / "stretch.ipynb")
    with pytest.raises(papermill.PapermillExecutionError) as stopped:
        execute(tmp_path / "stretch.ipynb", tmp_path / "out.ipynb")
    assert stopped.value.ename == "BudgetSpent"
    error = [o for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
             if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(error) == 1 and len(error[0].traceback) == 1
    assert error[0].traceback[0].startswith("BudgetSpent: Time budget spent:")
    assert error[0].traceback[0].endswith("run it again with time_budget=60 or more: the budget "
                                          "is shorter than one epoch.")  # 1e-9 s


def test_one_slow_epoch_does_not_cut_every_later_stretch_short(tiny, tmp_path):
    """The budget guesses an epoch from the median of those trained before, not the slowest."""
    run = cfg(epochs=4, checkpoint_dir=str(tmp_path))
    train, test = loaders(tiny)
    original = train.set_epoch

    def stop_at_the_fourth(epoch):
        if epoch == 3:
            raise KeyboardInterrupt  # the kernel stopped by hand
        original(epoch)
    train.set_epoch = stop_at_the_fourth
    with pytest.raises(KeyboardInterrupt):
        eva.fit(Tiny(), train, test, run, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    ckpt["history"]["seconds"] = [1000.0, 0.01, 0.01]  # the first epoch shared the machine
    torch.save(ckpt, tmp_path / "last.pt")
    history = eva.fit(Tiny(), *loaders(tiny), run, resume=True, time_budget=100, progress=False)
    assert len(history) == 4


def test_a_stretch_plans_with_its_own_epochs_once_it_has_measured_one(tiny, tmp_path,
                                                                       monkeypatch):
    """A stretch resumed after one slow epoch (the first, on a loaded machine: 27 minutes where
    the rest took 9) kept planning for 1.2 times that epoch to its end, stopping 28 minutes early.
    The guess is dropped once this stretch has measured an epoch of its own."""
    run = cfg(epochs=5, checkpoint_dir=str(tmp_path))
    train, test = loaders(tiny)
    original = train.set_epoch

    def stop_at_the_second(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        original(epoch)
    train.set_epoch = stop_at_the_second
    with pytest.raises(KeyboardInterrupt):
        eva.fit(Tiny(), train, test, run, progress=False)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    ckpt["history"]["seconds"] = [1000.0]  # the slow first epoch: a guess of 1,200 s an epoch
    torch.save(ckpt, tmp_path / "last.pt")
    clock = [0.0]
    monkeypatch.setattr(eva.TimeBudget, "clock", staticmethod(lambda: clock[0]))
    real_record = eva.machinery.budget.Budget.record_epoch
    monkeypatch.setattr(eva.machinery.budget.Budget, "record_epoch", lambda self, seconds: (
        real_record(self, 100.0), clock.__setitem__(0, clock[0] + 100.0)))  # epochs of 100 s
    history = eva.fit(Tiny(), *loaders(tiny), run, resume=True, time_budget=eva.TimeBudget(1300),
                      progress=False)
    assert len(history) == 5  # stopped after epoch 3 before, with 1,100 s left


def test_one_time_budget_for_the_range_test_and_training(tiny, tmp_path, monkeypatch):
    """The range test did not look at the budget (a 600 s budget ran 46 minutes: a 31-minute
    sweep, then an epoch), and the stop then counted only what fit was passed ("15.2 min of 1 s").
    One TimeBudget is drawn on by both: a sweep longer than the whole budget is refused, one longer
    than what is left stops before it spends more, and fit's stop counts the whole budget."""
    clock = [0.0]
    monkeypatch.setattr(eva.TimeBudget, "clock", staticmethod(lambda: clock[0]))
    train, test = loaders(tiny)

    def sweep(budget, seconds_a_step):
        import eva_utils.machinery.sweep
        real = eva_utils.machinery.sweep.Progress.step

        def step(self):  # each step takes seconds_a_step on the budget's clock
            clock[0] += seconds_a_step
            self.started -= seconds_a_step  # and on the sweep's own
            return real(self)
        monkeypatch.setattr(eva_utils.machinery.sweep.Progress, "step", step)
        try:
            return eva.lr_range_test(Tiny(), train, num_iter=20, time_budget=budget,
                                     verbose=False, checkpoint_dir=tmp_path)
        finally:
            monkeypatch.setattr(eva_utils.machinery.sweep.Progress, "step", real)

    few = pytest.warns(UserWarning, match="only 5 batches")  # tiny data: the picks do not matter
    with few, pytest.raises(eva.TrainingError, match=r"The time budget, 60 s, is shorter than the "
                                                     r"LR range test \(about \d+\.\d min\).*"
                                                     r"time_budget=\d+"):
        sweep(eva.TimeBudget(60), 10.0)  # 20 steps of 10 s: never fits in 60 s
    budget = eva.TimeBudget(600)
    clock[0] += 500  # most of it spent already
    with pytest.warns(UserWarning, match="only 5 batches"), \
            pytest.raises(eva.BudgetSpent, match=r"The rest of the LR range test would take about \d\.\d min, more "
                                              r"than the \d+ s "
                                              r"left of the 10\.0 min budget: stopped after 3 of "
                                              r"its 20 steps\. Its 3 steps are kept in .*"
                                              r"range_test\.part\.pt: to go on from there, run "
                                              r"the same code again\."):
        sweep(budget, 10.0)
    assert not (tmp_path / "range_test.json").exists()
    assert len(torch.load(tmp_path / "range_test.part.pt", weights_only=True)["raw"]) == 3
    budget = eva.TimeBudget(600)
    with pytest.warns(UserWarning, match="only 5 batches"):
        sweep(budget, 1.0)  # the 17 steps left: 17 s of the 600
    assert not (tmp_path / "range_test.part.pt").exists()
    real_record = eva.machinery.budget.Budget.record_epoch
    monkeypatch.setattr(eva.machinery.budget.Budget, "record_epoch", lambda self, seconds: (
        real_record(self, 100.0), clock.__setitem__(0, clock[0] + 100.0)))  # epochs of 100 s
    with pytest.raises(eva.BudgetSpent, match=r"Time budget spent: \d\.\d min of 10\.0 min used, "
                                              r"\d+ s of it before this training began, "
                                              r"and an epoch takes about 100 s\. Stopped after "
                                              r"epoch 5 of 9.*resume=True"):
        eva.fit(Tiny(), train, test, cfg(epochs=9, checkpoint_dir=tmp_path), time_budget=budget,
                progress=False)
