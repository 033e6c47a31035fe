// Package config reads and validates deploy.toml, the agent's one
// configuration file, into a typed Config.
//
// It owns nothing at run time: it reads one file and returns values. It
// lives apart from the agent because its contract (the keys, their types,
// their defaults and where an error points) is what users write against and
// what every agent command shares.
//
// Contract:
//
//   - Find: the file named by the flag, else $AGENT_CONFIG, else
//     ./deploy.toml, else /etc/agent/deploy.toml. A file named explicitly is
//     returned even when missing (reading it reports why); with none found,
//     the error wraps ErrNoConfig.
//   - Load refuses a file with a *Error listing every problem at once, each
//     as FILE:LINE:COL: message on one line, sorted by position: syntax
//     errors, unknown keys (the outermost of an unknown table), wrong types,
//     invalid values and checks across keys (quorum ≤ workers, backoff_min ≤
//     backoff_max, unique [[listen]] names, required root and app.command).
//     The agent exits 2 on it.
//   - A Config that Load returns is valid: every duration positive where it
//     must be, Root and Control.Socket absolute (relative ones resolve
//     against the config file's directory; the socket defaults to
//     <root>/.agent/agent.sock), every unset key holding its default.
//   - Config.Digest is "sha256:" + the hex SHA-256 of the file's bytes: what
//     `agent status` and `agent reload --json` show of the config in force.
//   - app.env_file paths are absolute (relative ones resolve against root);
//     Load does not open them: ReadEnvFile (envfile.go) reads one when a
//     generation starts, refusing it as PATH:LINE: cause (*EnvFileError,
//     ErrEnvFile). An EnvFile carries values only in Vars; its Keys and
//     Digest are what may be shown.
//   - Compare(old, new) names the changed keys (never a value; [app] env as
//     app.env.NAME) and, one line each, the changes a running agent cannot
//     apply (RestartKeys: root, [[listen]], control.socket,
//     app.listen_check, metrics.address); every other key applies live.
//   - Each default lives once, in the package that takes the value
//     (cluster.Default*, release.Default*, hooks.DefaultTimeout); defaultRaw
//     reads them from there.
//   - Keys are a contract: a key is added freely, never renamed.
//
// How: the file decodes into rawConfig, whose leaf types (leaf.go,
// readiness.go) check their own TOML type and value, so each error carries
// its key's position. A first pass walks the generic document to report
// every type and value problem (the decoder stops at the first);
// keyPositions (pos.go) finds, in the source text, the keys the decoder does
// not position (unknown keys, checks across keys).
package config
