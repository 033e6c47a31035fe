package control

import (
	"strings"
	"testing"
)

// TestEvents_vocabulary pins every stage and kind pair the agent emits: the
// public `--json` output. A change here breaks the scripts that read it.
func TestEvents_vocabulary(t *testing.T) {
	const want = `activate done
cleanup done
cleanup warn
config done
config warn
fetch done
fetch progress
fetch start
link done
listen done
listen start
listen warn
on-failure done
on-failure output
on-failure start
on-failure warn
post-deploy done
post-deploy output
post-deploy start
post-deploy warn
post-rollback done
post-rollback output
post-rollback start
post-rollback warn
pre-activate done
pre-activate output
pre-activate start
prune done
prune warn
queued start
record warn
reload done
reload start
reload step
reload worker
restore done
restore warn
rollback start
rollback warn`
	if got := strings.Join(Vocabulary(), "\n"); got != want {
		t.Errorf("vocabulary changed:\n%s\nwant:\n%s", got, want)
	}
	if !Known(StageFetch, KindProgress) || Known(StageFetch, KindWarn) || Known("lock", KindStart) {
		t.Errorf("Known disagrees with Events")
	}
}
