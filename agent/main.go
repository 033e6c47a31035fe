// Command agent is handoff's deploy agent: `agent run` is the daemon, the
// other subcommands are its clients. See doc.go.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/config"
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise
// it comes from the module's build info.
var version = ""

func agentVersion() string {
	if version != "" {
		return version
	}
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "+" + s.Value[:12]
			}
			if s.Key == "vcs.modified" && s.Value == "true" {
				v += "-dirty"
			}
		}
	}
	return v
}

// Exit codes, as control.ExitCode maps result codes to them.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitBusy        = 4
)

type command struct {
	name  string
	args  string // usage after the flags
	short string
	setup func(fs *flag.FlagSet) func(args []string) int
}

var commands = []command{
	{name: "run", args: "", short: "run the daemon in the foreground", setup: setupRun},
	{name: "deploy", args: "URL", short: "fetch a release and switch to it with no downtime", setup: setupDeploy},
	{name: "rollback", args: "", short: "switch back to the previous (or --to) release", setup: setupRollback},
	{name: "reload", args: "", short: "start a new generation from what current names now", setup: setupReload},
	{name: "status", args: "", short: "show the current release, generations, workers and last deploys", setup: setupStatus},
	{name: "history", args: "", short: "list every deploy, rollback and reload", setup: setupHistory},
	{name: "version", args: "", short: "print the agent's version", setup: setupVersion},
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: agent COMMAND [flags] [args]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.short)
	}
	fmt.Fprintf(w, "\nRun `agent COMMAND -h` for a command's flags. Flags come before arguments.\n")
	fmt.Fprintf(w, "Exit codes: 0 done, 1 failed, 2 usage or config error, 3 agent not reachable, 4 busy.\n")
}

func main() {
	cluster.RunShimIfRequested()
	// The main thread starts the workers, so that an in-place upgrade
	// (SIGUSR2, upgrade.go) keeps them: see cluster.RunMain.
	os.Exit(cluster.RunMain(func() int { return runMain(os.Args[1:]) }))
}

func runMain(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(os.Stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		fs := flag.NewFlagSet("agent "+c.name, flag.ContinueOnError)
		fs.SetOutput(os.Stderr)
		run := c.setup(fs)
		fs.Usage = func() {
			fmt.Fprintf(fs.Output(), "usage: agent %s [flags] %s\n%s\n\nflags:\n", c.name, c.args, c.short)
			fs.PrintDefaults()
		}
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		return run(fs.Args())
	}
	fmt.Fprintf(os.Stderr, "agent: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

// usageErr prints a usage error and returns exit code 2.
func usageErr(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "agent: "+format+"\n", a...)
	return exitUsage
}

// loadConfigFlag finds and loads the config; on error it prints it and
// returns exit code 2.
func loadConfigFlag(path string) (*config.Config, int) {
	p, err := config.Find(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		return nil, exitUsage
	}
	cfg, err := config.Load(p)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintln(os.Stderr, ce.Error())
		} else {
			fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		}
		return nil, exitUsage
	}
	return cfg, exitOK
}

func setupVersion(fs *flag.FlagSet) func([]string) int {
	return func(args []string) int {
		if len(args) > 0 {
			return usageErr("version takes no arguments")
		}
		fmt.Printf("agent %s\n", agentVersion())
		return exitOK
	}
}

// clientFlags are the flags every client command shares.
type clientFlags struct {
	config string
	socket string
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "c", "", "config `file` (default: $AGENT_CONFIG, ./deploy.toml, /etc/agent/deploy.toml)")
	fs.StringVar(&f.socket, "socket", "", "control socket `path` (default: from the config)")
}

// socketPath resolves the control socket: --socket, else the config's.
func (f *clientFlags) socketPath() (string, int) {
	if f.socket != "" {
		return f.socket, exitOK
	}
	cfg, code := loadConfigFlag(f.config)
	if cfg == nil {
		return "", code
	}
	return cfg.Control.Socket, exitOK
}

func trimJoin(s []string) string { return strings.TrimSpace(strings.Join(s, " ")) }
