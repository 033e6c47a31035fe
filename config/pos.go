package config

import (
	"strings"

	"github.com/BurntSushi/toml"
)

// BurntSushi/toml v1.6 records each key's position but does not export it
// (MetaData.keyInfo is private; only errors raised while decoding a key carry
// a Position). For keys the decoder did not fail on — unknown keys and
// cross-key checks — keyPositions finds them in the source text instead.

// pos is a 1-based line and column in the config file.
type pos struct{ Line, Col int }

// posAt converts a byte offset in src into a line and column.
func posAt(src string, off int) pos {
	if off > len(src) {
		off = len(src)
	}
	if off < 0 {
		off = 0
	}
	line := strings.Count(src[:off], "\n") + 1
	col := off - (strings.LastIndexByte(src[:off], '\n') + 1) + 1
	return pos{Line: line, Col: col}
}

// keyLoc is where a key and its value are written.
type keyLoc struct {
	Key   pos // the key's last component
	Value pos // the value after '='; the key itself for a table header
}

// keyPositions maps each key of keys (MetaData.Keys(): document order, with
// repeats for arrays of tables) to where its last component and its value
// are written in src. The result is indexed like keys. It scans forward from
// the previous key, skipping comments and string values, for the component
// written bare or quoted and followed by '=', '.' or ']'. A key it cannot
// find gets the position of the previous key (never happens for files the
// parser accepted).
func keyPositions(src string, keys []toml.Key) []keyLoc {
	out := make([]keyLoc, len(keys))
	cur := 0
	last := keyLoc{pos{1, 1}, pos{1, 1}}
	for i, k := range keys {
		if len(k) == 0 {
			out[i] = last
			continue
		}
		if off, end := findKey(src, cur, k[len(k)-1]); off >= 0 {
			last = keyLoc{Key: posAt(src, off), Value: posAt(src, off)}
			if v := valueStart(src, end); v >= 0 {
				last.Value = posAt(src, v)
			}
			cur = end
		}
		out[i] = last
	}
	return out
}

// valueStart returns the offset of the value after a key ending at i
// ("key = value"), or -1 when no '=' follows (a table header, a dotted key).
func valueStart(src string, i int) int {
	for i < len(src) && (src[i] == ' ' || src[i] == '\t') {
		i++
	}
	if i >= len(src) || src[i] != '=' {
		return -1
	}
	i++
	for i < len(src) && (src[i] == ' ' || src[i] == '\t') {
		i++
	}
	return i
}

// findKey finds name as a key token at or after from; it returns the token's
// start and end offsets, or -1.
func findKey(src string, from int, name string) (int, int) {
	i := from
	for i < len(src) {
		c := src[i]
		switch {
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'':
			start := i
			end, val := skipString(src, i)
			if val == name && keyBoundaryBefore(src, start) && followedByKeyEnd(src, end) {
				return start, end
			}
			i = end
		case isBare(c):
			start := i
			for i < len(src) && isBare(src[i]) {
				i++
			}
			if src[start:i] == name && keyBoundaryBefore(src, start) && followedByKeyEnd(src, i) {
				return start, i
			}
		default:
			i++
		}
	}
	return -1, -1
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func keyBoundaryBefore(src string, i int) bool {
	for j := i - 1; j >= 0; j-- {
		switch src[j] {
		case ' ', '\t':
			continue
		case '\n', '[', '.', '{', ',':
			return true
		default:
			return false
		}
	}
	return true
}

func followedByKeyEnd(src string, i int) bool {
	for ; i < len(src); i++ {
		switch src[i] {
		case ' ', '\t':
			continue
		case '=', '.', ']':
			return true
		default:
			return false
		}
	}
	return false
}

// skipString returns the offset after the string starting at i and its
// value for single-line strings (escapes undone only for \" and \\).
func skipString(src string, i int) (int, string) {
	q := src[i]
	triple := strings.Repeat(string(q), 3)
	if strings.HasPrefix(src[i:], triple) {
		j := i + 3
		for j < len(src) {
			if q == '"' && src[j] == '\\' {
				j += 2
				continue
			}
			if strings.HasPrefix(src[j:], triple) {
				j += 3
				for j < len(src) && src[j] == q { // up to two quotes may end the content
					j++
				}
				return j, ""
			}
			j++
		}
		return len(src), ""
	}
	var b strings.Builder
	j := i + 1
	for j < len(src) && src[j] != '\n' {
		c := src[j]
		if q == '"' && c == '\\' && j+1 < len(src) {
			b.WriteByte(src[j+1])
			j += 2
			continue
		}
		if c == q {
			return j + 1, b.String()
		}
		b.WriteByte(c)
		j++
	}
	return j, ""
}
