package main

import (
	"time"
)

// The control protocol: the client connects to the unix socket, writes one
// JSON Request (at most maxRequestBytes, within requestTimeout), and reads
// JSON lines: zero or more Message{Type:"event"} and exactly one final
// Message{Type:"result"}, after which the agent closes the connection.

const (
	maxRequestBytes = 64 << 10
	requestTimeout  = 5 * time.Second
)

// Request ops.
const (
	opDeploy   = "deploy"
	opRollback = "rollback"
	opReload   = "reload"
	opStatus   = "status"
	opHistory  = "history"
	opPing     = "ping"
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
	codeOK         = "ok"         // exit 0
	codeFailed     = "failed"     // exit 1: deploy/rollback/reload failed; Restored says what serves
	codeNotFound   = "not_found"  // exit 1: no such release / no rollback target / nothing deployed
	codeInternal   = "internal"   // exit 1: the agent could not do its part (disk, state file)
	codeUsage      = "usage"      // exit 2: the request itself is invalid
	codeForbidden  = "forbidden"  // exit 3: the peer's uid/gid is not allowed
	codeBusy       = "busy"       // exit 4: another deploy/rollback/reload runs
	codeSuperseded = "superseded" // exit 4: a newer --wait request replaced this one in the queue
)

func exitCodeFor(code string) int {
	switch code {
	case codeOK:
		return 0
	case codeUsage:
		return 2
	case codeForbidden:
		return 3
	case codeBusy, codeSuperseded:
		return 4
	default:
		return 1
	}
}

// Message is one JSON line from the agent.
type Message struct {
	Type string    `json:"type"` // "event" or "result"
	Time time.Time `json:"time"`

	// Events.
	Stage   string `json:"stage,omitempty"`   // queued, lock, fetch, link, pre-activate, activate, reload, post-deploy, post-rollback, on-failure, restore, record, prune, ...
	Kind    string `json:"kind,omitempty"`    // start, progress, output, worker, done, warn
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
	// operation, and how long each was down (listenwatch.go).
	ListenLost []ListenLostDoc `json:"listen_lost,omitempty"`
	Status     *StatusDoc      `json:"status,omitempty"`
	History    []HistoryEntry  `json:"history,omitempty"`
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
