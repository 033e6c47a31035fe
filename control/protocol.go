//go:build linux

package control

import (
	"time"
)

// The control protocol: the client connects to the unix socket, writes one
// JSON Request (at most MaxRequestBytes, within RequestTimeout), and reads
// JSON lines: zero or more Message{Type: TypeEvent} and exactly one final
// Message{Type: TypeResult}, after which the agent closes the connection.

const (
	MaxRequestBytes = 64 << 10
	RequestTimeout  = 5 * time.Second
)

// Request ops.
const (
	OpDeploy   = "deploy"
	OpRollback = "rollback"
	OpReload   = "reload"
	OpStatus   = "status"
	OpHistory  = "history"
	OpPing     = "ping"
)

// Request is what a client sends.
type Request struct {
	Op   string `json:"op"`
	URL  string `json:"url,omitempty"`  // deploy
	ID   string `json:"id,omitempty"`   // deploy: release id to create
	To   string `json:"to,omitempty"`   // rollback: target release id
	Wait bool   `json:"wait,omitempty"` // deploy, rollback: queue behind a running one
}

// Stable result codes. The exit code of the CLI follows from the code.
const (
	CodeOK         = "ok"         // exit 0
	CodeFailed     = "failed"     // exit 1: deploy/rollback/reload failed; Restored says what serves
	CodeNotFound   = "not_found"  // exit 1: no such release / no rollback target / nothing deployed
	CodeInternal   = "internal"   // exit 1: the agent could not do its part (disk, state file)
	CodeUsage      = "usage"      // exit 2: the request itself is invalid
	CodeForbidden  = "forbidden"  // exit 3: the peer's uid/gid is not allowed
	CodeBusy       = "busy"       // exit 4: another deploy/rollback/reload runs
	CodeSuperseded = "superseded" // exit 4: a newer --wait request replaced this one in the queue
	// A reload that re-read the config file and refused it: Error lists
	// every problem as FILE:LINE:COL: message, one a line; nothing changed.
	CodeConfig = "config" // exit 2
	// A reload whose re-read config changes what only a restart of the
	// agent applies (RestartKeys of package config); nothing changed.
	CodeRestartNeeded = "restart_needed" // exit 2
)

func ExitCode(code string) int {
	switch code {
	case CodeOK:
		return 0
	case CodeUsage, CodeConfig, CodeRestartNeeded:
		return 2
	case CodeForbidden:
		return 3
	case CodeBusy, CodeSuperseded:
		return 4
	default:
		return 1
	}
}

// Message types.
const (
	TypeEvent  = "event"  // progress of the request; any number
	TypeResult = "result" // the outcome; exactly one, last
)

// Message is one JSON line from the agent.
type Message struct {
	Type string    `json:"type"` // TypeEvent or TypeResult
	Time time.Time `json:"time"`

	// Events.
	Stage   Stage  `json:"stage,omitempty"`   // events.go
	Kind    Kind   `json:"kind,omitempty"`    // events.go
	Message string `json:"message,omitempty"` // human line
	Done    int64  `json:"done,omitempty"`    // fetch progress bytes
	Total   int64  `json:"total,omitempty"`   // -1 when unknown
	Worker  *int   `json:"worker,omitempty"`
	PID     int    `json:"pid,omitempty"`

	// Result.
	Code     string          `json:"code,omitempty"`
	Error    string          `json:"error,omitempty"`
	Op       string          `json:"op,omitempty"`
	ID       string          `json:"id,omitempty"`       // release deployed / rolled back to / reloaded
	From     string          `json:"from,omitempty"`     // release current before
	Restored string          `json:"restored,omitempty"` // after a failure: the release current points back at
	Current  string          `json:"current,omitempty"`  // deploy, rollback, reload: the release current names at the end
	Failures []WorkerVerdict `json:"failures,omitempty"`
	Elapsed  float64         `json:"elapsed_s,omitempty"`
	// ListenLost: listening sockets a worker took down during the
	// operation, and how long each was down.
	ListenLost []ListenLostDoc `json:"listen_lost,omitempty"`
	Status     *StatusDoc      `json:"status,omitempty"`
	History    []HistoryEntry  `json:"history,omitempty"`
	// Config: what a reload's re-read of the config file found.
	Config *ConfigChange `json:"config,omitempty"`
}

// ConfigChange is a reload's re-read of the config file. Key names and
// digests only: never a value.
type ConfigChange struct {
	Path    string   `json:"path"`
	Before  string   `json:"before"`            // digest of the config in force before ("sha256:…")
	After   string   `json:"after"`             // of the config in force after: Before when refused or failed
	Read    string   `json:"read,omitempty"`    // of the file as re-read ("" when unreadable)
	Changed []string `json:"changed,omitempty"` // the keys the file changes (app.env.NAME for [app] env)
	Applied bool     `json:"applied"`           // the new config is in force
}

// ConfigDoc is the config in force, in `agent status`.
type ConfigDoc struct {
	Path   string    `json:"path"`
	Digest string    `json:"digest"` // "sha256:" + hex of the file's bytes
	Since  time.Time `json:"since"`  // when it was read
	// EnvFiles are the [app] env_file files as the serving generation read
	// them: path, digest and key names.
	EnvFiles []EnvFileDoc `json:"env_files,omitempty"`
}

