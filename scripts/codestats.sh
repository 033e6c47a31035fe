#!/bin/sh
# codestats.sh [DIR] [MAXLINES]: code-size figures of the Go module in DIR
# (default: the repository this script is in), from go/ast, with no
# dependency beyond the Go toolchain:
#   - every non-test function longer than MAXLINES (default 80) lines,
#     longest first: lines, file:line, name;
#   - per package: files, code lines, comment lines, the comment ratio
#     (comment / (code + comment)), and the same for its _test.go files;
#   - the number of non-test functions and their mean length.
# A line is code when it holds a Go token, comment when it holds only
# comment text; blank lines count as neither.
set -eu
dir=${1:-$(cd "$(dirname "$0")/.." && pwd)}
max=${2:-80}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/main.go" <<'EOF'
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

type pkgStat struct{ files, code, comment, tfiles, tcode, tcomment int }

type fn struct {
	name, where string
	lines       int
}

func main() {
	root, max := os.Args[1], 80
	if len(os.Args) > 2 {
		max, _ = strconv.Atoi(os.Args[2])
	}
	pkgs := map[string]*pkgStat{}
	var fns []fn
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		pkg := filepath.Dir(rel)
		test := strings.HasSuffix(path, "_test.go")
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, rel, src, parser.ParseComments)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return nil
		}
		code, comment := countLines(fset, f, src)
		ps := pkgs[pkg]
		if ps == nil {
			ps = &pkgStat{}
			pkgs[pkg] = ps
		}
		if test {
			ps.tfiles++
			ps.tcode += code
			ps.tcomment += comment
			return nil
		}
		ps.files++
		ps.code += code
		ps.comment += comment
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			name := fd.Name.Name
			if fd.Recv != nil && len(fd.Recv.List) > 0 {
				name = "(" + recvName(fd.Recv.List[0].Type) + ")." + name
			}
			start := fset.Position(fd.Pos())
			n := fset.Position(fd.End()).Line - start.Line + 1
			fns = append(fns, fn{name: name, where: fmt.Sprintf("%s:%d", rel, start.Line), lines: n})
		}
		return nil
	})
	sort.Slice(fns, func(i, j int) bool { return fns[i].lines > fns[j].lines })
	long, total := 0, 0
	fmt.Printf("## non-test functions over %d lines\n", max)
	for _, f := range fns {
		total += f.lines
		if f.lines > max {
			long++
			fmt.Printf("%5d  %-40s %s\n", f.lines, f.where, f.name)
		}
	}
	mean := 0.0
	if len(fns) > 0 {
		mean = float64(total) / float64(len(fns))
	}
	fmt.Printf("%d over %d lines; %d functions, mean %.1f lines\n\n", long, max, len(fns), mean)
	fmt.Printf("## lines per package (non-test | test)\n")
	fmt.Printf("%-22s %5s %6s %7s %6s | %5s %6s %7s\n", "package", "files", "code", "comment", "ratio", "files", "code", "comment")
	names := make([]string, 0, len(pkgs))
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)
	var sum pkgStat
	for _, p := range names {
		s := pkgs[p]
		fmt.Printf("%-22s %5d %6d %7d %5.1f%% | %5d %6d %7d\n", p, s.files, s.code, s.comment, ratio(s.comment, s.code), s.tfiles, s.tcode, s.tcomment)
		sum.files += s.files
		sum.code += s.code
		sum.comment += s.comment
		sum.tfiles += s.tfiles
		sum.tcode += s.tcode
		sum.tcomment += s.tcomment
	}
	fmt.Printf("%-22s %5d %6d %7d %5.1f%% | %5d %6d %7d\n", "total", sum.files, sum.code, sum.comment, ratio(sum.comment, sum.code), sum.tfiles, sum.tcode, sum.tcomment)
}

func ratio(comment, code int) float64 {
	if comment+code == 0 {
		return 0
	}
	return 100 * float64(comment) / float64(comment+code)
}

func recvName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return "*" + recvName(t.X)
	case *ast.IndexExpr:
		return recvName(t.X)
	case *ast.IndexListExpr:
		return recvName(t.X)
	case *ast.Ident:
		return t.Name
	}
	return "?"
}

// countLines returns the lines holding a token, and those holding only
// comment text.
func countLines(fset *token.FileSet, f *ast.File, src []byte) (code, comment int) {
	tf := fset.File(f.Pos())
	codeLines := map[int]bool{}
	var s scanner.Scanner
	s.Init(tf, src, nil, 0)
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			break
		}
		if tok == token.SEMICOLON && lit == "\n" {
			continue // inserted at a line end
		}
		first := fset.Position(pos).Line
		last := first
		if tok == token.STRING {
			last += strings.Count(lit, "\n")
		}
		for l := first; l <= last; l++ {
			codeLines[l] = true
		}
	}
	commentLines := map[int]bool{}
	for _, g := range f.Comments {
		for _, c := range g.List {
			for l := fset.Position(c.Pos()).Line; l <= fset.Position(c.End()).Line; l++ {
				if !codeLines[l] {
					commentLines[l] = true
				}
			}
		}
	}
	return len(codeLines), len(commentLines)
}
EOF
printf 'module codestats\n\ngo 1.21\n' >"$tmp/go.mod"
cd "$tmp" && GOFLAGS=-mod=mod go run . "$dir" "$max"
