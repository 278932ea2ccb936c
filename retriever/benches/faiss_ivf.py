"""FAISS on the same vectors and queries as the ivf bench (called by it).

usage: faiss_ivf.py BASE.f32 QUERIES.f32 TRUTH.u64 DIM K NLIST NPROBES EFS BATCH1_QUERIES
Prints one JSON object per line: builds {"index","build_s","bytes_per_vector"} and
points {"index","param","batch","qps","recall"}; recall@K against the ids in TRUTH
(K per query, the exact top-K computed by realm-db).
"""
import json
import sys
import time

import faiss
import numpy as np

base_path, queries_path, truth_path = sys.argv[1:4]
dim, k, nlist = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
nprobes = [int(x) for x in sys.argv[7].split(",")]
efs = [int(x) for x in sys.argv[8].split(",")]
batch1_queries = int(sys.argv[9])
xb = np.fromfile(base_path, dtype="float32").reshape(-1, dim)
xq = np.fromfile(queries_path, dtype="float32").reshape(-1, dim)
truth = np.fromfile(truth_path, dtype="uint64").reshape(-1, k)


def emit(obj):
    print(json.dumps(obj), flush=True)


def recall(ids):
    found = 0
    for row, t in zip(ids, truth):
        found += len(set(int(x) for x in row if x >= 0) & set(int(x) for x in t))
    return found / truth.size


def measure(name, index, param):
    # batch 1: the first queries one at a time
    start = time.perf_counter()
    for i in range(batch1_queries):
        index.search(xq[i : i + 1], k)
    qps1 = batch1_queries / (time.perf_counter() - start)
    start = time.perf_counter()
    ids = []
    for i in range(0, len(xq), 64):
        ids.append(index.search(xq[i : i + 64], k)[1])
    qps64 = len(xq) / (time.perf_counter() - start)
    r = recall(np.concatenate(ids))
    emit({"index": name, "param": param, "batch": 1, "qps": qps1, "recall": r})
    emit({"index": name, "param": param, "batch": 64, "qps": qps64, "recall": r})


def ivf(name, make):
    quantizer = faiss.IndexFlatIP(dim)
    index = make(quantizer)
    start = time.perf_counter()
    index.train(xb)
    index.add(xb)
    build = time.perf_counter() - start
    codes = index.invlists.compute_ntotal() if hasattr(index.invlists, "compute_ntotal") else index.ntotal
    per_vector = index.code_size + 8  # code plus the list's id
    emit({"index": name, "build_s": build, "bytes_per_vector": per_vector, "entries": int(codes)})
    for nprobe in nprobes:
        index.nprobe = nprobe
        measure(name, index, nprobe)


ivf("faiss IVFFlat", lambda q: faiss.IndexIVFFlat(q, dim, nlist, faiss.METRIC_INNER_PRODUCT))
ivf(
    "faiss IVFSQ8",
    lambda q: faiss.IndexIVFScalarQuantizer(
        q, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    ),
)
hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
hnsw.hnsw.efConstruction = 40
start = time.perf_counter()
hnsw.add(xb)
emit({"index": "faiss HNSW32", "build_s": time.perf_counter() - start, "bytes_per_vector": dim * 4 + 32 * 2 * 4 + 8})
for ef in efs:
    hnsw.hnsw.efSearch = ef
    measure("faiss HNSW32", hnsw, ef)
