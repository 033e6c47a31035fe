package release

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStore_FetchHostileArchives(t *testing.T) {
	zeros := strings.Repeat("\x00", 8<<20)
	many := func() []tarEntry {
		var es []tarEntry
		for i := 0; i < 50; i++ {
			es = append(es, tarEntry{Name: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Body: "x"})
		}
		return es
	}
	manyZip := func() []zipEntry {
		var es []zipEntry
		for i := 0; i < 50; i++ {
			es = append(es, zipEntry{Name: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Body: "x"})
		}
		return es
	}
	tests := []struct {
		name     string
		file     string
		data     func(t *testing.T) []byte
		maxBytes int64
		maxFiles int
		want     error
		wantText string
	}{
		{name: "tar traversal", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "ok", Body: "1"}, {Name: "../evil", Body: "x"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `unpack app.tgz: entry "../evil": path escapes the release`},
		{name: "tar nested traversal", file: "app.tar",
			data:     func(t *testing.T) []byte { return buildTar(t, []tarEntry{{Name: "a/b/../../../victim", Body: "x"}}) },
			want:     ErrUnsafeArchive,
			wantText: `entry "a/b/../../../victim": path escapes the release`},
		{name: "tar absolute", file: "app.tgz",
			data:     func(t *testing.T) []byte { return gz(t, buildTar(t, []tarEntry{{Name: "/tmp/evil", Body: "x"}})) },
			want:     ErrUnsafeArchive,
			wantText: `entry "/tmp/evil": absolute path`},
		{name: "tar symlink escape", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "l", Type: tar.TypeSymlink, Link: "../../victim"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "l": symlink to "../../victim" escapes the release`},
		{name: "tar symlink absolute", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "etc", Type: tar.TypeSymlink, Link: "/etc"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "etc": symlink to absolute path "/etc"`},
		{name: "tar symlink chained escape", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{
					{Name: "a/", Type: tar.TypeDir},
					{Name: "a/l", Type: tar.TypeSymlink, Link: ".."},
					{Name: "b", Type: tar.TypeSymlink, Link: "a/l/.."},
				}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "b": symlink resolves outside the release (through a chain of links)`},
		{name: "tar write through symlink", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{
					{Name: "d/", Type: tar.TypeDir},
					{Name: "l", Type: tar.TypeSymlink, Link: "d"},
					{Name: "l/evil", Body: "x"},
				}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "l/evil": parent "l" is a symlink`},
		{name: "tar duplicate file then symlink", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "a", Body: "1"}, {Name: "a", Type: tar.TypeSymlink, Link: "b"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "a": duplicate entry`},
		{name: "tar hardlink escape", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "h", Type: tar.TypeLink, Link: "../../victim"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "h": hard link to "../../victim" escapes the release`},
		{name: "tar hardlink absolute", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "h", Type: tar.TypeLink, Link: "/etc/passwd"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "h": hard link to "/etc/passwd" escapes the release`},
		{name: "tar hardlink to symlink", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "s", Type: tar.TypeSymlink, Link: "x"}, {Name: "h", Type: tar.TypeLink, Link: "s"}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "h": hard link to "s", which is not an earlier regular file of the archive`},
		{name: "tar device node", file: "app.tgz",
			data: func(t *testing.T) []byte {
				return gz(t, buildTar(t, []tarEntry{{Name: "null", Type: tar.TypeChar}}))
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "null": device file`},
		{name: "tar block device", file: "app.tar",
			data:     func(t *testing.T) []byte { return buildTar(t, []tarEntry{{Name: "sda", Type: tar.TypeBlock}}) },
			want:     ErrUnsafeArchive,
			wantText: `entry "sda": device file`},
		{name: "tar fifo", file: "app.tgz",
			data:     func(t *testing.T) []byte { return gz(t, buildTar(t, []tarEntry{{Name: "p", Type: tar.TypeFifo}})) },
			want:     ErrUnsafeArchive,
			wantText: `entry "p": FIFO`},
		{name: "gzip bomb", file: "app.tgz", maxBytes: 1 << 20,
			data:     func(t *testing.T) []byte { return gz(t, buildTar(t, []tarEntry{{Name: "zeros", Body: zeros}})) },
			want:     ErrTooLarge,
			wantText: `entry "zeros": release exceeds 1048576 bytes unpacked`},
		{name: "zstd bomb", file: "app.tar.zst", maxBytes: 1 << 20,
			data:     func(t *testing.T) []byte { return zst(t, buildTar(t, []tarEntry{{Name: "zeros", Body: zeros}})) },
			want:     ErrTooLarge,
			wantText: `release exceeds 1048576 bytes unpacked`},
		{name: "tar too many files", file: "app.tgz", maxFiles: 10,
			data:     func(t *testing.T) []byte { return gz(t, buildTar(t, many())) },
			want:     ErrTooLarge,
			wantText: `more than 10 entries`},
		{name: "tgz truncated", file: "app.tgz",
			data: func(t *testing.T) []byte {
				b := gz(t, buildTar(t, []tarEntry{{Name: "a", Body: strings.Repeat("abcdefgh", 4096)}, {Name: "b", Body: "x"}}))
				return b[:len(b)/2]
			},
			want:     ErrBadArchive,
			wantText: `truncated archive`},
		{name: "tar truncated", file: "app.tar",
			data: func(t *testing.T) []byte {
				b := buildTar(t, []tarEntry{{Name: "a", Body: strings.Repeat("abcdefgh", 4096)}})
				return b[:700]
			},
			want:     ErrBadArchive,
			wantText: `truncated archive`},
		{name: "tar empty", file: "app.tgz",
			data:     func(t *testing.T) []byte { return gz(t, buildTar(t, nil)) },
			want:     ErrBadArchive,
			wantText: `unpack app.tgz: archive is empty`},
		{name: "zero-byte file", file: "app.tgz",
			data:     func(t *testing.T) []byte { return nil },
			want:     ErrBadArchive,
			wantText: `unpack app.tgz: archive file is empty (0 bytes)`},
		{name: "not a gzip", file: "app.tgz",
			data:     func(t *testing.T) []byte { return []byte("<html>oops</html>") },
			want:     ErrBadArchive,
			wantText: `corrupt archive`},
		{name: "zip traversal", file: "app.zip",
			data:     func(t *testing.T) []byte { return buildZip(t, []zipEntry{{Name: "../evil", Body: "x"}}) },
			want:     ErrUnsafeArchive,
			wantText: `unpack app.zip: entry "../evil": path escapes the release`},
		{name: "zip absolute", file: "app.zip",
			data:     func(t *testing.T) []byte { return buildZip(t, []zipEntry{{Name: "/tmp/evil", Body: "x"}}) },
			want:     ErrUnsafeArchive,
			wantText: `entry "/tmp/evil": absolute path`},
		{name: "zip symlink escape", file: "app.zip",
			data: func(t *testing.T) []byte {
				return buildZip(t, []zipEntry{{Name: "l", Body: "../../victim", Mode: fs.ModeSymlink | 0o777}})
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "l": symlink to "../../victim" escapes the release`},
		{name: "zip symlink chained escape", file: "app.zip",
			data: func(t *testing.T) []byte {
				return buildZip(t, []zipEntry{
					{Name: "a/", Mode: fs.ModeDir | 0o755},
					{Name: "a/l", Body: "..", Mode: fs.ModeSymlink | 0o777},
					{Name: "b", Body: "a/l/..", Mode: fs.ModeSymlink | 0o777},
				})
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "b": symlink resolves outside the release`},
		{name: "zip fifo", file: "app.zip",
			data:     func(t *testing.T) []byte { return buildZip(t, []zipEntry{{Name: "p", Mode: fs.ModeNamedPipe | 0o644}}) },
			want:     ErrUnsafeArchive,
			wantText: `entry "p": FIFO`},
		{name: "zip device", file: "app.zip",
			data: func(t *testing.T) []byte {
				return buildZip(t, []zipEntry{{Name: "null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o644}})
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "null": device file`},
		{name: "zip duplicate names", file: "app.zip",
			data: func(t *testing.T) []byte {
				return buildZip(t, []zipEntry{{Name: "a.txt", Body: "1"}, {Name: "a.txt", Body: "2"}})
			},
			want:     ErrUnsafeArchive,
			wantText: `entry "a.txt": duplicate entry`},
		{name: "zip bomb", file: "app.zip", maxBytes: 1 << 20,
			data:     func(t *testing.T) []byte { return buildZip(t, []zipEntry{{Name: "zeros", Body: zeros}}) },
			want:     ErrTooLarge,
			wantText: `entry "zeros": release exceeds 1048576 bytes unpacked`},
		{name: "zip header lies about size", file: "app.zip", maxBytes: 1 << 20,
			data: func(t *testing.T) []byte {
				var buf bytes.Buffer
				zw := zip.NewWriter(&buf)
				var comp bytes.Buffer
				fw, _ := flate.NewWriter(&comp, flate.BestSpeed)
				fw.Write([]byte(zeros))
				fw.Close()
				h := &zip.FileHeader{Name: "small", Method: zip.Deflate, UncompressedSize64: 10, CompressedSize64: uint64(comp.Len()), CRC32: 0}
				w, err := zw.CreateRaw(h)
				if err != nil {
					t.Fatal(err)
				}
				w.Write(comp.Bytes())
				zw.Close()
				return buf.Bytes()
			},
			want:     ErrBadArchive,
			wantText: `corrupt archive`},
		{name: "zip too many files", file: "app.zip", maxFiles: 10,
			data:     func(t *testing.T) []byte { return buildZip(t, manyZip()) },
			want:     ErrTooLarge,
			wantText: `more than 10 entries`},
		{name: "zip truncated", file: "app.zip",
			data: func(t *testing.T) []byte {
				b := buildZip(t, []zipEntry{{Name: "a", Body: strings.Repeat("abcdefgh", 4096)}})
				return b[:len(b)-30]
			},
			want:     ErrBadArchive,
			wantText: `corrupt archive`},
		{name: "zip empty", file: "app.zip",
			data:     func(t *testing.T) []byte { return buildZip(t, nil) },
			want:     ErrBadArchive,
			wantText: `archive is empty`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{MaxBytes: tt.maxBytes, MaxFiles: tt.maxFiles})
			p := sb.write(t, tt.file, tt.data(t))
			before := snapshot(t, sb.dir)
			id, err := s.Fetch(context.Background(), FetchRequest{URL: p, ID: "x1"})
			if err == nil {
				t.Fatalf("Fetch = %q, nil; want %v", id, tt.want)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("Fetch error %q does not wrap %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("Fetch error %q\n does not contain %q", err, tt.wantText)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			assertUntouched(t, sb, before)
			if got := readFile(t, filepath.Join(sb.dir, "victim")); got != "untouched" {
				t.Errorf("victim = %q", got)
			}
		})
	}
}

func TestStore_FetchArchiveFormats(t *testing.T) {
	entries := []tarEntry{
		{Name: "./", Type: tar.TypeDir},
		{Name: "./server.js", Body: "console.log(1)\n"},
		{Name: "./bin/run", Body: "#!/bin/sh\n", Mode: 0o755},
		{Name: "./node_modules/x/cli.js", Body: "cli"},
		{Name: "./node_modules/.bin/x", Type: tar.TypeSymlink, Link: "../x/cli.js"},
		{Name: "./same", Type: tar.TypeLink, Link: "./server.js"},
		{Name: "./up", Type: tar.TypeSymlink, Link: "node_modules/.bin/../x"},
	}
	zipEntries := []zipEntry{
		{Name: "server.js", Body: "console.log(1)\n"},
		{Name: "bin/run", Body: "#!/bin/sh\n", Mode: 0o755},
		{Name: "node_modules/x/cli.js", Body: "cli"},
		{Name: "node_modules/.bin/x", Body: "../x/cli.js", Mode: fs.ModeSymlink | 0o777},
	}
	tests := []struct {
		name string
		file string
		data func(t *testing.T) []byte
	}{
		{name: "tar", file: "app.tar", data: func(t *testing.T) []byte { return buildTar(t, entries) }},
		{name: "tar.gz", file: "app.tar.gz", data: func(t *testing.T) []byte { return gz(t, buildTar(t, entries)) }},
		{name: "tgz", file: "app.tgz", data: func(t *testing.T) []byte { return gz(t, buildTar(t, entries)) }},
		{name: "tar.zst", file: "app.tar.zst", data: func(t *testing.T) []byte { return zst(t, buildTar(t, entries)) }},
		{name: "tar.bz2", file: "app.tar.bz2", data: func(t *testing.T) []byte {
			b, err := os.ReadFile("testdata/app.tar.bz2")
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
		{name: "zip", file: "app.zip", data: func(t *testing.T) []byte { return buildZip(t, zipEntries) }},
		{name: "archive= forced", file: "download?archive=tgz", data: func(t *testing.T) []byte { return gz(t, buildTar(t, entries)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{})
			name, query, _ := strings.Cut(tt.file, "?")
			p := sb.write(t, name, tt.data(t))
			u := p
			if query != "" {
				u = "file://" + p + "?" + query
			}
			id, err := s.Fetch(context.Background(), FetchRequest{URL: u, ID: "v1"})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			dir := s.Dir(id)
			if got := readFile(t, filepath.Join(dir, "server.js")); got != "console.log(1)\n" {
				t.Errorf("server.js = %q", got)
			}
			if got := readFile(t, filepath.Join(dir, "node_modules/.bin/x")); got != "cli" {
				t.Errorf("through .bin/x = %q", got)
			}
			fi, err := os.Stat(filepath.Join(dir, "bin/run"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&0o100 == 0 {
				t.Errorf("bin/run mode %v lost its executable bit", fi.Mode())
			}
			if ents, _ := os.ReadDir(filepath.Join(sb.root, releasesDir, incomingDir)); len(ents) != 0 {
				t.Errorf(".incoming not empty: %v", ents)
			}
		})
	}
}

// FuzzUnpack feeds arbitrary bytes to the unpacker as tar, tar.gz and zip.
// Whatever happens, nothing may appear outside the destination, and a
// successful unpack must pass verifyTree's checks.
func FuzzUnpack(f *testing.F) {
	f.Add(buildTar(f, []tarEntry{{Name: "a", Body: "x"}, {Name: "d/", Type: tar.TypeDir}, {Name: "d/l", Type: tar.TypeSymlink, Link: "../a"}}), uint8(0))
	f.Add(gz(f, buildTar(f, []tarEntry{{Name: "../evil", Body: "x"}})), uint8(1))
	f.Add(buildZip(f, []zipEntry{{Name: "a", Body: "x"}, {Name: "l", Body: "a", Mode: fs.ModeSymlink | 0o777}}), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		parent := t.TempDir()
		dest := filepath.Join(parent, "tree")
		if err := os.Mkdir(dest, 0o755); err != nil {
			t.Fatal(err)
		}
		lim := limits{maxBytes: 1 << 20, maxFiles: 100}
		ctx := context.Background()
		var err error
		switch format % 3 {
		case 0:
			_, err = unpackTarStream(ctx, "tar", bytes.NewReader(data), dest, lim)
		case 1:
			_, err = unpackTarStream(ctx, "tar.gz", bytes.NewReader(data), dest, lim)
		case 2:
			_, err = unpackZip(ctx, bytes.NewReader(data), int64(len(data)), dest, lim)
		}
		ents, rerr := os.ReadDir(parent)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if len(ents) != 1 || ents[0].Name() != "tree" {
			t.Fatalf("unpack wrote outside its destination: %v", ents)
		}
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			return
		}
		if _, err := verifyTree(ctx, dest, lim, nil); err != nil && !errors.Is(err, ErrUnsafeArchive) {
			// Only chained symlinks may pass the unpacker and be caught here.
			t.Errorf("verifyTree after successful unpack: %v", err)
		}
	})
}
