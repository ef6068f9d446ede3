#!/bin/bash
# After run.sh: DeepSeek's two stages from its dense run (about 10 minutes): indexer-only warm-up against dense attention, then sparse training.
set -e
DENSE=runs/dsa-niah/none
DSA="--set model.attention.sparse.type=dsa --set model.attention.sparse.top_k=16 --set model.attention.sparse.indexer_heads=4 --set model.attention.sparse.indexer_dim=32"
.venv/bin/gatedattn train $DENSE/config.yaml --init-from $DENSE --out runs/dsa-niah/conv-warmup $DSA --set model.attention.sparse.mode=dense \
  --set train.trainable=indexer --set train.lr=0.001 --set train.max_steps=100 --set train.warmup_steps=10 --set train.eval_every=50 --no-progress
.venv/bin/gatedattn train $DENSE/config.yaml --init-from runs/dsa-niah/conv-warmup --out runs/dsa-niah/conv-sparse $DSA \
  --set train.lr=0.001 --set train.max_steps=200 --set train.warmup_steps=20 --set train.eval_every=100 --no-progress
.venv/bin/gatedattn long-eval runs/dsa-niah/conv-sparse --lengths 256,512,1024 --tasks niah_single_1 --samples 20 --ppl-samples 0 --max-new-tokens 16 --out runs/dsa-niah/eval-conv-sparse
.venv/bin/python docs/sweeps/dsa-niah/needle_selection.py runs/dsa-niah/conv-sparse

