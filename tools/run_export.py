"""Runs a model exported by `zipmerge export` in PyTorch and prints what `zipmerge predict`
prints: per image the logits of each head over its classes (label order of `classes`).

    python tools/run_export.py merged.safetensors image.jpg [image.jpg ...]

Needs torch, torchvision, safetensors, pillow. Reads `<file>.heads.json` (written by export
beside the weights: architecture, stop, heads, preprocessing). ResNet-20 x w is the official
ZipIt! layout (reference doc §1); ResNet-18/50 are torchvision's. A partially zipped model runs
the shared trunk up to the stop, then each head network from the stop on.
"""
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # ZipIt!'s shortcut is a 3x3 conv + BN
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, w, out):
        super().__init__()
        c = [16 * w, 32 * w, 64 * w]
        self.conv1, self.bn1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0])
        cin = c[0]
        for i, (cout, s) in enumerate(zip(c, [1, 2, 2])):
            setattr(self, f"layer{i + 1}", nn.Sequential(*[Block(cin if j == 0 else cout, cout, s if j == 0 else 1) for j in range(3)]))
            cin = cout
        self.linear = nn.Linear(c[2], out)

    def segments(self):  # zipmerge's cut segments: a stop k runs segments[:k] in the trunk
        return [lambda x: self.layer1(F.relu(self.bn1(self.conv1(x)))), self.layer2, self.layer3,
                lambda x: self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))]


def torchvision_segments(m):
    return [lambda x: m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))), m.layer2, m.layer3, m.layer4,
            lambda x: m.fc(torch.flatten(m.avgpool(x), 1))]


def network(meta, state):
    out = next(v for k, v in state.items() if k.endswith(("linear.bias", "fc.bias"))).shape[0]
    if meta["arch"] == "resnet20":
        net = ResNet20(meta["width"], out)
        net.load_state_dict(state)
        return net.eval().segments()
    net = torchvision_resnet(meta["arch"], meta["width"], out)
    net.load_state_dict(state)
    return torchvision_segments(net.eval())


def torchvision_resnet(arch, base, out):
    """torchvision's ResNet-18/50 at base width `base` (torchvision's own: 64)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block, blocks = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
    net = ResNet(block, blocks, num_classes=out)
    if base != 64:  # rebuild the stages narrower, as torchvision's constructor does
        net.inplanes = base
        net.conv1, net.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        for i, n in enumerate(blocks):
            setattr(net, f"layer{i + 1}", net._make_layer(block, base * 2**i, n, stride=1 if i == 0 else 2))
        net.fc = nn.Linear(base * 8 * block.expansion, out)
    return net


def main(path, images):
    meta = json.load(open(path + ".heads.json"))
    tensors = load_file(path)
    part = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
    multi = meta["stop_cut"] < meta["output_cut"]
    trunk = network(meta, part("trunk.") if multi else tensors)
    heads = [network(meta, part(h["weights_prefix"])) if multi else trunk for h in meta["heads"]]
    p = meta["preprocess"]
    steps = [T.Resize(p["resize"])] if p["resize"] else []
    prep = T.Compose(steps + [T.CenterCrop(p["input_size"]), T.ToTensor(), T.Normalize(p["mean"], p["std"])])
    for img in images:
        x = prep(Image.open(img).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            for seg in trunk[: meta["stop_cut"]]:
                x = seg(x)
            scores = {}  # class -> logit, from the first head trained on it (as predict)
            for h, segs in zip(meta["heads"], heads):
                y = x
                for seg in segs[meta["stop_cut"]:]:
                    y = seg(y)
                if h["kind"] == "text":  # logits = 100 cos(output, class embedding)
                    e = torch.tensor(h["embeddings"])  # one row per class of `classes`
                    y = 100 * F.normalize(y, dim=1) @ F.normalize(e, dim=1).T
                for c, v in zip(h["classes"], y[0].tolist()):
                    scores.setdefault(c, v)
        print(json.dumps({"image": img, "logits": [scores[c] for c in sorted(scores)]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
