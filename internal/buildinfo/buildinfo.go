// Package buildinfo gives the --version line of keyfleet's binaries from
// the build information the Go toolchain embeds (module version, VCS
// revision and whether the tree was modified), so a bug report names the
// exact build without a release step stamping it.
package buildinfo

import (
	"runtime/debug"
	"strings"
)

// String is the version line of the running binary named name.
func String(name string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Format(name, nil)
	}
	return Format(name, bi)
}

// Format writes name's version line from bi: "fleetd v1.2.3 (rev
// 0123456789ab, modified, go1.26.8)". A nil bi (a binary built without
// module support) gives "fleetd (unknown build)".
func Format(name string, bi *debug.BuildInfo) string {
	if bi == nil {
		return name + " (unknown build)"
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	var details []string
	if rev != "" {
		details = append(details, "rev "+rev[:min(len(rev), 12)])
	}
	if modified == "true" {
		details = append(details, "modified")
	}
	if bi.GoVersion != "" {
		details = append(details, bi.GoVersion)
	}
	line := name + " " + version
	if len(details) > 0 {
		line += " (" + strings.Join(details, ", ") + ")"
	}
	return line
}
