#!/bin/bash
# Extended Table 1 rows at x4 with the 93.08% endpoint B, one merge each (the table's defaults:
# 1,000 augmented probe images, BN resets on 1,000, alpha 0.3, beta 0.125, seed 0, full test set).
cd "$(dirname "$0")/../.."
M=models/cifar10-5+5; D=../shared/datasets/cifar10; O=${OUT:-/tmp/x4ext-b93}
mkdir -p $O
run() { name=$1; shift; [ -f $O/$name.json ] && return; /usr/bin/time -f "%e s %M KB" -o $O/$name.time ${ZM:-target/release/zipmerge} merge --model $M/resnet20x4-a --model $M/resnet20x4-b --data $D --seed 0 --json --out $O/$name "$@" > $O/$name.json.tmp 2> $O/$name.err && mv $O/$name.json.tmp $O/$name.json; }
run zipit-repair --repair
run zipit-refit --refit lstsq
run permute-refit --method permute --refit lstsq
run cca --method cca
run zipit13-repair-refit --stop 13/20 --repair --refit lstsq
run wavg-refit --method weight-avg --refit lstsq
run cca-refit --method cca --refit lstsq
echo DONE
