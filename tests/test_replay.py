import pytest
import torch

from edgekd.distill.replay import ReplayMemory


def _fill(memory, batches=100, n=100):
    for i in range(batches):
        memory.push(torch.full((n, 1, 2, 2), float(i)), torch.full((n, 3), float(i)))


def test_fifo_keeps_only_the_most_recent_images():
    m = ReplayMemory(1000, (1, 2, 2), 3, torch.device("cpu"), "fifo")
    _fill(m)
    assert len(m) == 1000 and m.x[:, 0, 0, 0].min() == 90


def test_reservoir_keeps_a_uniform_sample_of_the_whole_run():
    torch.manual_seed(0)
    m = ReplayMemory(1000, (1, 2, 2), 3, torch.device("cpu"), "reservoir")
    _fill(m)
    batch_of = m.x[:, 0, 0, 0]
    assert len(m) == 1000 and m.seen == 10_000
    # each tenth of the run holds ~10% of the memory (binomial sd ~0.95 points)
    shares = torch.stack([((batch_of >= k) & (batch_of < k + 10)).float().mean() for k in range(0, 100, 10)])
    assert (shares - 0.1).abs().max() < 0.04, shares
    assert torch.equal(m.t[:, 0], batch_of)  # logits stay with their images


def test_reservoir_keeps_each_image_with_its_own_logits():
    torch.manual_seed(0)
    m = ReplayMemory(16, (1, 2, 2), 3, torch.device("cpu"), "reservoir")
    for i in range(50):  # small memory, big batches: many images of one batch draw the same slot
        ids = torch.arange(i * 64, (i + 1) * 64, dtype=torch.float32)
        m.push(ids.view(-1, 1, 1, 1).expand(-1, 1, 2, 2), ids.view(-1, 1).expand(-1, 3))
    assert torch.equal(m.x[:, 0, 0, 0], m.t[:, 0]) and len(set(m.t[:, 0].tolist())) == 16


def test_reservoir_state_round_trip_and_partial_fill():
    m = ReplayMemory(150, (1, 2, 2), 3, torch.device("cpu"), "reservoir")
    _fill(m, batches=2)  # the memory fills inside the second batch; the rest goes to the reservoir
    assert len(m) == 150 and m.seen == 200
    # algorithm R: all 100 first-batch images went in, then 50 of the second batch replaced some at
    # random (expected ~71 left); writing the whole second batch in would leave exactly 50
    assert (m.x[:, 0, 0, 0] == 0).sum() > 50
    m2 = ReplayMemory(150, (1, 2, 2), 3, torch.device("cpu"), "reservoir")
    m2.load_state_dict(m.state_dict())
    assert m2.seen == 200 and torch.equal(m2.x, m.x)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="reservoir"):
        ReplayMemory(10, (1, 2, 2), 3, torch.device("cpu"), "lru")
