#!/bin/sh
# A release's entry point in scripts/test-scaleout.sh: the Go example
# (examples/go), except where the host's release root holds the marker
# fail-<release id>; there this release exits at once, so one artifact
# fails on one host only. exec keeps the pid, which LISTEN_PID names.
marker="$DEPLOY_ROOT/fail-$DEPLOY_RELEASE_ID"
if [ -e "$marker" ]; then
	echo "start.sh: $marker exists: this release refuses to start on this host" >&2
	exit 1
fi
exec ./server
