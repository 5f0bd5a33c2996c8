#!/usr/bin/env bash
# Runs CI as CI does: `CI=true bash .ci/run` in a fresh clone of the committed work (uncommitted changes are
# not in it), with a read-only copy of ../shared beside it (left out with --no-shared). The clone, its 3 GB
# virtual environment and the copy live in one temporary folder that is removed when the run ends, however it
# ends: clones left behind would fill the disk that later runs need. Exits with .ci/run's status.
#   scripts/ci-clone.sh [--no-shared] [REPO]     (REPO: default, the repository holding this script)
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

with_shared=1
if [[ "${1:-}" == "--no-shared" ]]; then with_shared=0; shift; fi
[[ $# -le 1 && "${1:-}" != -* ]] || die "usage: scripts/ci-clone.sh [--no-shared] [REPO]"
repo=$(cd "${1:-$(dirname "$0")/..}" 2>/dev/null && git rev-parse --show-toplevel 2>/dev/null) \
  || die "not a git repository: ${1:-$(dirname "$0")/..}"

work=$(mktemp -d "${TMPDIR:-/tmp}/prefit-ci.XXXXXX")
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

git clone -q "$repo" "$work/repo"
if [[ $with_shared == 1 && -d "$repo/../shared" ]]; then
  cp -r "$repo/../shared" "$work/shared"
  chmod -R a-w "$work/shared"
fi
shared=$([[ -d $work/shared ]] && echo "with" || echo "without")
free=$(df -h --output=avail "$work" | tail -1 | tr -d ' ')
echo "ci-clone: $(git -C "$work/repo" log -1 --format='%h %<(60,trunc)%s') in $work/repo ($shared ../shared; $free free)"
status=0
(cd "$work/repo" && CI=true bash .ci/run </dev/null) || status=$?
echo "ci-clone: .ci/run exited $status; removing $work"
exit "$status"
