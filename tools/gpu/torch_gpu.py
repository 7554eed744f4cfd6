#!/usr/bin/env python3
"""PyTorch's ResNet-20 x W (the official ZipIt! layout, the class of benches/vs_pytorch/bench.py)
on a GPU: training images/s (SGD momentum 0.9, weight decay 5e-4, cross-entropy, batch B, random
32x32 inputs: forward + backward + step) and forward images/s in eval mode, as JSON lines
`{"width", "batch", "train_images_per_second", "forward_images_per_second", "device"}`.
Run by tools/gpu/run.sh on the lent GPU machine (PyTorch installed there); never CI."""
import argparse, json, os, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benches", "vs_pytorch"))
from bench import ResNet20  # noqa: E402


def timed(fn, steps):
    fn()  # warm-up (cuDNN autotune, allocations)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[128, 500])
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    for w in a.widths:
        for b in a.batch_size:
            net = ResNet20(w).to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            x = torch.randn(b, 3, 32, 32, device=dev)
            y = torch.randint(0, 10, (b,), device=dev)

            def step():
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()

            net.train()
            train = a.steps * b / timed(step, a.steps)
            net.eval()
            with torch.no_grad():
                fwd = a.steps * b / timed(lambda: net(x), a.steps)
            print(json.dumps({"width": w, "batch": b, "train_images_per_second": train,
                              "forward_images_per_second": fwd,
                              "device": torch.cuda.get_device_name(0)}), flush=True)


if __name__ == "__main__":
    main()
