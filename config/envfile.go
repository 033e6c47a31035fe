package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Env files ([app] env_file) hold secrets: KEY=VALUE lines in the syntax
// of systemd's EnvironmentFile=, read when each generation starts.
//
//   - Blank lines and lines whose first non-blank character is # or ; are
//     skipped. A # later in a line is part of the value.
//   - KEY=VALUE: blanks around KEY and before VALUE are dropped. KEY is
//     [A-Za-z_][A-Za-z0-9_]*. An `export ` prefix (as in files shared with
//     a shell) is dropped.
//   - VALUE unquoted: trailing blanks dropped; a backslash takes the next
//     character literally; a backslash at the end of the line joins the
//     next line.
//   - VALUE in single quotes: literal, may span lines.
//   - VALUE in double quotes: may span lines; \" \\ \$ \` are escapes, a
//     backslash before a newline joins the lines, any other backslash stays.
//   - After a closing quote only blanks may follow (stricter than systemd,
//     which concatenates: a value is one quoted or one unquoted string).
//   - No expansion of any kind: $HOME stays $HOME.
//   - A key given twice takes its last value.
//
// Refused, as "PATH:LINE: cause": a line without "=", an invalid key, an
// unterminated quote, text after a closing quote, a NUL byte.

// EnvVar is one variable read from an env file.
type EnvVar struct{ Key, Value string }

// EnvFile is one env file as read when a generation started.
type EnvFile struct {
	Path   string
	Vars   []EnvVar // in file order, each key once (its last value)
	Digest string   // "sha256:" + hex of the file's bytes
	// Exposed is non-empty when the file is readable by others than the
	// agent's user (see ExposedBy): a warning, not an error.
	Exposed string
}

// Keys returns the file's variable names, in file order.
func (f *EnvFile) Keys() []string {
	out := make([]string, len(f.Vars))
	for i, v := range f.Vars {
		out[i] = v.Key
	}
	return out
}

// ErrEnvFile marks every error of ReadEnvFile and ParseEnv.
var ErrEnvFile = errors.New("env file")

// EnvFileError is one refused env file: PATH:LINE: cause (LINE 0 when
// the file could not be read at all).
type EnvFileError struct {
	Path string
	Line int
	Err  error
}

func (e *EnvFileError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.Path, e.Line, e.Err)
}

func (e *EnvFileError) Unwrap() []error { return []error{ErrEnvFile, e.Err} }

// ReadEnvFile reads and parses the env file at path, and checks who else
// may read it.
func ReadEnvFile(path string) (*EnvFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is said once, by EnvFileError
		}
		return nil, &EnvFileError{Path: path, Err: err}
	}
	vars, err := ParseEnv(path, b)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	f := &EnvFile{Path: path, Vars: vars, Digest: "sha256:" + hex.EncodeToString(sum[:])}
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			f.Exposed = ExposedBy(fi.Mode().Perm(), int(st.Uid), int(st.Gid), os.Geteuid(), os.Getegid())
		}
	}
	return f, nil
}

// ExposedBy says who besides the agent's user (uid, gid: the agent's
// effective ids) may read a file with mode perm owned by owner:group; ""
// when nobody. Root, who reads everything anyway, does not count, so
// root:agentgroup 0640 is fine, as are 0600 and 0640 with the agent's own
// group.
func ExposedBy(perm os.FileMode, owner, group, uid, gid int) string {
	switch {
	case perm&0o004 != 0:
		return fmt.Sprintf("every user (mode %04o)", perm)
	case perm&0o040 != 0 && group != gid:
		return fmt.Sprintf("group %d (mode %04o), not the agent's group %d", group, perm, gid)
	case perm&0o400 != 0 && owner != uid && owner != 0:
		return fmt.Sprintf("its owner, uid %d (mode %04o), not the agent's user %d", owner, perm, uid)
	}
	return ""
}

