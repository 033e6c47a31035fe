//go:build linux

// Package hooks finds and runs deploy hook commands.
//
// A hook stage ("pre-activate", "post-deploy", "post-rollback",
// "on-failure") is a list of commands: first the ones given by the caller
// (from the agent's config), then the executables found in the release at
// .deploy/hooks/<stage> — a single executable file, or a directory whose
// executable entries run in lexical order (dotfiles are ignored).
//
// Invariants:
//   - Commands run one at a time, in order, and the stage stops at the first
//     failure; Run returns nil only when every command exited 0.
//   - Each command runs in the release directory (relative command paths are
//     resolved against it), in a process group of its own, with the agent's
//     environment plus Run.Env plus DEPLOY_STAGE=<stage>.
//   - Nothing a hook starts outlives it: when the command's leader exits, what
//     is left of its process group is killed with SIGKILL. On timeout or when
//     ctx ends, the group gets SIGTERM, then SIGKILL after Grace.
//   - Every output line (stdout and stderr, interleaved as written) goes to
//     Run.Output and to the logger; lines longer than 64 KiB are split.
//   - Every error names the stage and the command:
//     "hook pre-activate [npm ci]: exit status 1" wraps the *exec.ExitError,
//     "hook post-deploy [./x.sh]: timed out after 5s" wraps ErrTimeout,
//     a ctx end wraps ctx.Err(). All are *Error.
//
// The package knows nothing of what a stage means to a deploy: the caller
// decides whether a failure aborts, rolls back, or is only reported.
package hooks
