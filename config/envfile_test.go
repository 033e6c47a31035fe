package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		want    []EnvVar
		wantErr string // "" = no error; else the error text
	}{
		{name: "empty", src: "", want: nil},
		{name: "plain", src: "A=1\nB=two words\n", want: []EnvVar{{"A", "1"}, {"B", "two words"}}},
		{name: "no final newline", src: "A=1", want: []EnvVar{{"A", "1"}}},
		{name: "comments and blanks", src: "# hash\n; semicolon\n\n   \n  # indented\nA=1\n", want: []EnvVar{{"A", "1"}}},
		{name: "hash inside a value", src: "URL=http://x/#frag\n", want: []EnvVar{{"URL", "http://x/#frag"}}},
		{name: "blanks around", src: "  A  =   spaced value   \r\n", want: []EnvVar{{"A", "spaced value"}}},
		{name: "empty value", src: "A=\nB=   \n", want: []EnvVar{{"A", ""}, {"B", ""}}},
		{name: "equals in value", src: "DSN=postgres://u:p@h/db?sslmode=require\n", want: []EnvVar{{"DSN", "postgres://u:p@h/db?sslmode=require"}}},
		{name: "export prefix", src: "export A=1\nexport\tB=2\n", want: []EnvVar{{"A", "1"}, {"B", "2"}}},
		{name: "key named export", src: "export=1\n", want: []EnvVar{{"export", "1"}}},
		{name: "no expansion", src: "A=$HOME ${USER} `id`\n", want: []EnvVar{{"A", "$HOME ${USER} `id`"}}},
		{name: "single quotes literal", src: `A='it\'s' ` + "\n", wantErr: `x.env:1: A: text after the closing quote`},
		{name: "single quotes keep backslashes", src: `A='a\nb $X "q"'` + "\n", want: []EnvVar{{"A", `a\nb $X "q"`}}},
		{name: "double quote escapes", src: `A="say \"hi\" \\ \$ \` + "`" + ` \n"` + "\n", want: []EnvVar{{"A", `say "hi" \ $ ` + "`" + ` \n`}}},
		{name: "double quotes keep hash and spaces", src: `A="  # not a comment  "` + "\n", want: []EnvVar{{"A", "  # not a comment  "}}},
		{name: "multi-line double quotes", src: "KEY=\"line1\nline2\"\nB=2\n", want: []EnvVar{{"KEY", "line1\nline2"}, {"B", "2"}}},
		{name: "multi-line single quotes", src: "KEY='-----BEGIN-----\nabc\n-----END-----'\n", want: []EnvVar{{"KEY", "-----BEGIN-----\nabc\n-----END-----"}}},
		{name: "continuation unquoted", src: "A=one \\\ntwo\nB=3\n", want: []EnvVar{{"A", "one two"}, {"B", "3"}}},
		{name: "continuation in double quotes", src: "A=\"one \\\ntwo\"\n", want: []EnvVar{{"A", "one two"}}},
		{name: "backslash unquoted", src: `A=a\ b\\c` + "\n", want: []EnvVar{{"A", `a b\c`}}},
		{name: "last value wins", src: "A=1\nB=2\nA=3\n", want: []EnvVar{{"A", "3"}, {"B", "2"}}},
		{name: "quoted then blanks", src: "A=\"v\"   \n", want: []EnvVar{{"A", "v"}}},
		{name: "no equals", src: "A=1\nJUSTAKEY\n", wantErr: `x.env:2: JUSTAKEY: no "=" (want KEY=VALUE)`},
		{name: "no equals, not a key", src: "this is prose\n", wantErr: `x.env:1: no "=" (want KEY=VALUE)`},
		{name: "bad key", src: "\n\n1A=x\n", wantErr: `x.env:3: invalid variable name "1A"`},
		{name: "key with dash", src: "MY-KEY=x\n", wantErr: `x.env:1: invalid variable name "MY-KEY"`},
		{name: "empty key", src: "=x\n", wantErr: `x.env:1: invalid variable name ""`},
		{name: "unterminated double", src: "A=1\nB=\"open\nC=3\n", wantErr: `x.env:2: B: unterminated " quote`},
		{name: "unterminated single", src: "B='open", wantErr: `x.env:1: B: unterminated ' quote`},
		{name: "text after quote", src: "A=\"x\"y\n", wantErr: `x.env:1: A: text after the closing quote`},
		{name: "NUL byte", src: "A=1\nB=x\x00y\n", wantErr: `x.env:2: NUL byte`},
		{name: "line after multi-line value", src: "A='1\n2'\nbad line\n", wantErr: `x.env:3: no "=" (want KEY=VALUE)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv("x.env", []byte(tt.src))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrEnvFile) {
					t.Errorf("err %v is not ErrEnvFile", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestExposedBy(t *testing.T) {
	const uid, gid = 1000, 1000
	tests := []struct {
		name         string
		perm         os.FileMode
		owner, group int
		exposed      bool
	}{
		{name: "0600 own", perm: 0o600, owner: uid, group: gid},
		{name: "0640 own group", perm: 0o640, owner: uid, group: gid},
		{name: "0640 root:agent group", perm: 0o640, owner: 0, group: gid},
		{name: "0400 root-owned only", perm: 0o400, owner: 0, group: 0},
		{name: "0644 world", perm: 0o644, owner: uid, group: gid, exposed: true},
		{name: "0604 world, not group", perm: 0o604, owner: uid, group: gid, exposed: true},
		{name: "0640 other group", perm: 0o640, owner: uid, group: 50, exposed: true},
		{name: "0600 other owner", perm: 0o600, owner: 1001, group: gid, exposed: true},
		{name: "0060 other owner who cannot read", perm: 0o060, owner: 1001, group: gid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ExposedBy(tt.perm, tt.owner, tt.group, uid, gid)
			if (got != "") != tt.exposed {
				t.Errorf("ExposedBy = %q, want exposed %v", got, tt.exposed)
			}
		})
	}
}

func TestReadEnvFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.env")
	if err := os.WriteFile(p, []byte("DB_PASSWORD='s3cret'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := ReadEnvFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Vars) != 1 || f.Vars[0] != (EnvVar{"DB_PASSWORD", "s3cret"}) || f.Exposed != "" || !strings.HasPrefix(f.Digest, "sha256:") || len(f.Digest) != 7+64 {
		t.Errorf("got %+v", f)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err = ReadEnvFile(p); err != nil || f.Exposed == "" {
		t.Errorf("0644: Exposed %q, err %v; want a warning", f.Exposed, err)
	}
	_, err = ReadEnvFile(filepath.Join(dir, "missing.env"))
	var ee *EnvFileError
	if !errors.As(err, &ee) || !errors.Is(err, syscall.ENOENT) || err.Error() != filepath.Join(dir, "missing.env")+": no such file or directory" {
		t.Errorf("missing: %v", err)
	}
}
