//go:build linux

// Package cluster runs an application as generations of worker processes on
// listening sockets that the master holds for its whole life: Node's cluster
// module, outside the application and for any language that can serve on an
// inherited socket (systemd socket activation).
//
// What it owns: the listening sockets (Sockets), every worker process and
// its process group, one spawner thread (the program's main thread under
// RunMain), one watchdog process and a private directory of sd_notify
// sockets. It knows nothing of URLs, archives or configuration files.
//
// Invariants:
//
//   - The sockets are opened (or adopted from systemd by name) once and never
//     closed while a Master uses them; workers inherit them as fds 3, 4, … with
//     LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID equal to their own pid (set by
//     the shim, see RunShimIfRequested). There is one accept queue per socket
//     (never SO_REUSEPORT), so a connection waiting in it survives the exit of
//     any worker: a reload refuses no connection.
//   - Each worker is the leader of its own process group and gets SIGKILL when
//     the master's spawner thread dies (Pdeathsig, set from one goroutine locked
//     to its thread for the master's life: the main goroutine on the main
//     thread under RunMain). A watchdog process kills every
//     worker group when the master dies, however it dies: no orphan in a
//     worker's group keeps a port. A descendant that leaves the group (setsid)
//     is out of reach; run the agent under systemd for that (KillMode).
//   - At most one serving generation. A Reload starts a complete new
//     generation beside it and retires the old one only when Readiness.Quorum
//     new workers are ready and the probation window passed; until then the old
//     generation is never signalled. On failure the new generation is stopped
//     and the error names each failed worker with exit status, last output
//     lines and a one-line verdict.
//   - Retiring a worker: StopSignal to its process group, up to DrainTimeout for
//     the whole group to exit, then SIGKILL to the group. When a worker's leader
//     exits on its own, what is left of its group is killed at once.
//   - A generation is pinned to the directory resolved when it started and
//     to the config it started with (SetConfig applies to the next Reload
//     only): a crashed worker of the serving generation is restarted there,
//     with that command, worker env and GenerationSpec.Env, with
//     exponential backoff (BackoffMin..BackoffMax), never in a newer
//     release or config; it retires with its own StopSignal and
//     DrainTimeout.
//   - Every child is reaped by exactly one goroutine, and every goroutine is
//     owned: Shutdown returns when all of them are gone.
//   - Listen watch: no worker can take a socket down for good. The master
//     checks its sockets every Config.ListenCheck (default 50ms), every 5ms
//     while a generation is being stopped, and once right before and right
//     after each stop: one poll(2) over all of them (POLLHUP/POLLRDHUP: a
//     holder called shutdown(2)) and a stat(2) of each unix path (removed,
//     or another file in its place). A unix path it bound is put back on
//     the same live socket from a second hard link it keeps beside it
//     (".<name>.handoff-keep"); otherwise a fresh socket is bound on the
//     same address with the same spec, replaces the dead one in the set
//     (what spawns, readiness and Upgrade use), and Sockets.Epoch grows:
//     the serving generation is then Stale until a Reload, which the caller
//     runs when Config.OnSocketLost reports it. A socket adopted from
//     systemd is replaced by one the master binds itself.
//   - Master.Upgrade replaces the program in place (execve from the spawner
//     thread) and only then: the pid, the listening sockets, the watchdog and
//     every running worker survive it, no worker is signalled or changes pid,
//     and the new program resumes reaping, output logging, readiness and the
//     restart policy (ResumeSockets, ResumeMaster). Under RunMain the spawner
//     is the main thread in both programs, so every worker, started before or
//     after any number of upgrades, keeps its parent thread. A failed Upgrade
//     changes nothing. A new program that dies before it resumed takes the
//     workers with it (watchdog, Pdeathsig), as any dead master does.
//
// Worker environment: the master's own environment minus the variables it
// owns, then Config.Env, then GenerationSpec.Env, then LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID,
// NOTIFY_SOCKET (one socket per worker process: READY=1 and STATUS= from the
// worker or any descendant count for that worker), DEPLOY_RELEASE_ID,
// DEPLOY_RELEASE_DIR (the resolved directory), DEPLOY_ROOT and WORKER_ID
// (0..Workers-1, stable across generations). The master's own NOTIFY_SOCKET
// never reaches a worker.
//
// Readiness: "listen" reads /proc: a process of the worker's tree with one of
// our socket inodes in an epoll set (fdinfo "tfd: … ino:") or a thread blocked
// in accept/accept4 on it; polled every 2 ms rising to 15 ms, the tree
// refreshed every third poll, and no polling once ready. "notify" waits for
// READY=1. "delay" waits until the worker stayed alive for Readiness.Delay.
// With Readiness.HTTP.Path set, a worker ready by its mode is ready only once
// it answered GET Path itself with an accepted status: each probe is
// attributed (sock_diag: the inode of the accepted socket; /proc: the process
// holding it) before its request is sent, a probe taken by another process
// gets no request and never counts, one taken by a sibling still waiting for
// its check counts for that sibling.
// A worker that did not get ready gets a one-line verdict in the
// ReloadError: it bound its own port, exited at once, exited after becoming
// ready, never touched the inherited socket, never sent READY=1, or its
// command could not be executed (the shim exits 127); with the HTTP check,
// its last answer (status line), its silence or its reset.
//
// Callers: call RunShimIfRequested first thing in main, then run the rest
// under RunMain; when Upgraded reports true, call ResumeSockets and
// ResumeMaster instead of OpenSockets and NewMaster. Call Shutdown, then
// Sockets.Close; Reload is refused (ErrBusy) while another Reload or an
// Upgrade runs, so queue reloads above this package if you want them queued.
//
// Importing the package runs two init functions. One locks the main
// goroutine to the main thread (runtime.LockOSThread), so that RunMain can
// make that thread the spawner: a worker's Pdeathsig follows the thread
// that started it, and only the main thread survives an execve. The other,
// in a program started by Upgrade only ($HANDOFF_UPGRADE set), clears
// that variable, sets close-on-exec again on every inherited descriptor
// above 2 (the handover passed them without it) before anything can start
// a child, and reads the handover document that Upgraded, ResumeSockets
// and ResumeMaster then use.
//
// Master's locks say what they guard and the order they are taken in, next
// to the struct.
package cluster
