//go:build linux

// Package release owns a release root on disk: fetching and unpacking
// releases, the atomic `current` link, the history, pruning and the lock.
// It knows nothing of processes or sockets.
//
// Layout under the root:
//
//	releases/<id>/            one release; never modified after activation
//	releases/.incoming/<tmp>  staging for Fetch (and for Remove)
//	current -> releases/<id>  relative symlink
//	shared/                   paths linked into releases (Link)
//	.agent/state.json         history (Record, History)
//	.agent/digests/<id>       content digest of each fetched release
//	.agent/lock               flock(2): one mutation at a time (Lock)
//
// Invariants:
//
//   - current is always either absent or a link to a complete release:
//     Activate makes a new link under a temporary name and renames it over
//     current, then fsyncs the root. A release appears under releases/
//     only by one rename(2) of a fully unpacked, verified and synced
//     (syncfs) staging tree.
//   - Fetch writes nothing outside releases/.incoming/<tmp> until that
//     rename. On every error the staging directory is removed; a crash
//     leaves it behind and the next Open removes it (when it can take the
//     lock).
//   - state.json is replaced whole (temp file, fsync, rename, fsync dir);
//     it is never truncated in place and never silently reset: a corrupt
//     file is reported (ErrStateCorrupt) and left for the operator. The
//     release directories on disk are the truth; history only orders them.
//
// Unpacking: go-getter (v2, with an explicit Client: an HTTP getter with
// X-Terraform-Get disabled and a redirect check, a file getter that
// copies, LimitedDecompressors, DisableSymlinks) only downloads the
// artifact into staging and verifies its checksum; it is always told
// archive=false, so its decompressors never run. This package unpacks
// tar, tar.gz/tgz, tar.bz2/tbz2, tar.zst/tzst and zip itself, and copies
// local directories itself (go-getter would symlink them):
//
//   - names are checked lexically: no absolute path, no "..", no NUL;
//   - every parent directory is one the unpacker created, never a symlink,
//     and files are created O_EXCL|O_NOFOLLOW, so no write goes through a
//     link; duplicate names are refused (a repeated directory is allowed);
//   - symlinks must point inside the release (relative targets only);
//     hard links only to an earlier regular file of the same archive;
//   - devices, FIFOs, sockets and other entry types are refused;
//   - entries and bytes are counted as written (not as headers claim)
//     against Options.MaxFiles and Options.MaxBytes;
//   - then the staged tree is walked again, whatever wrote it: every
//     symlink is resolved as the kernel would, through chains of links,
//     and must stay inside; only directories, regular files and symlinks
//     may exist; the counts are checked again and a content digest is
//     computed.
//
// Permissions are kept (owner read/write always added; setuid, setgid and
// sticky bits dropped); owners and timestamps are not. An archive is
// unpacked as it is: a single top-level folder is not stripped. A file
// that is not an archive (no known extension, or ?archive=false) becomes
// the release's only file, under its own name. Single-file compressions
// (.gz, .bz2, .xz, .zst) and .tar.xz are refused (ErrUnsupportedArchive).
//
// Fetching: the URL's scheme is checked against Options.Allow before
// go-getter sees it, and so is the scheme of a checksum=file: URL; forced
// getters ("git::…") and go-getter subdirectories ("…//sub") are refused.
// An http(s) redirect is followed only to an allowed http or https URL.
// A checksum=file: list is fetched by go-getter into os.TempDir and
// removed at once. The download is limited to MaxBytes plus 2 KiB per
// allowed entry plus 1 MiB (refused early by Content-Length); Timeout
// bounds download, unpack and verification together.
//
// Ids: an existing releases/<id> is never replaced or modified by Fetch.
// Fetching it again is ErrExists, unless FetchRequest.Force is set and the
// new content is identical (same digest): then Fetch succeeds and changes
// nothing.
//
// Errors are one line, "<op> <subject>: <cause>", with URLs redacted
// (RedactURL), e.g. `unpack app.tgz: entry "../evil": path escapes the
// release`; callers branch on the ErrX sentinels with errors.Is.
//
// Concurrency: Store methods are safe for concurrent use within a process.
// Across processes, callers hold Lock around a mutation (Fetch, Link,
// Activate, Remove, Prune, Record): the Store does not take it itself.
package release
