"""Drive the official ZipIt! code (gstoica27/ZipIt@71883ab, copied under zipit/) on our exported
ResNet-20x4 CIFAR-10 5+5 endpoints, following non_imnet_evaluation_scripts/zipit_concept_merging.py:
  reset_bn_stats(endpoints) -> ModelMerge(graphs).transform(new, loader, fn, metrics, stop_at, a, b)
  -> reset_bn_stats(Merge) -> evaluate_cliphead_alltasks on the CIFAR-10 test set.
Deviations: CPU fp32 (autocast is CUDA-only), probe/BN loader = FractionalDataloader(fraction 0.02)
over the shuffled, augmented batch-500 joint train loader (1000 images per pass), MiniLM 384-d class
embeddings instead of CLIP.
"""
import argparse, json, os, sys, time, random
from copy import deepcopy
import numpy as np
import torch
sys.path.insert(0, '/tmp/official-x4/zipit'); sys.path.insert(1, '/tmp/official-x4/pylib')
torch.set_num_threads(1)
import torchvision, torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file
from models.resnets import resnet20
from graphs.resnet_graph import resnet20 as resnet20_graph
from model_merger import ModelMerge
from metric_calculators import get_metric_fns
from utils import FractionalDataloader, reset_bn_stats, evaluate_cliphead_alltasks, get_merging_fn

ROOT = '/tmp/official-x4'
DATA = '/work/shared/datasets/cifar10'
MEAN = [x / 255 for x in (125.307, 122.961, 113.8575)]
STD = [x / 255 for x in (51.5865, 50.847, 51.255)]
SPLITS = [[0, 5, 6, 7, 9], [1, 2, 3, 4, 8]]


def load_model(tag):
    heads = json.load(open(f'{ROOT}/{tag}.safetensors.heads.json'))
    assert heads['heads'][0]['classes'] == SPLITS['ab'.index(tag)]
    m = resnet20(w=4, num_classes=384)
    m.load_state_dict(load_file(f'{ROOT}/{tag}.safetensors'), strict=True)
    return m.eval()


def class_encodings():
    ref = json.load(open(f'{DATA}/class-text-embeddings.json'))
    E = torch.tensor(ref['embeddings'], dtype=torch.float32)
    E = E / E.norm(dim=-1, keepdim=True)
    return [E[s] for s in SPLITS]


def test_tensors():
    cache = f'{ROOT}/cache_test.pt'
    if not os.path.exists(cache):
        ds = torchvision.datasets.ImageFolder(f'{DATA}/test')
        assert ds.classes == json.load(open(f'{DATA}/class-text-embeddings.json'))['classes']
        xs = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert('RGB'))).permute(2, 0, 1) for p, _ in ds.samples])
        ys = torch.tensor([y for _, y in ds.samples])
        torch.save({'x': xs, 'y': ys, 'paths': [p for p, _ in ds.samples]}, cache)
    return torch.load(cache)


def test_loader(subset=None, classes=None):
    d = test_tensors()
    idx = torch.arange(len(d['y']))
    if subset == 'sub2000':  # fixed stratified subset: every 5th image of each class (sorted file names)
        keep = []
        for c in range(10):
            ci = idx[d['y'] == c]
            keep.append(ci[::5])
        idx = torch.cat(keep)
    if classes is not None:
        idx = idx[torch.isin(d['y'][idx], torch.tensor(classes))]
    x = d['x'][idx].float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    ds = torch.utils.data.TensorDataset(x, d['y'][idx])
    return torch.utils.data.DataLoader(ds, batch_size=500, shuffle=False), len(idx)


def train_loader(n_images):
    tf = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(f'{DATA}/train', transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=500, shuffle=True, num_workers=0)
    return FractionalDataloader(dl, n_images / len(ds))


def evaluate(model, loader):
    joint, avg, per = evaluate_cliphead_alltasks(model, loader, class_encodings(), SPLITS, num_classes=10)
    return {'Joint': joint, 'Per Task Avg': avg, 'Task A': per[0], 'Task B': per[1]}


def seed_all(s):
    torch.manual_seed(s); random.seed(s); np.random.seed(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mode', choices=['endpoints', 'merge'], required=True)
    ap.add_argument('--methods', default='match_tensors_zipit,match_tensors_permute')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--probe-images', type=int, default=1000)
    ap.add_argument('--test', choices=['full', 'sub2000'], default='full')
    ap.add_argument('--a', type=float, default=0.3)
    ap.add_argument('--b', type=float, default=0.125)
    args = ap.parse_args()
    os.makedirs(f'{ROOT}/results', exist_ok=True)

    if args.mode == 'endpoints':  # unmerged endpoints, their own BN stats, each on its task's test images
        out = {'mode': 'endpoints (exported BN stats, no reset)', 'test': args.test}
        for i, tag in enumerate('ab'):
            t = time.time()
            loader, n = test_loader(args.test, classes=SPLITS[i])
            r = evaluate(load_model(tag), loader)
            out[tag] = {'task_acc': r['Task ' + 'AB'[i]], 'n_test': n, 'wall_s': time.time() - t}
            print(tag, out[tag], flush=True)
        json.dump(out, open(f'{ROOT}/results/endpoints_{args.test}.json', 'w'), indent=1)
        return

    tl = train_loader(args.probe_images)
    t0 = time.time()
    seed_all(args.seed)
    bases = [reset_bn_stats(load_model(tag), tl) for tag in 'ab']  # as the official script
    t_reset = time.time() - t0
    for k, name in enumerate(args.methods.split(',')):
        t1 = time.time()
        seed_all(args.seed * 1000 + 1)  # same probe draw for every method at this seed
        new = resnet20(w=4, num_classes=384)
        graphs = [resnet20_graph(deepcopy(b)).graphify() for b in bases]
        Merge = ModelMerge(*graphs, device='cpu')
        Merge.transform(deepcopy(new), tl, transform_fn=get_merging_fn(name),
                        metric_classes=get_metric_fns(['covariance', 'mean']), stop_at=None,
                        a=args.a, b=args.b)
        t_merge = time.time() - t1
        reset_bn_stats(Merge, tl)
        t_bn = time.time() - t1 - t_merge
        loader, n = test_loader(args.test)
        r = evaluate(Merge, loader)
        if args.test == 'full':  # also on the fixed stratified 2000 subset, for comparison with sub2000 runs
            r['sub2000'] = evaluate(Merge, test_loader('sub2000')[0])
        res = {'method': name, 'stop': None, 'a': args.a, 'b': args.b, 'seed': args.seed,
               'probe_images_per_pass': args.probe_images, 'test': args.test, 'n_test': n, **r,
               'transform_time_s': Merge.compute_transform_time,
               'wall_endpoint_bn_reset_s': t_reset, 'wall_metrics_and_merge_s': t_merge,
               'wall_merged_bn_reset_s': t_bn, 'wall_eval_s': time.time() - t1 - t_merge - t_bn,
               'metric_nodes': sorted(Merge.metrics.keys())}
        print(json.dumps(res), flush=True)
        json.dump(res, open(f'{ROOT}/results/{name.replace("match_tensors_", "")}_seed{args.seed}_{args.test}.json', 'w'), indent=1)


if __name__ == '__main__':
    main()
