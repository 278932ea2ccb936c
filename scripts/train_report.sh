#!/usr/bin/env bash
# Issue-5 report: trains the retriever on ../shared/data, starting from the pretrained MiniLM
# database that scripts/main.sh builds, and evaluates it on a held-back dev split.
#
#   dev split   "nq-dev-5": every 5th line of nq-open-dev.jsonl (722 questions)
#   train       the other 2,888 nq-open-dev questions + webq-train (3,589) + curated-train (430)
#
# usage: scripts/train_report.sh [query-side|dual|qa|realm|reader|phrase|all]   (default: all)
#   qa     open-QA fine-tuning of the reader and query tower from MiniLM, then exact match of
#          dense-then-read and BM25-then-read on the dev split
#   realm  a short REALM MLM pre-training run (2% of the articles held out, utility reported),
#          then the same QA fine-tuning from its reader and towers, and exact match
#   reader the reader recipe (issue 16): QA fine-tuning of the reader and query tower from
#          MiniLM (RQA_STEPS, default 1,000), optionally a second pass in a new sample order
#          (RQA_MORE_STEPS, default 0: off, as it measured no gain), each resumable (run the
#          script again after an interruption and each stage resumes from its last
#          checkpoint); exact match and F1 of dense-then-read and BM25-then-read on the dev
#          split after each; then the ablation: self-supervised span pre-training on the
#          corpus (no labels) followed by the first QA pass, to show what the span stage adds
#   phrase the phrase recipe (issue 17): phrase-encoder training from MiniLM on the training
#          questions (resumable like the reader's), which publishes a phrase generation; phrase
#          EM, F1 and passage top-1/5/20 on the dev split; then the same generation rebuilt
#          keeping only the tokens the trained filter passes (PHRASE_FILTER, default 0.06), and
#          the same figures again; then query-side fine-tuning over that frozen generation
#          (train --mode phrase-query) and its figures; then the phrase training again with
#          self-supervised cloze examples mixed in (--phrase-spans), to show what they add;
#          then, when a reader database exists (PHRASE_TEACHER_DB, default the reader recipe's
#          reader-db), the phrase training again in a copy of it, distilling from its current
#          reader (--distill PHRASE_DISTILL, default 1), to show what distillation adds
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

if [ "$what" != reader ] && [ "$what" != phrase ]; then
  echo "== before training (pretrained MiniLM and BM25) on the dev split"
  "$bin" eval .deps/main-db --qa "$out/dev.jsonl" --compare bm25,hybrid --plot "$out/before.png"
fi

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

# A training stage on database $3 (copied from $2 when it is missing): resumable, because a
# rerun trains the same run name on the same database, and skipped once the marker file $1
# exists. The remaining arguments go to `realm-db train`.
marked_stage() {
  local marker="$1" from="$2" db="$3"; shift 3
  if [ -e "$marker" ]; then echo "(done before: $marker)"; return; fi
  [ -d "$db" ] || cp -r "$from" "$db"
  /usr/bin/time -f "$(basename "$marker" .done) wall time: %e s" "$bin" train "$db" "$@"
  touch "$marker"
}

# The first (or only) training stage of database $2, marked by $2.done.
stage() {
  marked_stage "$2.done" "$@"
}

# Exact match and F1 of the reader of database $1 over the top 5 passages, dense then BM25.
reader_em() {
  for mode in dense bm25; do
    /usr/bin/time -f "eval --em ($mode) wall time: %e s" \
      "$bin" eval "$1" --qa "$out/dev.jsonl" --mode "$mode" -k 5 --em --reader-k 5
  done
}

if [ "$what" = all ] || [ "$what" = reader ]; then
  reader_qa=(--mode qa --qa "$out/train.jsonl" --batch 8 --lr 2e-5
    --reader-lr "${RQA_READER_LR:-1e-4}" --reader-passages 5 --candidates 20
    --checkpoint-every 25)
  echo "== QA fine-tuning of the reader and query tower (from MiniLM)"
  stage .deps/main-db "$out/reader-db" "${reader_qa[@]}" --steps "${RQA_STEPS:-1000}" \
    --seed 0 --run reader-qa --plot "$out/reader-qa-curve.png"
  reader_em "$out/reader-db"
  if [ "${RQA_MORE_STEPS:-0}" -gt 0 ]; then
    echo "== a second QA pass over the training questions (new sample order), same database"
    marked_stage "$out/reader-db.more.done" .deps/main-db "$out/reader-db" "${reader_qa[@]}" \
      --steps "${RQA_MORE_STEPS:-0}" --seed 1 --run reader-qa-more \
      --plot "$out/reader-qa-more-curve.png"
    reader_em "$out/reader-db"
  fi
  echo "== ablation: self-supervised span pre-training of the reader (from MiniLM, no labels)"
  stage .deps/main-db "$out/spans-db" --mode spans --steps "${SPANS_STEPS:-300}" --batch 8 \
    --reader-passages 4 --candidates 20 --reader-lr "${SPANS_READER_LR:-1e-4}" \
    --checkpoint-every 25 --seed 0 --run spans --plot "$out/spans-curve.png"
  echo "== the first QA pass again, from the span-pre-trained reader"
  stage "$out/spans-db" "$out/reader-spans-db" "${reader_qa[@]}" --steps "${RQA_STEPS:-1000}" \
    --seed 0 --run reader-qa
  reader_em "$out/reader-spans-db"
