#!/usr/bin/env bash
# Every test, on a clean machine: installs what the tests need (idempotent),
# checks formatting and vet, then runs every package's tests with -race,
# then the rolling deploys over three hosts (scripts/test-scaleout.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test -race"
go test -race -count=1 -timeout 20m ./... 2>&1 | tee /tmp/handoff-test.log
echo "== scaleout"
bash scripts/test-scaleout.sh
