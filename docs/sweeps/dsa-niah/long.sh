#!/bin/bash
# The four corners on niah_single_1 after the long-context recipe, at several seeds. Per seed and corner:
#   1. pretrain at 256 tokens on niah_single_1 documents (run.sh's settings but 2,000 steps, train.seed =
#      the seed: at 1,200 steps retrieval emerged in some runs, not others);
#   2. raise the RoPE base from 10,000 to 1,000,000 and continue at 1,024 tokens on documents with longer
#      haystacks (200 steps of 4 x 1,024 at lr 1e-3, from stage 1's weights and tokenizer);
#   3. evaluate: stage 1 at 256, stage 2 at 1,024 and 2,048 (plain) and at 2,048 and 4,096 with YaRN x4.
# Two runs at a time of one thread each; about 40 minutes per seed on 2 CPU cores. Run from the repository
# root; SEEDS="0 1 2" by default (docs/sparse.md reports seeds 0 and 1). Ends with the DSA layers' needle selection
# (needle_selection.py) and the tables (long_table.py).
set -e
OUT=${OUT:-runs/dsa-niah-long}
SEEDS=${SEEDS:-0 1 2}
export OUT
PY=.venv/bin/python
GA=.venv/bin/gatedattn
EVAL="--tasks niah_single_1 --samples 20 --ppl-samples 0 --max-new-tokens 16"

if [ "$1" = job ]; then  # one seed and corner: bash long.sh job SEED CORNER
  seed=$2 v=$3 d=$OUT/s$2/$3
  DSA="--set model.attention.sparse.type=dsa --set model.attention.sparse.top_k=16
    --set model.attention.sparse.indexer_heads=4 --set model.attention.sparse.indexer_dim=32"
  G1="--set model.attention.gate.position=g1"
  declare -A EXTRA=([none]="" [dsa]="$DSA" [g1]="$G1" [g1-dsa]="$G1 $DSA")
  $GA train compare-quick --out $d/short --data $OUT/short.jsonl --set data.vocab_size=512 \
    --set model.vocab_size=512 --set data.seq_len=256 --set model.max_position_embeddings=256 \
    --set train.batch_size=16 --set train.max_steps=2000 --set train.lr=3e-3 --set train.warmup_steps=50 \
    --set train.eval_every=400 --set train.seed=$seed --no-progress ${EXTRA[$v]}
  $GA train $d/short/config.yaml --init-from $d/short --out $d/long --data $OUT/long.jsonl \
    --set data.seq_len=1024 --set model.max_position_embeddings=1024 --set model.rope.theta=1000000 \
    --set train.batch_size=4 --set train.max_steps=200 --set train.lr=1e-3 --set train.warmup_steps=20 \
    --set train.eval_every=100 --set train.seed=$seed --no-progress
  $GA long-eval $d/short --lengths 256 $EVAL --out $d/eval-short
  $GA long-eval $d/long --lengths 1024,2048 $EVAL --out $d/eval-long
  $GA long-eval $d/long --lengths 2048,4096 --rope-scaling yarn --factor 4 $EVAL --out $d/eval-yarn
  exit 0
fi

mkdir -p $OUT
# Stage 1's haystacks of 1-12 noise lines fill about 256 tokens, stage 2's 1-40 about 1,024.
$PY -c "from gatedattn.evaluation.ruler import write_training_corpus as w
w('$OUT/short.jsonl', 'niah_single_1', 20000, 12); w('$OUT/long.jsonl', 'niah_single_1', 8000, 40)"
for s in $SEEDS; do for v in dsa g1-dsa none g1; do echo "$s $v"; done; done |
  OMP_NUM_THREADS=1 xargs -P 2 -L 1 bash -c 'bash "$0" job $1 $2 > "$OUT/log-s$1-$2.txt" 2>&1 || echo "failed: seed $1 $2"' "$0"
for s in $SEEDS; do  # does each DSA layer's top-16 hold the needle at the answer queries?
  $PY docs/sweeps/dsa-niah/needle_selection.py $OUT/s$s/dsa/short $OUT/s$s/g1-dsa/short --lengths 256
  $PY docs/sweeps/dsa-niah/needle_selection.py $OUT/s$s/dsa/long $OUT/s$s/g1-dsa/long --lengths 1024
done > $OUT/needle_selection.jsonl
$PY docs/sweeps/dsa-niah/long_table.py $OUT
