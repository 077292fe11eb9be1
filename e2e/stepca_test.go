package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/certs/stepca/stepcatest"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
	"github.com/keyfleet/keyfleet/server/issuing"
)

// TestStepCAIssuerAtTheBroker runs fleetd with step-ca as its issuer, as
// an operator sets it up: fleetd init --issuer stepca makes the
// provisioner key in the token and writes its public JWK, step-ca (real,
// in-process) registers that key, fleetd runs against it. Devices
// provisioned then hold certificates step-ca issued (chaining to its root
// through its intermediate, for the device's own key), the embedded broker
// admits them, and a revoked device is refused at the broker while its
// certificate is revoked at step-ca; the device next to it stays.
func TestStepCAIssuerAtTheBroker(t *testing.T) {
	ctx := context.Background()
	f := fleettest.InitFleet(t, func(c *server.Config) {
		c.Issuer = issuing.Config{Kind: issuing.KindStepCA, StepCAProvisioner: "keyfleet"}
	})
	b, err := os.ReadFile(filepath.Join(f.Config.DataDir, issuing.JWKFile))
	if err != nil {
		t.Fatalf("fleetd init left no provisioner JWK: %v", err)
	}
	var jwk jose.JSONWebKey
	if err := json.Unmarshal(b, &jwk); err != nil {
		t.Fatal(err)
	}
	sca := stepcatest.Start(t, "keyfleet", jwk.Key, 0)
	f.Config.Issuer.StepCAURL, f.Config.Issuer.StepCARoot = sca.URL, sca.RootFile
	f.Restart(t)

	stolen, fine := f.AddDevice(t, "stolen"), f.AddDevice(t, "fine")
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sca.Root)
	inter.AddCert(sca.Intermediate)
	serials := map[string]string{}
	for id, dir := range map[string]string{"stolen": stolen, "fine": fine} {
		ks, err := device.OpenKeystore(dir)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ks.Cert(ks.State().Active)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: certificate does not chain to step-ca's root: %v", id, err)
		}
		key, err := ks.Key(ks.State().Active)
		if err != nil {
			t.Fatal(err)
		}
		if !key.PublicKey.Equal(c.PublicKey) {
			t.Errorf("%s: certificate is not for the device's key", id)
		}
		serials[id] = c.SerialNumber.String()
	}

	var mu sync.Mutex
	refused := map[string]int{}
	runAgents(t, []string{stolen, fine}, func(o *device.Options) {
		o.OnEvent = func(e device.Event) {
			if e.Kind == device.EventRefused {
				mu.Lock()
				refused[e.Device]++
				mu.Unlock()
			}
		}
	})
	eventually(t, 10*time.Second, "both devices connected with step-ca's certificates", func() bool {
		return f.Server.Broker().Connected() >= 3 // two devices and fleetd
	})
	if _, err := f.Admin.Revoke(ctx, "stolen", "reported stolen"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	eventually(t, 10*time.Second, "the revoked device refused at the broker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return refused["stolen"] >= 1
	})
	for id, want := range map[string]bool{"stolen": true, "fine": false} {
		got, err := sca.DB.IsRevoked(serials[id])
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: revoked at step-ca %v, want %v", id, got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if refused["fine"] != 0 {
		t.Errorf("the device next to it was refused %d times", refused["fine"])
	}
	if f.Server.Broker().Connected() < 2 {
		t.Errorf("the device next to it was dropped")
	}
}

// TestStepCARotatesFleet: with step-ca as issuer, fleetd's anchor set
// carries step-ca's root and intermediate, so 50 agents rotate twice
// through a real step-ca: each new certificate chains to step-ca's root
// and carries the device's own new key. A device revoked afterwards is
// refused at the broker and revoked at step-ca.
func TestStepCARotatesFleet(t *testing.T) {
	const n = 50
	ctx := context.Background()
	f := fleettest.InitFleet(t, func(c *server.Config) {
		c.Issuer = issuing.Config{Kind: issuing.KindStepCA, StepCAProvisioner: "keyfleet"}
	})
	b, err := os.ReadFile(filepath.Join(f.Config.DataDir, issuing.JWKFile))
	if err != nil {
		t.Fatal(err)
	}
	var jwk jose.JSONWebKey
	if err := json.Unmarshal(b, &jwk); err != nil {
		t.Fatal(err)
	}
	sca := stepcatest.Start(t, "keyfleet", jwk.Key, 0)
	f.Config.Issuer.StepCAURL, f.Config.Issuer.StepCARoot = sca.URL, sca.RootFile
	f.Restart(t)

	var dirs []string
	for i := 0; i < n; i++ {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("sc-%02d", i)))
	}
	var mu sync.Mutex
	refused := map[string]int{}
	runAgents(t, dirs, func(o *device.Options) {
		o.OnEvent = func(e device.Event) {
			if e.Kind == device.EventRefused {
				mu.Lock()
				refused[e.Device]++
				mu.Unlock()
			}
		}
	})
	for _, v := range []uint32{2, 3} {
		if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 60*time.Second, fmt.Sprintf("all %d devices at v%d through step-ca", n, v), allAt(t, f.Admin, n, v))
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sca.Root)
	inter.AddCert(sca.Intermediate)
	serials := map[string]string{}
	for i, dir := range dirs {
		ks, err := device.OpenKeystore(dir)
		if err != nil {
			t.Fatal(err)
		}
		if ks.State().Active != 3 {
			t.Fatalf("device %d: active v%d on disk, want v3", i, ks.State().Active)
		}
		for _, v := range []uint32{2, 3} {
			c, err := ks.Cert(v)
			if err != nil {
				if v == 2 {
					continue // the previous version may be retired already
				}
				t.Fatal(err)
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("device %d v%d: certificate does not chain to step-ca's root: %v", i, v, err)
			}
			key, err := ks.Key(v)
			if err != nil {
				t.Fatal(err)
			}
			if !key.PublicKey.Equal(c.PublicKey) {
				t.Errorf("device %d v%d: certificate is not for the device's own key", i, v)
			}
			if v == 3 {
				serials[fmt.Sprintf("sc-%02d", i)] = c.SerialNumber.String()
			}
		}
	}
	if _, err := f.Admin.Revoke(ctx, "sc-00", "reported stolen"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	eventually(t, 10*time.Second, "the revoked device refused at the broker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return refused["sc-00"] >= 1
	})
	for id, want := range map[string]bool{"sc-00": true, "sc-01": false} {
		got, err := sca.DB.IsRevoked(serials[id])
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: revoked at step-ca %v, want %v", id, got, want)
		}
	}
}
