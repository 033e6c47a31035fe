package main

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/handoff/handoff/config"
)

// nodePreload is the script `[app] adapter = "node"` loads into every
// worker's Node runtime (see its header for what it does).
//
//go:embed nodepreload.cjs
var nodePreload []byte

// nodeAdapterVar carries the preload's configuration to the workers.
const nodeAdapterVar = "HANDOFF_NODE_ADAPTER"

// nodePreloadDir is where the preload is written, under the release root:
// private to the agent's user, never inside a release.
func nodePreloadDir(root string) string { return filepath.Join(root, ".agent", "node") }

// nodeAdapterSocket is one listening socket as the preload sees it.
type nodeAdapterSocket struct {
	FD      int    `json:"fd"`
	Name    string `json:"name"`
	Address string `json:"address"` // host:port, or unix:/path
	Inode   uint64 `json:"inode"`   // what fstat of FD shows when it is the agent's socket
}

type nodeAdapterConfig struct {
	Sockets    []nodeAdapterSocket `json:"sockets"`
	StopSignal string              `json:"stop_signal"` // a Node signal name: "SIGTERM"
	DrainMS    int64               `json:"drain_ms"`
}

// setupNodeAdapter writes the preload into the root's private directory and
// returns the worker environment that loads it: NODE_OPTIONS (what the app's
// env, or else the agent's own environment, had, with --require appended)
// and nodeAdapterVar. With prune, preloads of other agent versions are
// removed: only a fresh start may do that, since workers handed over by an
// upgrade may still start a Node process that loads theirs.
func setupNodeAdapter(app config.AppConfig, root string, names, addrs []string, inodes []uint64, prune bool) (path string, env []string, err error) {
	path, err = writeNodePreload(nodePreloadDir(root), prune)
	if err != nil {
		return "", nil, err
	}
	cfg := nodeAdapterConfig{StopSignal: config.SignalName(app.StopSignal), DrainMS: app.DrainTimeout.Milliseconds()}
	for i := range names {
		cfg.Sockets = append(cfg.Sockets, nodeAdapterSocket{FD: 3 + i, Name: names[i], Address: addrs[i], Inode: inodes[i]})
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("node adapter: %w", err)
	}
	opts, ok := app.Env["NODE_OPTIONS"]
	if !ok {
		opts = os.Getenv("NODE_OPTIONS")
	}
	if opts != "" {
		opts += " "
	}
	opts += "--require " + nodeOptionQuote(path)
	return path, []string{"NODE_OPTIONS=" + opts, nodeAdapterVar + "=" + string(js)}, nil
}

// nodeOptionQuote quotes s for NODE_OPTIONS, which splits on spaces outside
// double quotes and reads \" and \\ inside them.
func nodeOptionQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// writeNodePreload makes dir (mode 0700, owned by this process's user) and
// writes the preload into it as handoff-node-<hash>.cjs (temp file + rename),
// unless that file already holds it. It returns the file's path.
func writeNodePreload(dir string, prune bool) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("node adapter %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("node adapter %s: %w", dir, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || st == nil || int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("node adapter %s: %w", dir, errors.New("not a directory owned by the agent's user"))
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", fmt.Errorf("node adapter %s: %w", dir, err)
		}
	}
	sum := sha256.Sum256(nodePreload)
	name := "handoff-node-" + hex.EncodeToString(sum[:6]) + ".cjs"
	path := filepath.Join(dir, name)
	if prune {
		old, _ := filepath.Glob(filepath.Join(dir, "handoff-node-*"))
		tmps, _ := filepath.Glob(filepath.Join(dir, ".handoff-node-*"))
		for _, p := range append(old, tmps...) {
			if p != path {
				os.Remove(p)
			}
		}
	}
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, nodePreload) {
		return path, nil
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.%d", name, os.Getpid(), time.Now().UnixNano()))
	if err := os.WriteFile(tmp, nodePreload, 0o600); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("node adapter %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("node adapter %s: %w", path, err)
	}
	return path, nil
}
