#!/usr/bin/env bash
# The leave-one-benchmark-out study of results/lobo, on every benchmark that is complete.
#
#   bash results/lobo/run.sh            # from the repository root; resumable: a finished run
#                                       # folder (best_proxy.json present) is not run again,
#                                       # one stopped part-way is resumed from its checkpoint
#
# Campaigns (3 GP seeds each): on each benchmark alone, each carried to the others
# (`transfer=`); jointly on the two that share their students (fmnist, fmnist-wide) and on
# the two student families (fmnist, fmnist-resnet; fitness the mean or the worst of the
# two); with the beyond-size fitness and size prior. Then three `compare` tables per
# benchmark, and the table. Benchmark 3
# (benchmarks/fmnist-resnet: another student family) joins once its build is finished; before
# that it is left out, and said so.
set -euo pipefail
cd "$(dirname "$0")/../.."

benches=(fmnist fmnist-wide)
# summarize refuses an unfinished build, so a ground truth there is the whole benchmark
if [[ -f benchmarks/fmnist-resnet/ground_truth.csv ]] ||
    gp-proxy bench summarize benchmarks/fmnist-resnet > /dev/null; then
  benches+=(fmnist-resnet)
else
  echo "benchmarks/fmnist-resnet is not finished: left out" >&2
fi

others() {  # the benchmarks other than $1, as a transfer list
  local out=() b
  for b in "${benches[@]}"; do [[ $b != "$1" ]] && out+=("benchmarks/$b"); done
  local IFS=,
  echo "[${out[*]}]"
}

evolve() {  # folder, then config overrides
  local out=$1
  shift
  if [[ -f $out/best_proxy.json ]]; then
    echo "$out: done"
  elif [[ -f $out/checkpoint.json ]]; then  # stopped part-way: continue where it was
    gp-proxy resume "$out"
  else
    gp-proxy evolve "$@" --out "$out"
  fi
}

for seed in 0 1 2; do
  evolve "results/lobo/fmnist-s$seed" seed=$seed "transfer=$(others fmnist)"
  evolve "results/lobo/wide-s$seed" benchmark=benchmarks/fmnist-wide seed=$seed \
    "transfer=$(others fmnist-wide)"
  evolve "results/lobo/joint-s$seed" seed=$seed "benchmarks=[benchmarks/fmnist-wide]"
  evolve "results/lobo/partial-s$seed" seed=$seed fitness=partial_tau_params size_prior=true \
    "transfer=$(others fmnist)"
  if [[ " ${benches[*]} " == *" fmnist-resnet "* ]]; then
    evolve "results/lobo/resnet-s$seed" benchmark=benchmarks/fmnist-resnet seed=$seed \
      "transfer=$(others fmnist-resnet)"
    evolve "results/lobo/resnet-partial-s$seed" benchmark=benchmarks/fmnist-resnet seed=$seed \
      fitness=partial_tau_params size_prior=true "transfer=$(others fmnist-resnet)"
    # evolved on the ResNets, but every formula must be defined on the CNN benchmarks too
    # (their shapes only: nothing of their ground truth is read during evolution)
    evolve "results/lobo/resnet-defined-s$seed" benchmark=benchmarks/fmnist-resnet seed=$seed \
      "transfer=$(others fmnist-resnet)" defined_on_transfer=true
    # both student families at once (fitness: the mean over the two, or the worse of the
    # two: a formula must then rank both families); fmnist-wide unseen
    evolve "results/lobo/families-s$seed" seed=$seed "benchmarks=[benchmarks/fmnist-resnet]" \
      "transfer=[benchmarks/fmnist-wide]"
    evolve "results/lobo/families-worst-s$seed" seed=$seed fitness_aggregate=worst \
      "benchmarks=[benchmarks/fmnist-resnet]" "transfer=[benchmarks/fmnist-wide]"
  fi
done

# per benchmark: oriented on its training split; as evolved; and as evolved on 95 % of it
# held out, which table.py reads only for runs that never saw its student family (for them
# every architecture of it is unseen; the 5 % are what the baselines of that table fit on)
# does distillation reorder each benchmark's students beyond seed noise (results/agreement)
for b in "${benches[@]}"; do
  out=results/agreement/$b-kd-vs-ce.json
  [[ -f $out ]] || gp-proxy bench agreement "benchmarks/$b:ce_mean" "benchmarks/$b:kd_mean" \
    --out "$out" > /dev/null
done

for b in "${benches[@]}"; do
  for how in "train 0.3 " "fixed 0.3 -fixed" "fixed 0.95 -unseen"; do
    read -r orient fraction suffix <<< "$how"
    gp-proxy compare params flops descriptors "sum_layers(l1_norm(weight))" results/lobo/*-s* \
      --benchmark "benchmarks/$b" --bootstrap 1000 --orient "$orient" \
      --test-fraction "$fraction" --out "results/lobo/compare-$b${suffix:-}"
  done
done
python results/lobo/table.py > results/lobo/TABLE.md

# every baseline on benchmark 3, as results/fmnist-wide-compare and the kd_gain tables are for
# benchmarks 1 and 2 (made once: a finished table is kept)
if [[ " ${benches[*]} " == *" fmnist-resnet "* ]]; then
  every=(params flops grad_norm snip grasp fisher synflow jacov nwot zen plain l2_norm diswot
    autodas-resnet autodas-resnet-interaction autodas-resnet-instinct autodas-nb201-instinct
    autodas-vit-instinct "sum_layers(l1_norm(weight))" results/lobo/partial-s0)
  for target in kd_mean kd_gain; do
    out=results/fmnist-resnet-$([[ $target == kd_gain ]] && echo kdgain- || true)compare
    [[ -f $out/compare.csv ]] || gp-proxy compare "${every[@]}" descriptors \
      --benchmark benchmarks/fmnist-resnet --target $target --bootstrap 1000 --noise-check \
      --out "$out"
  done
fi
