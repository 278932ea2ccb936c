# The question splits of ../shared/data that training scripts share (sourced, not run):
#
#   dev split   "nq-dev-5": every 5th line of nq-open-dev.jsonl (722 questions), never trained on
#   train       the other nq-open-dev questions + webq-train + curated-train
#
# write_splits DATA DEV TRAIN writes the dev split to DEV and the training questions to TRAIN.
write_splits() {
  awk 'NR % 5 == 0' "$1/nq-open-dev.jsonl" > "$2"
  { awk 'NR % 5 != 0' "$1/nq-open-dev.jsonl"; cat "$1/webq-train.jsonl" "$1/curated-train.jsonl"; } > "$3"
}
