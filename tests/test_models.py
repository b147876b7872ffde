import pytest
import torch

from edgekd.errors import ModelError
from edgekd.models.info import count_macs, count_parameters
from edgekd.models.registry import create_model, get_entry, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    entry = get_entry(name)
    size = 32 if entry.family == "small" else 64
    model = create_model(name, num_classes=7, in_channels=1 if entry.family == "small" else 3)
    x = torch.randn(2, 1 if entry.family == "small" else 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"])
def test_torchvision_models_take_other_channel_counts(name):
    model = create_model(name, num_classes=4, in_channels=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)


def test_aliases_resolve_to_one_entry():
    assert get_entry("mobilenetv2").name == get_entry("MobileNet-V2").name == "mobilenet_v2"
    assert get_entry("lenet5_half").name == "lenet5-half"


def test_unknown_architecture_suggests_near_names():
    with pytest.raises(ModelError, match="did you mean.*mobilenet_v2"):
        get_entry("mobilnetv2")


def test_bad_class_count_is_an_error():
    with pytest.raises(ModelError, match="at least 2 classes"):
        create_model("lenet5", num_classes=1)


def test_parameter_and_mac_counts_match_hand_computation():
    model = create_model("lenet5", 10, 1)
    # conv1 6*1*25+6, conv2 16*6*25+16, conv3 120*16*25+120, fc1 84*120+84, fc 10*84+10
    assert count_parameters(model) == 156 + 2416 + 48120 + 10164 + 850
    macs = 6 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 120 * 16 * 25 + 120 * 84 + 84 * 10
    assert count_macs(model, (1, 32, 32)) == macs


@pytest.mark.parametrize("name", ["lenet5", "lenet5-half"])
def test_lenets_take_28px_inputs_padded_to_32(name):
    # A 28x28 MNIST teacher's student: the input is centred in a 32x32 field, as LeCun's LeNet-5 read it.
    torch.manual_seed(0)
    model = create_model(name, 10, 1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model(torch.nn.functional.pad(x, [2, 2, 2, 2])))
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
