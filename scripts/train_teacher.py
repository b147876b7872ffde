"""Train a teacher (or a real-data reference student) on a labelled dataset and save an edgekd checkpoint.

This is the only place real images train anything: teachers stand in for the user's own model.
Examples:
    python scripts/train_teacher.py --arch lenet5 --data fashion-mnist:train --test fashion-mnist \
        --epochs 6 --out edgekd/assets/demo_teacher_fmnist_lenet5.pt
    python scripts/train_teacher.py --arch resnet18-cifar --data fashion-mnist:train --test fashion-mnist \
        --epochs 2 --size 32 --out /tmp/teachers/fmnist_resnet18.pt
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.data.datasets import load_dataset, prepare_images
from edgekd.errors import UsageError
from edgekd.models.checkpoint import save_checkpoint
from edgekd.models.registry import create_model
from edgekd.spec import ModelSpec, parse_floats


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            pred = model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
            correct += int((pred == y[i:i + batch]).sum())
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--data", required=True, help="training set (fashion-mnist:train, mnist, path)")
    ap.add_argument("--test", help="test set; default: hold out --holdout images of --data")
    ap.add_argument("--holdout", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=None, help="default: the data's channels")
    ap.add_argument("--mean", default="0.5", help="one value, or one per channel: 0.33,0.29,0.24")
    ap.add_argument("--std", default="0.5")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["edgekd", "state_dict", "torchscript", "torchscript-dafl", "torchscript-normalised"],
                    default="edgekd",
                    help="torchscript-dafl: a LeNet-5 saved in DAFL's lenet.py layout (other names, "
                         "forward(img, out_feature=False)), as users of that code base hold it; "
                         "torchscript-normalised: a wrapper that takes [0, 1] images, normalises them with "
                         "--mean/--std inside and returns (logits, probabilities), as many exports do")
    ap.add_argument("--weights", help="start from this state_dict (with --epochs 0: the same teacher in another --format)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save-holdout", help="write the held-out test images as .npz (for measuring students)")
    args = ap.parse_args()
    try:  # the CLI's own --mean/--std parser
        mean, std = parse_floats(args.mean), parse_floats(args.std)
    except UsageError as e:
        ap.error(str(e))

    if args.arch in LAYOUTS and args.format != "torchscript":
        ap.error(f"--arch {args.arch} is not a registered architecture: only --format torchscript keeps it")
    torch.manual_seed(args.seed)
    train = load_dataset(args.data)
    if args.test:
        test = load_dataset(args.test)
    else:
        rng = np.random.default_rng(args.seed)
        idx = rng.permutation(len(train))
        test = type(train)(train.images[idx[:args.holdout]], train.labels[idx[:args.holdout]],
                           train.label_names, train.source + ":holdout")
        train = type(train)(train.images[idx[args.holdout:]], train.labels[idx[args.holdout:]],
                            train.label_names, train.source + ":train")
    if args.save_holdout:
        np.savez(args.save_holdout, x=test.images, y=test.labels)
    channels = args.channels or train.images.shape[-1]
    spec = ModelSpec(args.arch, train.num_classes, channels, (args.size, args.size), mean, std,
                     train.label_names)
    x_train, x_test = prepare_images(train.images, spec), prepare_images(test.images, spec)
    y_train, y_test = train.labels, test.labels

    model = (LAYOUTS[args.arch](channels, spec.num_classes) if args.arch in LAYOUTS
             else create_model(args.arch, spec.num_classes, channels))
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=max(1, steps))
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train)).numpy()
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            # cross_entropy of log-probabilities equals nll_loss: the same for both kinds of output
            loss = F.cross_entropy(model(torch.from_numpy(x_train[b])), torch.from_numpy(y_train[b]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} test acc {acc:.4f} ({time.time() - t0:.0f}s)")

    acc = evaluate(model, x_test, y_test)
    info = {"arch": args.arch, "train": train.source, "test": test.source, "test_accuracy": acc,
            "epochs": args.epochs, "seed": args.seed, "seconds": round(time.time() - t0, 1)}
    model.eval()
    if args.format == "edgekd":
        save_checkpoint(args.out, model, spec, {"trained_by": "scripts/train_teacher.py", **info})
    elif args.format == "state_dict":
        torch.save(model.state_dict(), args.out)
    elif args.format == "torchscript":
        torch.jit.script(model).save(args.out)
    elif args.format == "torchscript-normalised":
        torch.jit.script(NormalisedExport(model, mean, std).eval()).save(args.out)
    else:
        torch.jit.script(DaflLeNet5.from_lenet5(model)).save(args.out)
    print(json.dumps(info))


class ExamplesMnistNet(torch.nn.Module):
    """pytorch/examples mnist/main.py's Net, a teacher many users start from: no BatchNorm, dropout,
    a 28x28 input (its 9216-wide fc1 fixes the size) and log-probabilities out (log_softmax), not logits.
    No registered architecture has its weights, so edgekd runs it as TorchScript, without hooks."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(in_channels, 32, 3, 1), torch.nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = torch.nn.Dropout(0.25), torch.nn.Dropout(0.5)
        self.fc1, self.fc2 = torch.nn.Linear(9216, 128), torch.nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class PlainBnCnn(torch.nn.Module):
    """A conv-BN-ReLU stack of the kind users write themselves (not a registered architecture, so edgekd runs
    its TorchScript as loaded): BatchNorm after each of six 3x3 convolutions, max-pooling after every
    second, global average pooling and one linear layer."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers, c = [], in_channels
        for i, width in enumerate((32, 32, 64, 64, 128, 128)):
            layers += [torch.nn.Conv2d(c, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width),
                       torch.nn.ReLU(inplace=True)]
            if i % 2:
                layers.append(torch.nn.MaxPool2d(2))
            c = width
        self.body = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


class NormalisedExport(torch.nn.Module):
    """A common export layout: [0, 1] images in, normalisation inside, (logits, probabilities) out."""

    def __init__(self, model: torch.nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        c = next(p for p in model.state_dict().values() if p.dim() == 4).shape[1]
        self.register_buffer("mean", torch.tensor(mean * (c // len(mean))).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std * (c // len(std))).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((x - self.mean) / self.std)
        return logits, logits.softmax(1)


# Layouts of other code bases, trained here as their users would (not registered architectures).
LAYOUTS = {"examples-mnist-net": ExamplesMnistNet, "plain-bn-cnn": PlainBnCnn}


class DaflLeNet5(torch.nn.Module):
    """DAFL's lenet.py LeNet-5: conv1..conv3, fc1, fc2 and an extra forward argument."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(in_channels, 6, 5), torch.nn.Conv2d(6, 16, 5)
        self.conv3 = torch.nn.Conv2d(16, 120, 5)
        self.fc1, self.fc2 = torch.nn.Linear(120, 84), torch.nn.Linear(84, num_classes)

    def forward(self, img: torch.Tensor, out_feature: bool = False) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(img)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        feature = F.relu(self.conv3(x)).view(-1, 120)
        return self.fc2(F.relu(self.fc1(feature)))

    @classmethod
    def from_lenet5(cls, model: torch.nn.Module) -> DaflLeNet5:
        """The same weights, in order: edgekd's lenet5 has DAFL's layers under other names."""
        params = list(model.state_dict().values())
        out = cls(params[0].shape[1], params[-1].shape[0])
        if [p.shape for p in params] != [p.shape for p in out.state_dict().values()]:
            raise SystemExit("--format torchscript-dafl needs --arch lenet5")
        out.load_state_dict(dict(zip(out.state_dict(), params)))
        return out.eval()


if __name__ == "__main__":
    main()
