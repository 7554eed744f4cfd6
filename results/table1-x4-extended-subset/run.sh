#!/bin/bash
cd /work/main
M=models/cifar10-5+5; D=../shared/datasets/cifar10; O=/tmp/x4ext
mkdir -p $O
run() { name=$1; shift; [ -f $O/$name.json ] && return; /usr/bin/time -f "%e s %M KB" -o $O/$name.time target/release/zipmerge merge --model $M/resnet20x4-a --model $M/resnet20x4-b --data $D --seed 0 --json --out $O/$name "$@" > $O/$name.json.tmp 2> $O/$name.err && mv $O/$name.json.tmp $O/$name.json; }
run permute-refit --method permute --refit lstsq
run zipit-repair --repair
run zipit-dual --similarity dual --dual-lambda 0.5
run zipit13-repair-refit --stop 13/20 --repair --refit lstsq
run wavg-refit --method weight-avg --refit lstsq
echo DONE
