import pytest
import torch

from edgekd.distill.generator import OUTPUTS, Generator


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (4, 40, 24)])
@pytest.mark.parametrize("output", OUTPUTS)
def test_generator_shape_and_round_trip(shape, output):
    g = Generator(16, shape, 16, output, mean=(0.2,), std=(0.4,))
    z = torch.randn(4, 16)
    x = g.eval()(z)
    assert x.shape == (4, *shape)
    g2 = Generator.from_description(g.describe())
    g2.load_state_dict(g.state_dict())
    assert torch.equal(g2.eval()(z), x)


def test_pixel_output_stays_in_the_teachers_valid_input_range():
    mean, std = (0.5, 0.4, 0.3), (0.5, 0.2, 0.25)
    g = Generator(16, (3, 32, 32), 16, "pixel", mean, std)
    with torch.no_grad():
        x = g(torch.randn(64, 16) * 10)  # large latents push the sigmoid to both ends
    lo = (0 - torch.tensor(mean)) / torch.tensor(std)
    hi = (1 - torch.tensor(mean)) / torch.tensor(std)
    per_channel = x.transpose(0, 1).flatten(1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()


def test_bn_output_is_whitened_per_channel():
    g = Generator(16, (3, 32, 32), 16, "bn")
    x = g.train()(torch.randn(64, 16))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-2)


def test_unknown_output_is_refused():
    with pytest.raises(ValueError, match="pixel"):
        Generator(16, (1, 32, 32), 16, "rgb")


@pytest.mark.parametrize("output", OUTPUTS)
def test_grey_generator_writes_one_picture_into_every_channel(output):
    """ImageNet's per-channel normalisation, as a grey X-ray fed to an RGB backbone gets it: after undoing
    each channel's own (x * std + mean), the three channels are the same picture; the round trip keeps it."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    g = Generator(16, (3, 32, 32), 16, output, mean, std, grey=True)
    z = torch.randn(8, 16)
    x = g.train()(z)
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(pixels[:, 1], pixels[:, 0], atol=1e-5) and torch.allclose(pixels[:, 2], pixels[:, 0], atol=1e-5)
    assert pixels[:, 0].std() > 0.05  # a picture, not a constant
    g2 = Generator.from_description(g.describe())
    g2.load_state_dict(g.state_dict())
    assert torch.equal(g2.eval()(z), g.eval()(z))
    colour = Generator(16, (3, 32, 32), 16, output, mean, std)
    px = colour.train()(z) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert not torch.allclose(px[:, 1], px[:, 0], atol=1e-3)  # the default does make colour
