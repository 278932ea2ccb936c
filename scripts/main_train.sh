#!/usr/bin/env bash
# The main job's learning stage (scripts/main.sh runs it last; --no-train skips it): a short
# query-side training run on a copy of the database while a follower process searches, then
# one dev question whose top-5 changed, and top-1/5/20 before and after on a dev split that
# training never sees.
#
#   dev split  "nq-dev-5": every 5th line of nq-open-dev.jsonl (722 questions)
#   train      the other nq-open-dev questions + webq-train + curated-train (6,907; the
#              trainer keeps those with an answer among their retrieved candidates)
# These are the splits of scripts/train_report.sh, whose query-side row in README.md this
# run reproduces.
#
# usage: scripts/main_train.sh DB [--data DIR] [--out DIR]
#   DB          the database scripts/main.sh built (left as it is: training runs on a copy)
#   --data DIR  the question sets (default: $REALM_DATA or ../shared/data)
#   --out DIR   where the copy, the splits and the logs go (default: DB-trained)
# Environment: QS_STEPS (300), QS_BATCH (32), QS_LR (3e-5) size the run; with the defaults
# it takes about 4 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/main_train.sh DB [--data DIR] [--out DIR]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
src="${1%/}"; shift
data="${REALM_DATA:-../shared/data}"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
out="${out:-$src-trained}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/realm-db/target}"
bin="$CARGO_TARGET_DIR/release/realm-db"
[ -x "$bin" ] || cargo build --release -p realm-tools
for f in nq-open-dev webq-train curated-train; do
  if [ ! -f "$data/$f.jsonl" ]; then
    echo "no $data/$f.jsonl: skipping the training stage (pass --data DIR)" >&2
    exit 0
  fi
done

# Training runs on a copy, so DB stays the pretrained database that scripts/train_report.sh
# starts from.
rm -rf "$out"
mkdir -p "$out"
db="$out/db"
cp -a "$src" "$db"

# The splits. Training never sees a dev question: the dev split is every 5th line of
# nq-open-dev, the training set the other lines plus two other question sets.
dev="$out/nq-dev-5.jsonl"
train="$out/train.jsonl"
source scripts/splits.sh
write_splits "$data" "$dev" "$train"
echo "dev split nq-dev-5 (every 5th line of nq-open-dev): $(wc -l < "$dev") questions;" \
  "training: $(wc -l < "$train") other questions (rest of nq-open-dev, webq-train, curated-train)"

# Before: the pretrained query encoder (the generation's document encoder) on the dev split,
# with every question's top 5 kept for the comparison below.
"$bin" eval "$db" --qa "$dev" -k 1,5,20 --json --rankings "$out/before-top5.jsonl" \
  > "$out/before.json"

# Training, in the background: the trainer holds the database for writing until it exits.
echo
echo "== query-side training (${QS_STEPS:-300} steps x ${QS_BATCH:-32} questions), log in $out/train.log"
t0=$(date +%s)
"$bin" train "$db" --mode query-side --qa "$train" --eval "$dev" \
  --steps "${QS_STEPS:-300}" --batch "${QS_BATCH:-32}" --lr "${QS_LR:-3e-5}" \
  --candidates 20 --hard-negatives 1 --prebatch 2 --eval-every 100 --checkpoint-every 100 \
  --seed 0 --plot "$out/train-curve.png" > "$out/train.log" 2>&1 &
trainer=$!

# The follower: while the trainer runs, another process searches the same database in a loop
# (each `realm-db search` opens it as a read-only follower, since the trainer holds it) and
# prints a line whenever what it sees changes: the generation, the query-encoder version
# (none: the generation's document encoder) and the top hit for the first dev question.
# It starts once the trainer holds the database (a search that opened a free database would
# take it for writing and lock the trainer out).
question=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["question"])' "$dev")
until grep -q '^Training from step' "$out/train.log" || ! kill -0 "$trainer" 2>/dev/null; do
  sleep 1
