#!/usr/bin/env python3
"""zipmerge's CPU engine against PyTorch on the same machine, in one run.

Times the PyTorch forward of ResNet-20 x W (the official ZipIt! layout: conv3x3 shortcut) at
batch 500 in eval mode, in train mode (a BN reset pass) and the statistics pass (two models'
forwards), with glibc's malloc settings of the issue, then runs `zipmerge bench` with the same
architecture, width, images and batch size and prints `ratio = zipmerge img/s / pytorch img/s`.

Needs a Python with torch (a scratch virtualenv: `python3 -m venv /tmp/tv && /tmp/tv/bin/pip
install torch`); never part of CI.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
      /tmp/tv/bin/python benches/vs_pytorch/bench.py --widths 1 4 --zipmerge target/release/zipmerge

With `--train`: training images/s (forward in train mode + cross-entropy + backward + SGD with
momentum 0.9 and weight decay 5e-4, random inputs for PyTorch, the embedded sample for zipmerge)
at batch 128 and 500, `ratio = zipmerge / pytorch` per width and batch.
"""
import argparse, json, os, subprocess, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, w, out=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16 * w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16 * w)
        layers, cin = [], 16 * w
        for c, s in [(16 * w, 1), (32 * w, 2), (64 * w, 2)]:
            blocks = []
            for i in range(3):
                blocks.append(Block(cin, c, s if i == 0 else 1))
                cin = c
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64 * w, out)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def rate(fn, x, images, batch):
    with torch.no_grad():
        fn(x[:batch])  # warm-up
        t = time.perf_counter()
        for i in range(0, images, batch):
            fn(x[i % x.shape[0]:][:batch])
        return images / (time.perf_counter() - t)


def train_rate(model, images, batch):
    """Training images/s: forward (train mode) + cross-entropy + backward + SGD step (momentum
    0.9, weight decay 5e-4), as `zipmerge bench --train` times them."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    steps = max(2, -(-images // batch))
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def train_main(a):
    rows = []
    for w in a.widths:
        out = subprocess.run(
            [a.zipmerge, "bench", "--train", "--arch", "resnet20", "--width", str(w), "--images",
             str(a.images), "--json"] + (["--batch-size", str(a.train_batch)] if a.train_batch else []),
            check=True, capture_output=True, text=True).stdout
        z = json.loads(out.strip().splitlines()[-1])
        for bs, zr in sorted(z["train_images_per_second"].items(), key=lambda kv: int(kv[0])):
            pr = train_rate(ResNet20(w), a.images, int(bs))
            r = {"width": w, "batch": int(bs), "pytorch_train": pr, "zipmerge_train": zr,
                 "ratio_train": zr / pr}
            rows.append(r)
            print(f"ResNet-20 x{w} batch {bs}: training {zr:.1f} vs {pr:.1f} img/s "
                  f"ratio = {r['ratio_train']:.2f}")
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--zipmerge", default="target/release/zipmerge")
    ap.add_argument("--train", action="store_true",
                    help="compare training (forward + backward + SGD) at batch 128 and 500")
    ap.add_argument("--train-batch", type=int, default=None,
                    help="with --train: one batch size instead of 128 and 500")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}")
    if a.train:
        return train_main(a)
    rows = []
    for w in a.widths:
        torch.manual_seed(0)
        x = torch.randn(a.batch_size, 3, 32, 32)
        m1, m2 = ResNet20(w).eval(), ResNet20(w).eval()
        fwd = rate(m1, x, a.images, a.batch_size)
        stats = rate(lambda b: (m1(b), m2(b)), x, a.images, a.batch_size)
        m1.train()
        bn = rate(m1, x, a.images, a.batch_size)
        out = subprocess.run(
            [a.zipmerge, "bench", "--arch", "resnet20", "--width", str(w), "--images", str(a.images),
             "--batch-size", str(a.batch_size), "--json"],
            check=True, capture_output=True, text=True).stdout
        z = json.loads(out.strip().splitlines()[-1])
        r = {
            "width": w,
            "pytorch_forward": fwd, "zipmerge_forward": z["forward_images_per_second"],
            "pytorch_statistics": stats, "zipmerge_statistics": z["statistics_images_per_second"],
            "pytorch_bn_reset": bn, "zipmerge_bn_reset": z["bn_reset_images_per_second"],
        }
        for k in ["forward", "statistics", "bn_reset"]:
            r[f"ratio_{k}"] = r[f"zipmerge_{k}"] / r[f"pytorch_{k}"]
        rows.append(r)
        print(f"ResNet-20 x{w}: forward {r['zipmerge_forward']:.0f} vs {fwd:.0f} img/s "
              f"ratio = {r['ratio_forward']:.2f}; statistics {r['zipmerge_statistics']:.0f} vs {stats:.0f} "
              f"ratio = {r['ratio_statistics']:.2f}; BN reset {r['zipmerge_bn_reset']:.0f} vs {bn:.0f} "
              f"ratio = {r['ratio_bn_reset']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
