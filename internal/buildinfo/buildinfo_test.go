package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var out []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			out = append(out, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"no build info", nil, "fleetd (unknown build)"},
		{"release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}},
			"fleetd v1.2.3 (go1.26.8)"},
		{"checkout, clean", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: settings("vcs", "git", "vcs.revision", "7edb8906f00dfeedbeef0123456789abcdef0123", "vcs.modified", "false")},
			"fleetd (devel) (rev 7edb8906f00d, go1.26.8)"},
		{"checkout, modified", &debug.BuildInfo{GoVersion: "go1.26.8",
			Settings: settings("vcs.revision", "7edb8906f00dfeedbeef0123456789abcdef0123", "vcs.modified", "true")},
			"fleetd (devel) (rev 7edb8906f00d, modified, go1.26.8)"},
		{"short revision", &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}, Settings: settings("vcs.revision", "abc")},
			"fleetd v0.1.0 (rev abc)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Format("fleetd", tc.bi); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// The test binary has build information too: its line names it and the
// Go version it was built with.
func TestString(t *testing.T) {
	got := String("fleetctl")
	if !strings.HasPrefix(got, "fleetctl ") || !strings.Contains(got, "go1.") {
		t.Errorf("String = %q, want fleetctl's name and a Go version", got)
	}
}
