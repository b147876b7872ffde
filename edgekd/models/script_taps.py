"""BatchNorm inputs read out of a TorchScript teacher's graph, for the BN-statistics prior.

A ScriptModule takes no forward hooks, and a file that does not fit a registered architecture cannot be
rebuilt as an eager module (rebuild.py), yet its graph still holds every `aten::batch_norm` call with its input
and the layer's running mean and variance. A copy of the inlined forward graph that also returns those
values, called on the module's own weights, runs the teacher exactly and exposes what a forward hook on
each BatchNorm would have seen. The copy is checked against the file's outputs on random inputs before it
is used; where any part of this fails (another TorchScript version, BN inside control flow), the teacher
stays as loaded and distils on its logits alone, as before.

The graph calls are private TorchScript APIs (torch._C), stable since PyTorch 1.x; every use is inside
`tap_batchnorm`'s try block.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

BNInputs = List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (input, running mean, running var) per layer


def _batchnorm_nodes(graph: torch._C.Graph) -> List[torch._C.Node]:
    """The inlined graph's top-level batch_norm calls that track running statistics, in execution order."""
    return [n for n in graph.nodes() if n.kind() == "aten::batch_norm"
            and all(n.inputsAt(i).type().kind() != "NoneType" for i in (3, 4))]


def _tapped_function(script: torch.jit.ScriptModule) -> Tuple[Any, int]:
    """(a function of (module, x) returning (the forward's output, input, mean, var, input, mean, var, ...)),
    and how many BatchNorm layers it reads."""
    graph = script.forward.graph.copy()
    torch._C._jit_pass_inline(graph)  # submodule calls become their bodies: every batch_norm is visible
    nodes = _batchnorm_nodes(graph)
    ret = graph.return_node()
    values = [ret.inputsAt(0)] + [n.inputsAt(i) for n in nodes for i in (0, 3, 4)]
    pack = graph.create("prim::TupleConstruct", values)
    pack.output().setType(torch._C.TupleType([v.type() for v in values]))
    graph.insertNode(pack)
    pack.moveBefore(ret)
    ret.replaceInput(0, pack.output())
    return torch._C._create_function_from_graph("forward_with_batchnorm_inputs", graph), len(nodes)


class TappedScript(nn.Module):
    """A TorchScript teacher run through a copy of its graph that also hands each BatchNorm2d's input and running
    statistics to the listeners (BNStatsHook), in the order the layers run."""

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.script = script
        self._fn, calls = _tapped_function(script)
        self.read = list(range(calls))  # the calls handed over: tap_batchnorm keeps the 2-d ones
        self.listeners: List[Callable[[BNInputs], None]] = []

    @property
    def layers(self) -> int:
        return len(self.read)

    def run(self, x: torch.Tensor) -> Tuple[Any, BNInputs]:
        out, *flat = self._fn(self.script._c, x)
        return out, [(flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i in self.read]

    def forward(self, x: torch.Tensor) -> Any:
        out, taps = self.run(x)
        for listen in self.listeners:
            listen(taps)
        return out


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def tap_batchnorm(script: nn.Module, input_shape: Sequence[int]) -> Optional[TappedScript]:
    """The teacher with its BatchNorm2d inputs readable, or None: not a TorchScript module, no BatchNorm2d call
    at the graph's top level, or the copy's outputs differ from the file's on random inputs."""
    if not isinstance(script, torch.jit.ScriptModule):
        return None
    script.eval()  # a teacher is only ever run in eval mode; in train mode the check would move its statistics
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tapped = TappedScript(script)
            device = next((p.device for p in script.parameters()), torch.device("cpu"))
            x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                out, taps = tapped.run(x)
                if not _same(out, script(x)):
                    return None
    except Exception:  # a graph this TorchScript version cannot copy or run: the teacher stays as loaded
        return None
    # BatchNorm2d calls only, as the eager hooks (BNStatsHook) read: a head's BatchNorm1d has no image statistics
    tapped.read = [i for i, (inp, _, _) in zip(tapped.read, taps) if inp.dim() == 4]
    return tapped if tapped.read else None
