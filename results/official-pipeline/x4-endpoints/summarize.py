import json, glob, os
R = '/tmp/official-x4/results'
rows = []
for f in sorted(glob.glob(f'{R}/*.json')):
    if os.path.basename(f).startswith(('endpoints', 'summary')):
        continue
    d = json.load(open(f))
    rows.append((d['method'], d['seed'], d['test'], d['Joint'], d['Task A'], d['Task B'], d['Per Task Avg'], d['n_test']))
    if 'sub2000' in d:
        s = d['sub2000']
        rows.append((d['method'], d['seed'], 'sub2000 (same merge)', s['Joint'], s['Task A'], s['Task B'], s['Per Task Avg'], 2000))
print(f"{'method':28} seed test                  joint  taskA  taskB   avg   n")
for r in rows:
    print(f"{r[0]:28} {r[1]:4} {r[2]:21} {100*r[3]:5.1f}  {100*r[4]:5.1f}  {100*r[5]:5.1f}  {100*r[6]:5.1f}  {r[7]}")
for f in glob.glob(f'{R}/endpoints*.json'):
    print(f, json.load(open(f)))
json.dump(rows, open(f'{R}/summary.json', 'w'), indent=1)
