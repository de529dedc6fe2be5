import pytest
import torch
from torch import nn

from eva_utils.models import CustomResNet, PlainCNN, ResNet18, SmallResNet, count_parameters


@pytest.mark.parametrize("model, total, body", [
    (PlainCNN(num_classes=10), 81_578, 65_568),                 # assignment 000's table: 65,568 + our linear head
    (SmallResNet(num_classes=10), 491_082, 485_952),            # assignment 000's table: 485,952 + our linear head
    (SmallResNet(repeats=2, num_classes=10), 491_082, 485_952),   # weight sharing adds no parameter
    (ResNet18(norm="layer", num_classes=10), 11_173_962, None),   # assignment 002
    (ResNet18(norm="batch", num_classes=10), 11_173_962, None),
    (CustomResNet(num_classes=10), 6_573_120, None),            # assignment 003
])
def test_parameter_counts_and_output_shape(model, total, body):
    assert count_parameters(model) == total
    if body is not None:
        assert total - count_parameters(model.head) == body
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("make", [PlainCNN, SmallResNet, lambda **k: SmallResNet(repeats=2, **k),
                                  ResNet18, CustomResNet])
def test_any_class_count_and_image_size(make):
    model = make(num_classes=5).eval()
    for size in ((48, 48), (64, 40), (model.min_input_size,) * 2):
        assert model(torch.randn(2, 3, *size)).shape == (2, 5)
    small = model.min_input_size - 1
    with pytest.raises(ValueError, match=f"needs images of at least {model.min_input_size}x"
                                         f"{model.min_input_size} pixels.*got {small}x{small}"):
        model(torch.randn(1, 3, small, small))
    assert model.init_args["num_classes"] == 5


def test_small_resnet_under_500k_for_notebook_02():
    assert count_parameters(SmallResNet(repeats=2, num_classes=10)) < 500_000


@pytest.mark.parametrize("model", [PlainCNN(num_classes=10), SmallResNet(repeats=2, num_classes=10), ResNet18(num_classes=10), CustomResNet(num_classes=10)])
def test_every_module_registered_once(model):
    # Registered twice: the same module object under two names.
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.named_modules()))
    # Left unregistered: a module kept in a plain list/tuple/dict attribute is invisible to .to(),
    # .parameters() and state_dict().
    for m in model.modules():
        for name, value in vars(m).items():
            items = value.values() if isinstance(value, dict) and not name.startswith("_") else (
                value if isinstance(value, (list, tuple)) else ())
            assert not any(isinstance(v, nn.Module) for v in items), f"{type(m).__name__}.{name}"


def test_recursive_resnet_costs_more_compute_not_parameters():
    calls = []
    model = SmallResNet(repeats=2, num_classes=10)
    model.block2.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2


def test_resnet18_layer_norm_uses_groupnorm_only():
    norms = {type(m) for m in ResNet18(norm="layer", num_classes=10).modules()
             if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))}
    assert norms == {nn.GroupNorm}
    assert all(m.num_groups == 1 for m in ResNet18(norm="layer", num_classes=10).modules()
               if isinstance(m, nn.GroupNorm))
    with pytest.raises(ValueError, match="norm="):
        ResNet18(norm="instance", num_classes=10)


def test_custom_resnet_logit_scale():
    torch.manual_seed(0)
    a = CustomResNet(num_classes=10).eval()
    b = CustomResNet(num_classes=10, logit_scale=0.125).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(b(x), a(x) / 8)
