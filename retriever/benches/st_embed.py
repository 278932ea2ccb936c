"""sentence-transformers baseline for the embed bench (called by it).

usage: st_embed.py MODEL_DIR PASSAGES.jsonl N BATCH
Encodes the first N passages as `title + " " + text` at max_seq_length 256 on the CPU
and prints `st passages=N seconds=S rate=R`.
"""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, path, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
texts = []
with open(path, encoding="utf-8") as f:
    for line in f:
        if len(texts) == n:
            break
        r = json.loads(line)
        texts.append(r["title"] + " " + r["text"])
torch.set_num_threads(2)
model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = 256
model.encode(texts[:8], batch_size=batch)  # warm-up
start = time.perf_counter()
model.encode(texts, batch_size=batch)
secs = time.perf_counter() - start
print(f"st passages={len(texts)} seconds={secs:.2f} rate={len(texts) / secs:.2f}", flush=True)
