#!/usr/bin/env bash
# The checks of the replverify service in docker-compose.yml; usable on its own too:
#
#   SOURCE=postgresql://app@db1:5432/shop TARGET=postgresql://app@db2:5432/shop \
#   PGPASSWORD=... bash docs/ci/run-checks.sh
#
# Runs replverify health, lag (against RPO_SECONDS) and diff of SOURCE (the primary)
# and TARGET (its streaming replica). For each it writes $REPORTS/<check>.json and
# $REPORTS/<check>.md and prints the Markdown. Exit code: the worst of the checks
# (0 verified, 1 a problem found, 2 trouble: something could not be checked), taken
# from the JSON run of each.
set -uo pipefail

: "${SOURCE:?SOURCE must be the DSN of the primary}"
: "${TARGET:?TARGET must be the DSN of the replica}"
REPORTS="${REPORTS:-reports}"
RPO_SECONDS="${RPO_SECONDS:-5}"
LAG_SAMPLES="${LAG_SAMPLES:-5}"

for dsn in "$SOURCE" "$TARGET"; do
    case "$dsn" in
        *://*:*@* | *password=*)
            echo "run-checks: put the password in PGPASSWORD (or ~/.pgpass), not in a DSN" >&2
            exit 2
            ;;
    esac
done

mkdir -p "$REPORTS"
worst=0

check() {
    local name="$1"
    shift
    local rc
    echo "== replverify $1"
    replverify "$@" --format json -o "$REPORTS/$name.json"
    rc=$?
    replverify "$@" --format markdown -o "$REPORTS/$name.md" || true
    if [ -s "$REPORTS/$name.md" ]; then
        cat "$REPORTS/$name.md"
    fi
    echo "== replverify $1: exit $rc"
    echo
    case "$rc" in
        0) ;;
        1) if [ "$worst" -eq 0 ]; then worst=1; fi ;;
        *) worst=2 ;;
    esac
}

check health health "$SOURCE" "$TARGET" --rpo "$RPO_SECONDS"
check lag lag "$SOURCE" "$TARGET" --rpo "$RPO_SECONDS" --samples "$LAG_SAMPLES" --interval 1
check diff diff "$SOURCE" "$TARGET"

echo "run-checks: exit $worst (reports in $REPORTS)"
exit "$worst"