done
echo "follower: searching \"$question\" while the trainer runs"
searches=0; followed=0; seen=""
follow_once() {
  local hits state how
  hits=$("$bin" search "$db" "$question" -k 1 --json 2> "$out/follower.err") || return 0
  searches=$((searches + 1))
  how="writer (training had ended)"
  if grep -q 'read-only follower' "$out/follower.err"; then
    followed=$((followed + 1)); how="read-only follower"
  fi
  state=$(python3 -c 'import json, sys
h = json.loads(sys.stdin.readline())
v = h["query_encoder"]
print("generation %s, query encoder %s, top-1 \"%s\"" % (h["generation"], "v%d" % v if v else "none (pretrained)", h["title"]))' <<< "$hits")
  if [ "$state" != "$seen" ]; then
    echo "follower: search $searches ($how, $(( $(date +%s) - t0 )) s): $state"
    seen="$state"
  fi
}
while kill -0 "$trainer" 2>/dev/null; do
  follow_once
  # About every 5 s, and at once when the trainer attaches its query encoder.
  for _ in $(seq 10); do
    grep -q '^Attached query-encoder' "$out/train.log" && [[ "$seen" != *"query encoder v"* ]] && break
    kill -0 "$trainer" 2>/dev/null || break
    sleep 0.5
  done
done
wait "$trainer" || { echo "training failed:" >&2; tail -20 "$out/train.log" >&2; exit 1; }
t1=$(date +%s)
# A last search in case the new version appeared after the follower's last look.
[[ "$seen" == *"query encoder v"* ]] || follow_once
echo "follower: $searches searches, $followed of them as a read-only follower while training ran"
echo "trainer:"
grep -E '^(Training from|step [0-9]+: eval|Attached)' "$out/train.log" | sed 's/^/  /'
echo "query-side training took $((t1 - t0)) s (wall time, supervision and evaluations included)"

# After: the trained query encoder (the generation's newest query-encoder version).
"$bin" eval "$db" --qa "$dev" -k 1,5,20 --json --rankings "$out/after-top5.jsonl" \
  > "$out/after.json"

python3 - "$out" <<'PY'
import json, sys

out = sys.argv[1]

def rankings(name):
    with open(f"{out}/{name}-top5.jsonl") as f:
        header, *lines = [json.loads(l) for l in f]
    return header, lines

_, before = rankings("before")
_, after = rankings("after")
ids = lambda r: [p["id"] for p in r["top"]]
changed = [(b, a) for b, a in zip(before, after) if ids(b) != ids(a)]
new_set = sum(1 for b, a in changed if set(ids(b)) != set(ids(a)))
gained = sum(1 for b, a in changed if not any(p["answer"] for p in b["top"]) and any(p["answer"] for p in a["top"]))
lost = sum(1 for b, a in changed if any(p["answer"] for p in b["top"]) and not any(p["answer"] for p in a["top"]))
print()
print(f"== top-5 on the dev split: {len(changed)} of {len(before)} questions changed "
      f"({new_set} with other passages, the rest reordered); "
      f"{gained} gained a passage with an answer, {lost} lost theirs")
# The question shown: the first (in file order) whose top 5 gained an answer, else the first
# that changed at all.
pick = next(((b, a) for b, a in changed
             if not any(p["answer"] for p in b["top"]) and any(p["answer"] for p in a["top"])),
            changed[0] if changed else None)
if pick:
    b, a = pick
    print(f"Q (dev line {b['line']}): {b['question']}")
    for label, r in (("before", b), ("after", a)):
        has = "an answer in the top 5" if any(p["answer"] for p in r["top"]) else "no answer in the top 5"
        print(f"  {label} ({has}):")
        for i, p in enumerate(r["top"], 1):
            print(f"    {i}. {p['title']}{'  <- answer' if p['answer'] else ''}")

def row(name):
    with open(f"{out}/{name}.json") as f:
        r = json.loads(f.readline())
    ic = dict(r["in_corpus_accuracy"] or [])
    return r, [f"{100 * acc:.1f} / {100 * ic.get(k, 0):.1f}" for k, acc in r["accuracy"]]

rb, before_row = row("before")
ra, after_row = row("after")
print()
print(f"== dense retrieval on nq-dev-5 ({rb['questions']} questions, {rb['in_corpus_questions']} in corpus), "
      "top-k accuracy in %, all / in corpus")
print(f"{'query encoder':<34}{'top-1':>14}{'top-5':>14}{'top-20':>14}")
for label, r, cells in (("pretrained MiniLM", rb, before_row), ("query-side trained", ra, after_row)):
    v = r["query_encoder"]
    label = f"{label} ({'v%d' % v if v else 'document encoder'})"
    print(f"{label:<34}" + "".join(f"{c:>14}" for c in cells))
PY
