package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentLinksOnlyWhatADeviceNeeds keeps the server's parts out of the
// device binary: the broker (mochi-mqtt), the store (bbolt), the issuing CA
// (certs and go.step.sm/crypto), PKCS#11 and anything of fleetd's. Each of
// them would cost a device flash and attack surface for code it never runs,
// and a cgo package would stop the agent from building with CGO_ENABLED=0.
func TestAgentLinksOnlyWhatADeviceNeeds(t *testing.T) {
	// Standard packages are left out: they are never forbidden, and net
	// and os/user carry cgo files that CGO_ENABLED=0 simply skips.
	out, err := exec.Command("go", "list", "-deps",
		"-f", "{{if not .Standard}}{{.ImportPath}} {{len .CgoFiles}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []struct{ prefix, why string }{
		{"github.com/mochi-mqtt/", "the broker"},
		{"go.etcd.io/bbolt", "the store"},
		{"go.step.sm/crypto", "the issuing CA's certificate templates"},
		{"github.com/miekg/pkcs11", "PKCS#11"},
		{"github.com/ThalesGroup/crypto11", "PKCS#11"},
		{"github.com/keyfleet/keyfleet/server", "fleetd"},
	}
	var pkgs int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, cgo, _ := strings.Cut(line, " ")
		pkgs++
		for _, f := range forbidden {
			if strings.HasPrefix(path, f.prefix) {
				t.Errorf("fleet-agent links %s (%s)", path, f.why)
			}
		}
		if path == "github.com/keyfleet/keyfleet/certs" {
			t.Errorf("fleet-agent links %s (the issuing CA): import certs/identity instead", path)
		}
		if cgo != "0" {
			t.Errorf("fleet-agent links %s, which uses cgo (%s files)", path, cgo)
		}
	}
	if pkgs < 5 {
		t.Fatalf("go list -deps listed %d non-standard packages, want the agent's (device, protocol, ...):\n%s", pkgs, out)
	}
}