// EnvFileDoc is one env file read when a generation started.
type EnvFileDoc struct {
	Path   string   `json:"path"`
	Digest string   `json:"digest"`
	Keys   []string `json:"keys"`
}

// WorkerVerdict is why one new worker failed a reload.
type WorkerVerdict struct {
	Worker     int      `json:"worker"`
	PID        int      `json:"pid"`
	ExitStatus string   `json:"exit_status,omitempty"`
	Verdict    string   `json:"verdict,omitempty"`
	LastLines  []string `json:"last_lines,omitempty"`
}

// HistoryEntry is one deploy, rollback or reload as recorded in state.json.
type HistoryEntry struct {
	Time       time.Time `json:"time"`
	Op         string    `json:"op"`
	ID         string    `json:"id"`
	From       string    `json:"from,omitempty"`
	URL        string    `json:"url,omitempty"`
	Result     string    `json:"result"`
	Error      string    `json:"error,omitempty"`
	DurationNS int64     `json:"duration_ns,omitempty"`
}

// StatusDoc is `agent status --json`.
type StatusDoc struct {
	Current      string          `json:"current"`                 // release id; "" when none
	CurrentError string          `json:"current_error,omitempty"` // broken current
	Root         string          `json:"root"`
	Socket       string          `json:"socket"`
	PID          int             `json:"pid"`
	Version      string          `json:"version"`
	Uptime       float64         `json:"uptime_s"`
	Running      *RunningOp      `json:"running,omitempty"` // the deploy/rollback/reload in progress
	Waiting      *RunningOp      `json:"waiting,omitempty"`
	Listen       []string        `json:"listen"`
	Metrics      string          `json:"metrics,omitempty"` // the Prometheus endpoint's address, when on
	Generations  []GenerationDoc `json:"generations"`
	LastDeploys  []HistoryEntry  `json:"last_deploys"`
	// ListenersLost counts the listening sockets lost (shut down by a
	// worker, unix path removed) and restored since the agent started;
	// LastListenerLost is the latest.
	ListenersLost    int            `json:"listeners_lost"`
	LastListenerLost *ListenLostDoc `json:"last_listener_lost,omitempty"`
	Config           *ConfigDoc     `json:"config,omitempty"` // the config in force
	// Rescued is what connection rescue did since the agent started (the
	// agent's own start: an in-place upgrade starts it again at 0).
	Rescued RescueDoc `json:"rescued"`
}

// RescueDoc counts connection rescue's outcomes: Held connections copied
// from stopping workers, each ending as Forwarded (its waiting requests,
// Requests in all, Replayed of them read and dropped by the worker, served
// by the serving generation), Idle, Gone, Abandoned, Refused or Failed.
// Error says why rescue could not run, if it could not.
type RescueDoc struct {
	Held      int64  `json:"held"`
	Forwarded int64  `json:"forwarded"`
	Requests  int64  `json:"requests"`
	Replayed  int64  `json:"replayed"`
	Idle      int64  `json:"idle"`
	Gone      int64  `json:"gone"`
	Abandoned int64  `json:"abandoned"`
	Refused   int64  `json:"refused"`
	Failed    int64  `json:"failed"`
	Error     string `json:"error,omitempty"`
}

// RunningOp names an operation in progress or queued.
type RunningOp struct {
	Op    string    `json:"op"`
	ID    string    `json:"id,omitempty"`
	URL   string    `json:"url,omitempty"`
	Since time.Time `json:"since"`
}

type GenerationDoc struct {
	ID        int         `json:"id"`
	ReleaseID string      `json:"release"`
	Dir       string      `json:"dir"`
	State     string      `json:"state"`
	Workers   []WorkerDoc `json:"workers"`
}

type WorkerDoc struct {
	ID       int     `json:"id"`
	PID      int     `json:"pid"`
	State    string  `json:"state"`
	Restarts int     `json:"restarts"`
	Uptime   float64 `json:"uptime_s"`
	LastExit string  `json:"last_exit,omitempty"`
	Backoff  float64 `json:"backoff_s,omitempty"` // while crash-looping: the restart delay
}

// ListenLostDoc is one lost listening socket, in `agent status` and in the
// result of the operation during which it happened.
type ListenLostDoc struct {
	Time     time.Time `json:"time"`                // when the agent saw it
	Socket   string    `json:"socket"`              // the [[listen]] name
	Address  string    `json:"address"`             // host:port or unix:/path
	Reason   string    `json:"reason"`              // "shut down", "path removed", "path replaced"
	Restored string    `json:"restored"`            // "rebound" (a new socket) or "relinked" (the path back on the same socket)
	Adopted  bool      `json:"adopted,omitempty"`   // it was a systemd socket unit's; the new one is the agent's
	Stopping int       `json:"stopping,omitempty"`  // the generation being stopped when it happened
	RefusedS float64   `json:"refused_s"`           // at most this long, connections were refused (or found no path)
	DownS    float64   `json:"down_s,omitempty"`    // at most this long, nothing was served on it: until a generation served on the new socket (0: not yet)
	ServedBy int       `json:"served_by,omitempty"` // that generation
}
