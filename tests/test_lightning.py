"""eva under PyTorch Lightning: the same weights as fit, checkpoints that feed the app, and the
settings it refuses."""
import copy
import json
import warnings

import pytest
import torch

import eva_utils as eva

L = pytest.importorskip("lightning", reason="the optional extra: pip install lightning")
from eva_utils.lightning import EvaDataModule, EvaModule, trainer_precision  # noqa: E402


def trainer(tmp_path, epochs: int, **kw):
    with warnings.catch_warnings():  # its advice on workers and GPUs, for a tiny CPU run
        warnings.simplefilter("ignore")
        return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, **kw)


def data_loaders(tiny):
    train = eva.TensorLoader(tiny.train_images, tiny.train_labels, tiny.mean, tiny.std, 20,
                             train=True, classes=tiny.classes)
    test = eva.TensorLoader(tiny.test_images, tiny.test_labels, tiny.mean, tiny.std, 50,
                            train=False, classes=tiny.classes)
    return train, test


def test_lightning_ends_with_the_weights_fit_gets(tiny, tmp_path):
    """Constant LR, no augmentation, two epochs from the same start: the same weights (in float32,
    pinned: the trainer below runs Lightning's default "32-true", while fit's default on an AMX CPU
    is bfloat16)."""
    cfg = eva.TrainConfig(epochs=2, lr=0.05, schedule="constant", label_smoothing=0.1, tta=True,
                          amp=False)
    torch.manual_seed(0)
    start = eva.SmallResNet(num_classes=10, repeats=1)
    ours, theirs = copy.deepcopy(start), copy.deepcopy(start)
    history = eva.fit(ours, *data_loaders(tiny), cfg, progress=False)
    module = EvaModule(theirs, cfg)
    run = trainer(tmp_path, 2, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.fit(module, EvaDataModule(*data_loaders(tiny)))
    moved = 0
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(a, start.state_dict()[name])
    assert moved > 10  # trained, not two untouched copies
    assert run.callback_metrics["val_acc"].item() == pytest.approx(history.test_acc[-1], abs=0.01)
    assert run.callback_metrics["val_loss"].item() == pytest.approx(history.test_loss[-1], rel=1e-4)


def test_a_lightning_checkpoint_feeds_the_app(tiny, tmp_path):
    cfg = eva.TrainConfig(epochs=1, lr=0.05, schedule="onecycle")
    train, test = data_loaders(tiny)
    run = trainer(tmp_path, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.fit(EvaModule(eva.SmallResNet(num_classes=10, repeats=1), cfg), EvaDataModule(train, test))
    path = run.checkpoint_callback.best_model_path
    module = EvaModule.load_from_checkpoint(path, model=eva.SmallResNet(num_classes=10, repeats=1),
                                            cfg=cfg)
    predictions = eva.predict(module.model, test, tiny.classes)
    folder = eva.export_app(module.model, tiny, predictions, tmp_path / "space")
    assert json.loads((folder / "model.json").read_text())["architecture"] == "SmallResNet"
    for k, v in module.model.state_dict().items():
        assert torch.equal(eva.Classifier.load(folder).model.state_dict()[k], v), k


def test_what_lightning_does_its_own_way_is_refused_with_the_fix(tiny, tmp_path):
    model = eva.SmallResNet(num_classes=10, repeats=1)
    with pytest.raises(ValueError, match="WeightAveraging"):
        EvaModule(model, eva.TrainConfig(epochs=1, lr=0.05, ema_decay=0.99))
    with pytest.raises(TypeError, match="eva.TrainConfig"):
        EvaModule(model, {"epochs": 1})
    train, test = data_loaders(tiny)
    with pytest.raises(ValueError, match="train=True, then one built with train=False"):
        EvaDataModule(test, train)
    run = trainer(tmp_path, 2)
    with pytest.raises(ValueError, match=r"max_epochs=2.*epochs=3.*Trainer\(max_epochs=cfg.epochs\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run.fit(EvaModule(model, eva.TrainConfig(epochs=3, lr=0.05)), EvaDataModule(train, test))


def test_a_test_loader_of_other_classes_and_a_frozen_model_are_refused_as_fit_refuses(tiny,
                                                                                      tmp_path):
    """EvaDataModule took a test loader naming other classes without a word, and a fully frozen
    model met torch's "optimizer got an empty parameter list": fit's messages, from fit's checks."""
    train, _ = data_loaders(tiny)
    other = eva.TensorLoader(tiny.test_images, tiny.test_labels % 9, tiny.mean, tiny.std, 50,
                             train=False, classes=tiny.classes[:9])
    with pytest.raises(eva.TrainingError, match=r"The test loader's classes .* are not the "
                                                r"training loader's"):
        EvaDataModule(train, other)
    model = eva.SmallResNet(num_classes=10, repeats=1).requires_grad_(False)
    with pytest.raises(eva.TrainingError, match="Every parameter of the model is frozen"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(tmp_path, 1).fit(EvaModule(model, eva.TrainConfig(epochs=1, lr=0.05)),
                                     EvaDataModule(*data_loaders(tiny)))



@pytest.mark.parametrize("how", ["no test loader", "limit_val_batches=0",
                                 "check_val_every_n_epoch=2"])
def test_a_plateau_schedule_without_validation_is_refused_before_training(tiny, tmp_path, how):
    """schedule="plateau" watches the test loss; a Trainer that does not validate every epoch
    trained a whole epoch, then stopped in Lightning's "val_loss which is not available"."""
    train, test = data_loaders(tiny)
    kw = {"limit_val_batches=0": {"limit_val_batches": 0},
          "check_val_every_n_epoch=2": {"check_val_every_n_epoch": 2}}.get(how, {})
    data = {"train_dataloaders": train} if how == "no test loader" else {
        "datamodule": EvaDataModule(train, test)}
    module = EvaModule(eva.SmallResNet(num_classes=10, repeats=1),
                       eva.TrainConfig(epochs=2, lr=0.05, schedule="plateau"))
    steps = []
    module.training_step = lambda batch, i: steps.append(i)
    with pytest.raises(ValueError, match=r"schedule='plateau'.*does not validate after every "
                                         r"epoch.*EvaDataModule\(train_loader, test_loader\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(tmp_path, 2, **kw).fit(module, **data)
    assert steps == []  # refused before the first step

@pytest.mark.parametrize("amx, amp, expected", [(True, None, "bf16-mixed"), (False, None, "32-true"),
                                                (False, True, "bf16-mixed"), (True, False, "32-true")])
def test_trainer_precision_follows_fits_rule_on_the_cpu(monkeypatch, amx, amp, expected):
    monkeypatch.setattr(eva.machinery.precision, "cpu_has_bf16", lambda: amx)
    assert trainer_precision(eva.TrainConfig(epochs=1, lr=0.1, amp=amp), "cpu") == expected


def test_validation_metrics_are_averaged_over_every_process(tiny, monkeypatch):
    """Under DDP each process validates its share; a plateau schedule watching val_loss must see
    the same number on every rank, so both metrics are logged with sync_dist=True."""
    logged = {}
    module = EvaModule(eva.SmallResNet(num_classes=10, repeats=1), eva.TrainConfig(tta=True))
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.update({name: kw}))
    _, test = data_loaders(tiny)
    module.validation_step(next(iter(test)), 0)
    assert {name: kw.get("sync_dist") for name, kw in logged.items()} == {"val_loss": True,
                                                                         "val_acc": True}


@pytest.mark.parametrize("change, trainer_kw, words", [
    ({"grad_clip": 1e-9}, {}, r"grad_clip=1e-09\) but Trainer\(gradient_clip_val=None\)"),
    ({"amp": False}, {"precision": "bf16-mixed"}, r"amp=False\) means '32-true' here, but "
                                                  r"Trainer\(precision='bf16-mixed'\)"),
    ({"ema_decay": 0.99}, {}, r"ema_decay=..., compile=True\) are fit's own"),
    ({"lr": -1}, {}, r"lr=-1: must be a finite number > 0"),
    ({}, {"precision": "64-true"}, r"Trainer\(precision='64-true'\): eva trains float32 weights"),
    ("4 outputs", {}, r"the model has 4 outputs but the data has 10 classes"),
])
def test_lightning_refuses_what_would_contradict_the_config(tiny, tmp_path, change, trainer_kw,
                                                            words):
    """Lightning ignored grad_clip, autocast despite amp=False, dropped an ema_decay or lr set after
    the module was built, trained a 4-output model on 10 classes and trained in float64."""
    cfg = eva.TrainConfig(epochs=1, lr=0.05)
    model = eva.SmallResNet(num_classes=4 if change == "4 outputs" else 10, repeats=1)
    module = EvaModule(model, cfg)
    for key, value in (change if isinstance(change, dict) else {}).items():
        setattr(cfg, key, value)  # after EvaModule(...): a student's later edit
    run = trainer(tmp_path, 1, enable_checkpointing=False, **trainer_kw)
    with pytest.raises(ValueError, match=words), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.fit(module, EvaDataModule(*data_loaders(tiny)))


def test_resuming_another_models_or_another_configs_checkpoint_is_refused(tiny, tmp_path):
    """A string as the model, a .ckpt of another model (torch's size-mismatch traceback before) and
    a .ckpt resumed under another TrainConfig (the old optimizer's learning rate went on under the
    new label smoothing, silently) each get one message; loading the weights to predict with
    another config stays allowed."""
    with pytest.raises(TypeError, match=r"model must be a torch nn.Module.*got str 'resnet'"):
        EvaModule("resnet", eva.TrainConfig(epochs=1, lr=0.05))
    cfg = eva.TrainConfig(epochs=2, lr=0.05, schedule="constant")
    run = trainer(tmp_path / "a", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.fit(EvaModule(eva.SmallResNet(num_classes=10, repeats=1), cfg),
                EvaDataModule(*data_loaders(tiny)))
    path = run.checkpoint_callback.best_model_path
    cases = [(eva.PlainCNN(num_classes=10), cfg, r"holds the weights of another model: \d+ of them "
              r"differ from this PlainCNN's.*start without ckpt_path="),
             (eva.SmallResNet(num_classes=10, repeats=1), eva.TrainConfig(
                 epochs=2, lr=0.05, schedule="constant", label_smoothing=0.1),
              r"(?s)differs from the one that wrote it in\n  label_smoothing: checkpoint 0.0, now 0.1"
              r".*start a new run without ckpt_path=")]
    for model, other, words in cases:
        with pytest.raises(ValueError, match=words), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer(tmp_path / "b", 2).fit(EvaModule(model, other), EvaDataModule(
                *data_loaders(tiny)), ckpt_path=path)
    module = EvaModule.load_from_checkpoint(path, model=eva.SmallResNet(num_classes=10, repeats=1),
                                            cfg=cases[1][1])
    assert module.cfg.label_smoothing == 0.1  # weights to predict with: the config is not checked


def test_the_weights_are_channels_last_before_the_strategy_wraps_them(tiny, tmp_path,
                                                                      monkeypatch):
    """EvaModule turned the weights channels-last in on_fit_start, after the strategy had set the
    model up (under DDP: its gradient buckets were built for the old layout). It does so in setup,
    before the strategy's own setup."""
    strategy = type(trainer(tmp_path, 1).strategy)
    original, seen = strategy.setup, []

    def setup(self, run):
        conv = next(p for p in run.lightning_module.parameters() if p.dim() == 4)
        seen.append(conv.is_contiguous(memory_format=torch.channels_last)
                    and not conv.is_contiguous())
        return original(self, run)
    monkeypatch.setattr(strategy, "setup", setup)
    cfg = eva.TrainConfig(epochs=1, lr=0.05, channels_last=True, amp=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(tmp_path, 1, enable_checkpointing=False).fit(
            EvaModule(eva.PlainCNN(num_classes=10), cfg), EvaDataModule(*data_loaders(tiny)))
    assert seen == [True]
