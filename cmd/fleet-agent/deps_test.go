package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestAgentLinksOnlyWhatADeviceNeeds keeps the server's parts out of the
// device binary: the broker (mochi-mqtt), the store (bbolt), the issuing CA
// (certs and go.step.sm/crypto's templates) and anything of fleetd's. Each
// of them would cost a device flash and attack surface for code it never
// runs.
//
// PKCS#11 (--key-store) is a C ABI and needs cgo. The CGO_ENABLED=0 build,
// the one cross-compiled for ARM boards (make agents), links no PKCS#11
// and no cgo package at all; a build with cgo (make build on the host, a
// board vendor's SDK build) links github.com/miekg/pkcs11 and the RFC 7512
// parser go.step.sm/crypto/kms/uri for the token key store, and nothing
// else that the CGO_ENABLED=0 build leaves out.
func TestAgentLinksOnlyWhatADeviceNeeds(t *testing.T) {
	forbidden := []struct{ prefix, why string }{
		{"github.com/mochi-mqtt/", "the broker"},
		{"go.etcd.io/bbolt", "the store"},
		{"go.step.sm/crypto", "the issuing CA's certificate templates"},
		{"github.com/miekg/pkcs11", "PKCS#11"},
		{"github.com/ThalesGroup/crypto11", "PKCS#11"},
		{"github.com/keyfleet/keyfleet/server", "fleetd"},
	}
	for _, tc := range []struct {
		cgo string
		// need: linked only by, and always by, the cgo build (the token
		// key store); each is exempt from forbidden there.
		need []string
	}{
		{cgo: "0"},
		{cgo: "1", need: []string{"github.com/miekg/pkcs11", "go.step.sm/crypto/kms/uri", "go.step.sm/crypto/internal/termutil"}},
	} {
		t.Run("CGO_ENABLED="+tc.cgo, func(t *testing.T) {
			// Standard packages are left out: they are never forbidden,
			// and net and os/user carry cgo files that CGO_ENABLED=0
			// simply skips.
			cmd := exec.Command("go", "list", "-deps",
				"-f", "{{if not .Standard}}{{.ImportPath}} {{len .CgoFiles}}{{end}}", ".")
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+tc.cgo)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps: %v\n%s", err, out)
			}
			var pkgs []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				path, cgo, _ := strings.Cut(line, " ")
				pkgs = append(pkgs, path)
				if slices.Contains(tc.need, path) {
					continue
				}
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
			for _, n := range tc.need {
				if !slices.Contains(pkgs, n) {
					t.Errorf("fleet-agent built with CGO_ENABLED=%s does not link %s: --key-store pkcs11: has no token support", tc.cgo, n)
				}
			}
			if len(pkgs) < 5 {
				t.Fatalf("go list -deps listed %d non-standard packages, want the agent's (device, protocol, ...):\n%s", len(pkgs), out)
			}
		})
	}
}