// ParseEnv parses env file text; name is what errors call the file.
func ParseEnv(name string, src []byte) ([]EnvVar, error) {
	if i := bytes.IndexByte(src, 0); i >= 0 {
		return nil, &EnvFileError{Path: name, Line: 1 + bytes.Count(src[:i], []byte("\n")), Err: errors.New("NUL byte")}
	}
	p := envParser{src: string(src), line: 1}
	var vars []EnvVar
	at := map[string]int{}
	for !p.eof() {
		start := p.line
		key, value, ok, err := p.entry()
		if err != nil {
			return nil, &EnvFileError{Path: name, Line: start, Err: err}
		}
		if !ok {
			continue
		}
		if i, dup := at[key]; dup {
			vars[i].Value = value
			continue
		}
		at[key] = len(vars)
		vars = append(vars, EnvVar{key, value})
	}
	return vars, nil
}

type envParser struct {
	src  string
	i    int
	line int
}

func (p *envParser) eof() bool { return p.i >= len(p.src) }

// next returns the next byte and moves past it, counting lines.
func (p *envParser) next() byte {
	c := p.src[p.i]
	p.i++
	if c == '\n' {
		p.line++
	}
	return c
}

// restOfLine moves past the end of the current line and returns it.
func (p *envParser) restOfLine() string {
	j := strings.IndexByte(p.src[p.i:], '\n')
	if j < 0 {
		s := p.src[p.i:]
		p.i = len(p.src)
		return s
	}
	s := p.src[p.i : p.i+j]
	p.i += j + 1
	p.line++
	return s
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }

// entry reads one line (or one entry spanning lines); ok is false for a
// blank or comment line.
func (p *envParser) entry() (key, value string, ok bool, err error) {
	for !p.eof() && isBlank(p.src[p.i]) {
		p.i++
	}
	if p.eof() {
		return "", "", false, nil
	}
	switch p.src[p.i] {
	case '\n':
		p.next()
		return "", "", false, nil
	case '#', ';':
		p.restOfLine()
		return "", "", false, nil
	}
	eq := strings.IndexAny(p.src[p.i:], "=\n")
	if eq < 0 || p.src[p.i+eq] != '=' {
		l := strings.TrimSpace(p.restOfLine())
		if envKey.MatchString(l) {
			return "", "", false, fmt.Errorf("%s: no \"=\" (want KEY=VALUE)", l)
		}
		return "", "", false, errors.New(`no "=" (want KEY=VALUE)`)
	}
	key = strings.TrimRight(p.src[p.i:p.i+eq], " \t\r")
	if k, found := strings.CutPrefix(key, "export"); found && k != "" && isBlank(k[0]) {
		key = strings.TrimLeft(k, " \t")
	}
	if !envKey.MatchString(key) {
		return "", "", false, fmt.Errorf("invalid variable name %q", key)
	}
	p.i += eq + 1
	for !p.eof() && isBlank(p.src[p.i]) {
		p.i++
	}
	if p.eof() {
		return key, "", true, nil
	}
	switch p.src[p.i] {
	case '\'':
		value, err = p.quoted('\'')
	case '"':
		value, err = p.quoted('"')
	default:
		value = p.unquoted()
		return key, value, true, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("%s: %w", key, err)
	}
	if rest := p.restOfLine(); strings.TrimSpace(rest) != "" {
		return "", "", false, fmt.Errorf("%s: text after the closing quote", key)
	}
	return key, value, true, nil
}

// unquoted reads an unquoted value to the end of its line.
func (p *envParser) unquoted() string {
	var b strings.Builder
	for !p.eof() {
		c := p.next()
		switch {
		case c == '\n':
			return strings.TrimRight(b.String(), " \t\r")
		case c == '\\' && !p.eof():
			n := p.next()
			if n == '\n' {
				continue // joins the next line
			}
			b.WriteByte(n)
		default:
			b.WriteByte(c)
		}
	}
	return strings.TrimRight(b.String(), " \t\r")
}

// quoted reads a value in quotes q, from the opening quote to the closing
// one.
func (p *envParser) quoted(q byte) (string, error) {
	p.next()
	var b strings.Builder
	for !p.eof() {
		c := p.next()
		switch {
		case c == q:
			return b.String(), nil
		case q == '"' && c == '\\' && !p.eof():
			n := p.next()
			switch n {
			case '"', '\\', '$', '`':
				b.WriteByte(n)
			case '\n':
			default:
				b.WriteByte('\\')
				b.WriteByte(n)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("unterminated %c quote", q)
}
