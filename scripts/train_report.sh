#!/usr/bin/env bash
# Issue-5 report: trains the retriever on ../shared/data, starting from the pretrained MiniLM
# database that scripts/main.sh builds, and evaluates it on a held-back dev split.
#
#   dev split   "nq-dev-5": every 5th line of nq-open-dev.jsonl (722 questions)
#   train       the other 2,888 nq-open-dev questions + webq-train (3,589) + curated-train (430)
#
# usage: scripts/train_report.sh [query-side|dual|qa|realm|all]   (default: all)
#   qa     open-QA fine-tuning of the reader and query tower from MiniLM, then exact match of
#          dense-then-read and BM25-then-read on the dev split
#   realm  a short REALM MLM pre-training run (2% of the articles held out, utility reported),
#          then the same QA fine-tuning from its reader and towers, and exact match
# Writes splits, databases, JSON lines and plots under .deps/train-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
data="${REALM_DATA:-../shared/data}"
out=".deps/train-report"
bin="$CARGO_TARGET_DIR/release/realm-db"
[ -x "$bin" ] || cargo build --release -p realm-tools
if [ ! -d .deps/main-db ]; then
  echo "run scripts/main.sh first: it builds .deps/main-db, the pretrained MiniLM database" >&2
  exit 1
fi
mkdir -p "$out"
source scripts/splits.sh
write_splits "$data" "$out/dev.jsonl" "$out/train.jsonl"
echo "dev: $(wc -l < "$out/dev.jsonl") questions; train: $(wc -l < "$out/train.jsonl") questions"

echo "== before training (pretrained MiniLM and BM25) on the dev split"
"$bin" eval .deps/main-db --qa "$out/dev.jsonl" --compare bm25,hybrid --plot "$out/before.png"

if [ "$what" = all ] || [ "$what" = query-side ]; then
  rm -rf "$out/query-side-db"; cp -r .deps/main-db "$out/query-side-db"
  echo "== query-side fine-tuning"
  /usr/bin/time -f "query-side training wall time: %e s" \
    "$bin" train "$out/query-side-db" --mode query-side --qa "$out/train.jsonl" \
      --eval "$out/dev.jsonl" --steps "${QS_STEPS:-300}" --batch "${QS_BATCH:-32}" \
      --lr "${QS_LR:-3e-5}" --candidates 20 --hard-negatives 1 --prebatch 2 \
      --eval-every "${QS_EVAL_EVERY:-50}" --checkpoint-every 100 --seed 0 \
      --plot "$out/query-side-curve.png"
  "$bin" eval "$out/query-side-db" --qa "$out/dev.jsonl" --compare bm25,hybrid --plot "$out/query-side.png"
fi

if [ "$what" = all ] || [ "$what" = dual ]; then
  rm -rf "$out/dual-db"; cp -r .deps/main-db "$out/dual-db"
  echo "== dual training with asynchronous index refresh"
  /usr/bin/time -f "dual training wall time: %e s" \
    "$bin" train "$out/dual-db" --mode dual --qa "$out/train.jsonl" \
      --eval "$out/dev.jsonl" --steps "${DUAL_STEPS:-40}" --batch "${DUAL_BATCH:-8}" \
      --lr "${DUAL_LR:-2e-5}" --candidates "${DUAL_CANDIDATES:-8}" \
      --refresh-every "${DUAL_REFRESH:-20}" --eval-every "${DUAL_REFRESH:-20}" \
      --checkpoint-every 20 --seed 0 --plot "$out/dual-curve.png"
  "$bin" generations "$out/dual-db"
  "$bin" eval "$out/dual-db" --qa "$out/dev.jsonl" --compare bm25,hybrid --plot "$out/dual.png"
fi

# Open-QA fine-tuning from database $1 (its current reader, else MiniLM) into database $2.
qa_finetune() {
  rm -rf "$2"; cp -r "$1" "$2"
  /usr/bin/time -f "qa training wall time: %e s" \
    "$bin" train "$2" --mode qa --qa "$out/train.jsonl" --eval "$out/dev.jsonl" \
      --steps "${QA_STEPS:-120}" --batch "${QA_BATCH:-8}" --lr "${QA_LR:-2e-5}" \
      --reader-lr "${QA_READER_LR:-5e-5}" --reader-passages 5 --candidates 20 \
      --checkpoint-every 40 --seed 0 --plot "$2.png"
  for mode in dense bm25; do
    /usr/bin/time -f "eval --em ($mode) wall time: %e s" \
      "$bin" eval "$2" --qa "$out/dev.jsonl" --mode "$mode" -k 5,20 --em --reader-k 5
  done
}

if [ "$what" = all ] || [ "$what" = qa ]; then
  echo "== open-QA fine-tuning from MiniLM"
  qa_finetune .deps/main-db "$out/qa-db"
fi

if [ "$what" = all ] || [ "$what" = realm ]; then
  rm -rf "$out/realm-db"; cp -r .deps/main-db "$out/realm-db"
  echo "== REALM MLM pre-training (short run)"
  /usr/bin/time -f "realm training wall time: %e s" \
    "$bin" train "$out/realm-db" --mode realm --steps "${REALM_STEPS:-30}" \
      --batch "${REALM_BATCH:-4}" --lr "${REALM_LR:-1e-5}" --reader-lr "${REALM_READER_LR:-5e-5}" \
      --reader-passages "${REALM_K:-4}" --held-out 0.02 --refresh-every "${REALM_REFRESH:-1000}" \
      --eval-every "${REALM_EVAL_EVERY:-15}" --checkpoint-every 15 --seed 0
  echo "== open-QA fine-tuning from the REALM-pre-trained reader and towers"
  qa_finetune "$out/realm-db" "$out/realm-qa-db"
fi
