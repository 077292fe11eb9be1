package scripts

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// agentBudget bounds a stripped agent binary: what a device's flash gives
// it. Today's builds are about 7.5 MiB (linux/arm64) and 7.8 MiB (armv7);
// the budget leaves room to grow, and a server-side module pulled in by
// accident (the broker, the store, PKCS#11, step-ca) would overrun it.
const agentBudget = 12 << 20

// TestAgentsCrossCompile runs what `make agents` runs (scripts/agents.sh)
// into a temporary directory and checks both binaries: an ELF for the
// board's machine, static (no interpreter, no shared libraries: a board
// needs no particular libc), built with CGO_ENABLED=0 (and GOARM=7 for
// 32-bit ARM) as its build information records, linking none of the
// server's modules, and within agentBudget.
func TestAgentsCrossCompile(t *testing.T) {
	// `make agents` is this script with bin/ as the output.
	if out, err := exec.Command("make", "-C", "..", "-n", "agents").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "scripts/agents.sh bin") {
		t.Fatalf("make -n agents does not run scripts/agents.sh bin: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command("./agents.sh", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("agents.sh: %v\n%s", err, out)
	}
	forbidden := []struct{ module, why string }{
		{"github.com/mochi-mqtt/server", "the broker"},
		{"go.etcd.io/bbolt", "the store"},
		{"github.com/miekg/pkcs11", "PKCS#11 (cgo)"},
		{"github.com/ThalesGroup/crypto11", "PKCS#11 (cgo)"},
		{"github.com/smallstep/certificates", "step-ca"},
		{"go.step.sm/crypto", "the issuing CA's certificate templates"},
		{"github.com/prometheus", "metrics"},
	}
	for _, tc := range []struct {
		file    string
		machine elf.Machine
		class   elf.Class
		goarch  string
		goarm   string
	}{
		{"fleet-agent-linux-arm64", elf.EM_AARCH64, elf.ELFCLASS64, "arm64", ""},
		{"fleet-agent-linux-armv7", elf.EM_ARM, elf.ELFCLASS32, "arm", "7"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			f, err := elf.Open(path)
			if err != nil {
				t.Fatalf("not an ELF file: %v", err)
			}
			defer f.Close()
			if f.Machine != tc.machine || f.Class != tc.class || f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
				t.Errorf("machine %v, class %v, OS ABI %v; want %v, %v, Linux", f.Machine, f.Class, f.OSABI, tc.machine, tc.class)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("has a program interpreter: dynamically linked, want static")
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("links shared libraries %v, want none", libs)
			}
			bi, err := buildinfo.ReadFile(path)
			if err != nil {
				t.Fatalf("build information: %v", err)
			}
			if bi.Path != "github.com/keyfleet/keyfleet/cmd/fleet-agent" {
				t.Errorf("main package %s, want cmd/fleet-agent", bi.Path)
			}
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			for k, want := range map[string]string{"GOOS": "linux", "GOARCH": tc.goarch, "GOARM": tc.goarm, "CGO_ENABLED": "0", "-trimpath": "true"} {
				if settings[k] != want {
					t.Errorf("built with %s=%q, want %q", k, settings[k], want)
				}
			}
			for _, d := range bi.Deps {
				for _, fb := range forbidden {
					if d.Path == fb.module || strings.HasPrefix(d.Path, fb.module+"/") {
						t.Errorf("links %s %s (%s)", d.Path, d.Version, fb.why)
					}
				}
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() > agentBudget {
				t.Errorf("%d bytes, over the budget of %d", st.Size(), agentBudget)
			}
			t.Logf("%s: %d bytes (%.1f MiB), stripped, %d modules", tc.file, st.Size(), float64(st.Size())/(1<<20), len(bi.Deps))
		})
	}
}
