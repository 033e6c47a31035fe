//go:build linux

package release

import (
	"net/url"
	"strings"
)

const redacted = "xxxxx"

// sensitiveParams are query parameter names (lower case substrings) whose
// values RedactURL hides: presigned S3/GCS URLs, API tokens and the like.
var sensitiveParams = []string{"token", "secret", "password", "passwd", "signature", "sig", "key", "credential", "auth", "session"}

// RedactURL returns u fit for logs, errors and state.json: a password in the
// userinfo becomes xxxxx (a user without password is taken for a token and
// hidden whole), and so do the values of query parameters whose name looks
// secret (token, signature, key, X-Amz-Credential, …). A go-getter forced
// prefix ("s3::") is kept. A string that does not parse as a URL, or a
// plain path, is returned unchanged.
func RedactURL(u string) string {
	out, _ := redactURL(u)
	return out
}

// redactURL returns the redacted URL and the secret strings it hid (raw and
// unescaped forms), so error text from lower layers can be scrubbed too.
func redactURL(raw string) (string, []string) {
	prefix, rest := splitForced(raw)
	if !strings.Contains(rest, "://") {
		return raw, nil
	}
	p, err := url.Parse(rest)
	if err != nil {
		return prefix + redactUnparsable(rest), nil
	}
	var secrets []string
	if p.User != nil {
		if pw, ok := p.User.Password(); ok {
			secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
			p.User = url.UserPassword(p.User.Username(), redacted)
		} else {
			name := p.User.Username()
			secrets = append(secrets, name, url.QueryEscape(name), url.PathEscape(name))
			p.User = url.User(redacted)
		}
	}
	if p.RawQuery != "" {
		parts := strings.Split(p.RawQuery, "&")
		for i, kv := range parts {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || v == "" {
				continue
			}
			key, err := url.QueryUnescape(k)
			if err != nil {
				key = k
			}
			if !isSensitive(key) {
				continue
			}
			secrets = append(secrets, v)
			if uv, err := url.QueryUnescape(v); err == nil {
				secrets = append(secrets, uv)
			}
			parts[i] = k + "=" + redacted
		}
		p.RawQuery = strings.Join(parts, "&")
	}
	if len(secrets) == 0 {
		return raw, nil // nothing hidden: keep the caller's spelling
	}
	return prefix + p.String(), nonEmpty(secrets)
}

// redactUnparsable hides whatever sits between "://" and "@" in a string
// url.Parse refused, so a malformed URL with credentials is still safe to print.
func redactUnparsable(s string) string {
	i := strings.Index(s, "://")
	at := strings.LastIndex(s, "@")
	if i < 0 || at < i+3 {
		return s
	}
	return s[:i+3] + redacted + s[at:]
}

func isSensitive(key string) bool {
	k := strings.ToLower(key)
	for _, s := range sensitiveParams {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

func nonEmpty(ss []string) []string {
	out := ss[:0]
	for _, s := range ss {
		if len(s) >= 3 { // too short to scrub without mangling ordinary text
			out = append(out, s)
		}
	}
	return out
}

// scrub removes secrets from an error text produced by a lower layer.
func scrub(msg string, secrets []string) string {
	for _, s := range secrets {
		msg = strings.ReplaceAll(msg, s, redacted)
	}
	return msg
}

// splitForced splits a go-getter forced-getter prefix ("s3::") from the URL.
func splitForced(raw string) (prefix, rest string) {
	i := strings.Index(raw, "::")
	if i <= 0 {
		return "", raw
	}
	if j := strings.Index(raw, "://"); j >= 0 && j < i {
		return "", raw
	}
	return raw[:i+2], raw[i+2:]
}
