//go:build linux

package control

import "sort"

// Stage names the step of an operation an event belongs to. Stages and
// kinds are the public `agent deploy|rollback|reload --json` output: a
// renamed one breaks scripts that read it, so they are pinned by a test.
type Stage string

// Kind says what an event reports about its stage.
type Kind string

// Stages, in the order an operation may pass them.
const (
	StageQueued       Stage = "queued"        // waiting behind the running operation (--wait)
	StageConfig       Stage = "config"        // reload: the config file re-read; env files read for a generation
	StageCleanup      Stage = "cleanup"       // a release left by an interrupted or refused deploy removed
	StageFetch        Stage = "fetch"         // download, verify and unpack into releases/<id>
	StageLink         Stage = "link"          // shared/ paths linked into the release
	StagePreActivate  Stage = "pre-activate"  // hooks before current switches
	StageActivate     Stage = "activate"      // current points at the release
	StageReload       Stage = "reload"        // a new generation of workers starts, the old one retires
	StageListen       Stage = "listen"        // a listening socket was lost and restored
	StageRestore      Stage = "restore"       // after a failed switch, current points back
	StagePostDeploy   Stage = "post-deploy"   // hooks after a deploy serves
	StageRollback     Stage = "rollback"      // a failed post-deploy hook rolls the deploy back
	StagePostRollback Stage = "post-rollback" // hooks after a rollback serves
	StageOnFailure    Stage = "on-failure"    // hooks after a failure
	StageRecord       Stage = "record"        // the history entry written
	StagePrune        Stage = "prune"         // old releases removed
)

// Kinds.
const (
	KindStart    Kind = "start"    // the stage begins
	KindProgress Kind = "progress" // fetch: Done of Total bytes (Total -1: unknown)
	KindOutput   Kind = "output"   // one line a hook printed
	KindWorker   Kind = "worker"   // a worker started, got ready or exited (Worker, PID set)
	KindStep     Kind = "step"     // a step of the reload: quorum, probation, retiring, …
	KindDone     Kind = "done"     // the stage ended well
	KindWarn     Kind = "warn"     // something went wrong that the operation survives or reports
)

// hookKinds are what a hook stage whose failure is a warning emits.
var hookKinds = []Kind{KindStart, KindOutput, KindDone, KindWarn}

// Events lists, for every stage, the kinds the agent emits in it.
var Events = map[Stage][]Kind{
	StageQueued:       {KindStart},
	StageConfig:       {KindDone, KindWarn},
	StageCleanup:      {KindDone, KindWarn},
	StageFetch:        {KindStart, KindProgress, KindDone},
	StageLink:         {KindDone},
	StagePreActivate:  {KindStart, KindOutput, KindDone},
	StageActivate:     {KindDone},
	StageReload:       {KindStart, KindWorker, KindStep, KindDone},
	StageListen:       {KindStart, KindDone, KindWarn},
	StageRestore:      {KindDone, KindWarn},
	StagePostDeploy:   hookKinds,
	StageRollback:     {KindStart, KindWarn},
	StagePostRollback: hookKinds,
	StageOnFailure:    hookKinds,
	StageRecord:       {KindWarn},
	StagePrune:        {KindDone, KindWarn},
}

// Known reports whether the pair is in Events.
func Known(s Stage, k Kind) bool {
	for _, x := range Events[s] {
		if x == k {
			return true
		}
	}
	return false
}

// Vocabulary returns every pair of Events as "stage kind", sorted.
func Vocabulary() []string {
	var out []string
	for s, kinds := range Events {
		for _, k := range kinds {
			out = append(out, string(s)+" "+string(k))
		}
	}
	sort.Strings(out)
	return out
}
