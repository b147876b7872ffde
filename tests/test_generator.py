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