fi

if [ "$what" = all ] || [ "$what" = phrase ]; then
  echo "== phrase-encoder training (DensePhrases, from MiniLM); publishes a phrase generation"
  stage .deps/main-db "$out/phrase-db" --mode phrase --qa "$out/train.jsonl" \
    --steps "${PHRASE_STEPS:-600}" --batch 8 --lr "${PHRASE_LR:-5e-5}" --candidates 20 \
    --hard-negatives 1 --prebatch 1 --checkpoint-every 100 --seed 0 --run phrase \
    --plot "$out/phrase-curve.png"
  "$bin" phrases "$out/phrase-db"
  /usr/bin/time -f "eval --phrases wall time: %e s" \
    "$bin" eval "$out/phrase-db" --qa "$out/dev.jsonl" -k 1,5,20 --phrases
  echo "== the same phrase generation rebuilt keeping only what the trained filter passes"
  if [ ! -e "$out/phrase-db.filtered" ]; then
    "$bin" phrases "$out/phrase-db" --build --from-current \
      --filter-threshold "${PHRASE_FILTER:-0.06}"
    touch "$out/phrase-db.filtered"
  fi
  /usr/bin/time -f "eval --phrases (filtered) wall time: %e s" \
    "$bin" eval "$out/phrase-db" --qa "$out/dev.jsonl" -k 1,5,20 --phrases
  echo "== phrase query-side fine-tuning (DensePhrases §5) over the frozen filtered generation"
  stage "$out/phrase-db" "$out/phrase-query-db" --mode phrase-query --qa "$out/train.jsonl" \
    --eval "$out/dev.jsonl" --steps "${PHRASE_QUERY_STEPS:-600}" --batch 16 \
    --lr "${PHRASE_QUERY_LR:-3e-5}" --candidates 100 --eval-every 100 --checkpoint-every 100 \
    --seed 0 --run phrase-query --plot "$out/phrase-query-curve.png"
  "$bin" phrases "$out/phrase-query-db"
  /usr/bin/time -f "eval --phrases (query-side) wall time: %e s" \
    "$bin" eval "$out/phrase-query-db" --qa "$out/dev.jsonl" -k 1,5,20 --phrases
  echo "== the phrase recipe again with cloze examples mixed in (the ablation of --phrase-spans)"
  stage .deps/main-db "$out/phrase-spans-db" --mode phrase --qa "$out/train.jsonl" \
    --steps "${PHRASE_STEPS:-600}" --batch 8 --lr "${PHRASE_LR:-5e-5}" --candidates 20 \
    --hard-negatives 1 --prebatch 1 --checkpoint-every 100 --seed 0 --run phrase \
    --phrase-spans "${PHRASE_SPANS:-1755}" --plot "$out/phrase-spans-curve.png"
  /usr/bin/time -f "eval --phrases (cloze examples) wall time: %e s" \
    "$bin" eval "$out/phrase-spans-db" --qa "$out/dev.jsonl" -k 1,5,20 --phrases
  teacher="${PHRASE_TEACHER_DB:-$out/reader-db}"
  if [ -d "$teacher" ]; then
    echo "== the phrase recipe again, distilling from the current reader of $teacher"
    stage "$teacher" "$out/phrase-distill-db" --mode phrase --qa "$out/train.jsonl" \
      --steps "${PHRASE_STEPS:-600}" --batch 8 --lr "${PHRASE_LR:-5e-5}" --candidates 20 \
      --hard-negatives 1 --prebatch 1 --checkpoint-every 100 --seed 0 --run phrase \
      --distill "${PHRASE_DISTILL:-1}" --plot "$out/phrase-distill-curve.png"
    /usr/bin/time -f "eval --phrases (distilled) wall time: %e s" \
      "$bin" eval "$out/phrase-distill-db" --qa "$out/dev.jsonl" -k 1,5,20 --phrases
  else
    echo "(distillation skipped: no reader database at $teacher; run the reader recipe first)"
  fi
fi
