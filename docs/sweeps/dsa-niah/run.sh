#!/bin/bash
# The four corners (dense, DSA, G1, G1 + DSA) trained on RULER's niah_single_1 and evaluated on it, seed 0:
# about 45 minutes of training and 5 of evaluation on 2 CPU cores. Run from the repository root.
set -e
OUT=${OUT:-runs/dsa-niah}
.venv/bin/python -c "from gatedattn.evaluation.ruler import write_training_corpus as w; w('$OUT/train.jsonl', 'niah_single_1', 20000, 12)"
COMMON="--data $OUT/train.jsonl --set data.vocab_size=512 --set model.vocab_size=512 --set data.seq_len=256
  --set model.max_position_embeddings=256 --set train.batch_size=16 --set train.max_steps=1200 --set train.lr=3e-3
  --set train.warmup_steps=50 --set train.eval_every=250 --no-progress"
DSA="--set model.attention.sparse.type=dsa --set model.attention.sparse.top_k=16
  --set model.attention.sparse.indexer_heads=4 --set model.attention.sparse.indexer_dim=32"
G1="--set model.attention.gate.position=g1"
declare -A EXTRA=([none]="" [dsa]="$DSA" [g1]="$G1" [g1-dsa]="$G1 $DSA")
for v in none dsa g1 g1-dsa; do
  .venv/bin/gatedattn train compare-quick --out $OUT/$v $COMMON ${EXTRA[$v]}
  .venv/bin/gatedattn long-eval $OUT/$v --lengths 256,512,1024 --tasks niah_single_1 --samples 20 \
    --ppl-samples 0 --max-new-tokens 16 --out $OUT/eval-$v
done
.venv/bin/python docs/sweeps/dsa-niah/digits.py $OUT none dsa g1 g1-dsa
.venv/bin/python docs/sweeps/dsa-niah/needle_selection.py $OUT/dsa $OUT/g1-dsa
