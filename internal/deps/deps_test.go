package deps

import (
	"bufio"
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/keyfleet/keyfleet"

// moduleRoot is the directory of keyfleet's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside a Go module")
	}
	return filepath.Dir(gomod)
}

// TestLinks: each binary links only what its users need. An operator's
// CLI must not carry the broker or the store; a device agent carries
// neither, nor the server-side certificate toolkit, nor the selector
// library (k8s.io/apimachinery: the server selects, devices are selected);
// the rotation engine does not reach into the broker; only server/metrics
// and server/ops know Prometheus: the domain packages keep counters of
// their own, which package metrics adapts.
func TestLinks(t *testing.T) {
	for _, tc := range []struct {
		pkg       string
		forbidden []string // import paths; each also forbids its subpackages
		allowed   []string // packages under a forbidden path that may be linked
	}{
		{module + "/cmd/fleetctl", []string{"github.com/mochi-mqtt/server", "go.etcd.io/bbolt", "github.com/prometheus", "k8s.io/apimachinery"}, nil},
		// The agent's cgo build parses --key-store with go.step.sm's RFC
		// 7512 parser, the one fleetd's --key-uri uses: two small packages.
		{module + "/cmd/fleet-agent", []string{"github.com/mochi-mqtt/server", "go.etcd.io/bbolt", "go.step.sm/crypto", "github.com/prometheus", "k8s.io/apimachinery"},
			[]string{"go.step.sm/crypto/kms/uri", "go.step.sm/crypto/internal/termutil"}},
		{module + "/server/rotation", []string{module + "/server/broker", "github.com/prometheus"}, nil},
		{module + "/server/broker", []string{"github.com/prometheus"}, nil},
		{module + "/server/store", []string{"github.com/prometheus"}, nil},
		{module + "/server/trust", []string{"github.com/prometheus"}, nil},
		{module + "/server/escrow", []string{"github.com/prometheus"}, nil},
		{module + "/server/release", []string{"github.com/prometheus"}, nil},
		{module + "/server/admin", []string{"github.com/prometheus"}, nil},
		{module + "/server/campaign", []string{"github.com/prometheus"}, nil},
		{module + "/adminapi", []string{module + "/server"}, nil},
		{module + "/adminapi/client", []string{module + "/server"}, nil},
	} {
		t.Run(strings.TrimPrefix(tc.pkg, module+"/"), func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", tc.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", tc.pkg, err)
			}
			found := map[string][]string{} // forbidden path -> the packages of it linked
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				dep := sc.Text()
				if slices.Contains(tc.allowed, dep) {
					continue
				}
				for _, f := range tc.forbidden {
					if dep == f || strings.HasPrefix(dep, f+"/") {
						found[f] = append(found[f], dep)
					}
				}
			}
			for _, f := range tc.forbidden {
				if deps := found[f]; len(deps) > 0 {
					t.Errorf("%s links %s (%d packages, first %s)", tc.pkg, f, len(deps), deps[0])
				}
			}
		})
	}
}

// maxWiringLines bounds the root server package: it builds the parts from
// the config and starts and stops them; anything more belongs in a part.
const maxWiringLines = 400

// TestServerIsWiring: the root server package stays within
// maxWiringLines lines of non-test Go.
func TestServerIsWiring(t *testing.T) {
	dir := filepath.Join(moduleRoot(t), "server")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		total += bytes.Count(b, []byte("\n"))
	}
	if total > maxWiringLines {
		t.Errorf("the root server package has %d lines of non-test Go, want at most %d", total, maxWiringLines)
	}
}

// TestFilesNamedByConcern: no Go file is named after a milestone
// (offline.go) or as an extension of another (*_ext.go); test files count
// by the name they test.
func TestFilesNamedByConcern(t *testing.T) {
	root := moduleRoot(t)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".go"), "_test")
		if base == "offline" || strings.HasSuffix(base, "_ext") {
			rel, _ := filepath.Rel(root, path)
			t.Errorf("%s: name files by concern, not offline.go or *_ext.go", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
