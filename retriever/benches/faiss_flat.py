"""FAISS IndexFlatIP on the same vectors as the mips bench (called by it).

usage: faiss_flat.py MATRIX.f32 QUERIES.f32 DIM K
Prints one line per batch size: `faiss batch=B qps=Q`.
"""
import sys
import time

import faiss
import numpy as np

matrix_path, queries_path, dim, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
xb = np.fromfile(matrix_path, dtype="float32").reshape(-1, dim)
xq = np.fromfile(queries_path, dtype="float32").reshape(-1, dim)
index = faiss.IndexFlatIP(dim)
index.add(xb)
index.search(xq[:1], k)  # warm-up
for batch, rounds in ((1, 20), (64, 3)):
    start = time.perf_counter()
    done = 0
    for r in range(rounds):
        q = xq[(r * batch) % len(xq):][:batch]
        index.search(q, k)
        done += len(q)
    elapsed = time.perf_counter() - start
    print(f"faiss batch={batch} qps={done / elapsed:.2f}", flush=True)
