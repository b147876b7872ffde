"""Distillation in several processes (torchrun, gloo on CPU): the collectives, then whole runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from edgekd.errors import UsageError

BIN = Path(sys.executable).parent


def _rank_main(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from edgekd.distill.distributed import World

    world = World.from_environment("cpu")
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = torch.full((3,), float(rank + 1))
    q.grad = torch.full((2, 2), 10.0 * (rank + 1))
    world.average_gradients([p, q])
    m = torch.nn.Linear(2, 2)
    torch.manual_seed(rank)
    torch.nn.init.normal_(m.weight)
    world.sync_module(m)
    result = {"p": p.grad.tolist(), "q": q.grad.tolist(), "mean": world.mean(torch.tensor([rank * 2.0])).tolist(),
              "max": world.maximum([rank, 5 - rank]), "from_main": world.from_main(f"rank{rank}"),
              "gather": world.gather(rank * 10), "weight": m.weight.tolist()}
    try:
        world.raise_if_any(UsageError("bad on rank 1") if rank == 1 else None)
    except UsageError as e:
        result["error"] = str(e)
    world.close()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def test_collectives_on_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["p"] == [1.5] * 3 and r["q"] == [[15.0, 15.0]] * 2  # the average of both ranks' gradients
        assert r["mean"] == [1.0] and r["max"] == [1.0, 5.0] and r["from_main"] == "rank0"
        assert r["error"] == "bad on rank 1"  # an error on one rank stops both
    assert r0["weight"] == r1["weight"]  # rank 0's weights everywhere
    assert r0["gather"] == [0, 10] and r1["gather"] is None


def _distill(args, out, nproc=1, check=True):
    launch = ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "edgekd"] if nproc > 1
              else [sys.executable, "-m", "edgekd"])
    cmd = [*launch, "distill", "demo", "--out", str(out), "--set", "eval_every_s=1e9", "--set", "lr_schedule=constant",
           "--set", "calib_images=32", "--batch-size", "32", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _models(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def test_torchrun_two_processes_write_one_run_and_resume_exactly(tmp_path):
    from edgekd.models.checkpoint import load_model

    one, two, full = tmp_path / "one", tmp_path / "two", tmp_path / "full"
    _distill(["--iterations", "3"], one)
    _distill(["--iterations", "3"], two, nproc=2)
    # The run directory is what one process writes: same files, same student architecture.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    a, b = load_model(one / "student.pt").model.state_dict(), load_model(two / "student.pt").model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    state = _models(two)
    assert state["world_size"] == 2 and len(state["ranks"]) == 1 and state["step"] == 3
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # rank 0 alone logs
    # Another number of processes cannot resume it; the same number resumes it exactly.
    refused = _distill(["--iterations", "6", "--resume"], two, check=False)
    assert refused.returncode == 2 and "torchrun --nproc_per_node 2" in refused.stderr
    _distill(["--iterations", "6", "--resume"], two, nproc=2)
    _distill(["--iterations", "6"], full, nproc=2)
    x, y = _models(two)["models"], _models(full)["models"]
    for part in ("student", "generator"):
        assert all(torch.equal(x[part][k], y[part][k]) for k in x[part]), part
    # Two ranks learnt from different batches: the weights differ from the one-process run's.
    assert not all(torch.equal(_models(one)["models"]["student"][k], state["models"]["student"][k])
                   for k in state["models"]["student"])




def _layout_main(rank: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from edgekd.distill.distributed import World

    world = World.from_environment("cpu")
    conv = torch.nn.Conv2d(3, 4, 3)
    torch.manual_seed(rank)
    torch.nn.init.normal_(conv.weight)
    if rank == 1:  # another memory format on one rank: the weights must arrive in logical order
        conv.to(memory_format=torch.channels_last)
    world.sync_module(conv)
    Path(out, f"w{rank}.json").write_text(json.dumps(conv.weight.contiguous().tolist()))
    world.close()


def test_sync_module_across_memory_formats(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_layout_main, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "w0.json").read_text() == (tmp_path / "w1.json").read_text()
