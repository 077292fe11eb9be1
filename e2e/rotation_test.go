package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/server/datadir"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/internal/mqttc"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server"
)

// dialAs connects to the broker with a device credential, as the device
// would, and reports what the broker said.
func dialAs(t *testing.T, broker, id string, cred tls.Certificate, roots *x509.CertPool) error {
	t.Helper()
	c, err := mqttc.Dial(context.Background(), mqttc.Options{
		Broker: broker, ClientID: id, Timeout: 5 * time.Second,
		TLS: &tls.Config{Certificates: []tls.Certificate{cred}, RootCAs: roots, ServerName: "127.0.0.1"},
	})
	if err == nil {
		c.Close()
	}
	return err
}

// Twenty agents rotate twice against fleetd with its keys in SoftHSM2 and
// its embedded broker; every new certificate chains to the CA and carries
// the device's own new key, and once the grace window ends the broker
// refuses the old certificates.
func TestTwentyDevicesRotateTwice(t *testing.T) {
	const n = 20
	clk := &clock{}
	f := fleettest.StartFleet(t, func(c *server.Config) {
		c.Grace = time.Minute
		c.Now = clk.Now
	})
	ctx := context.Background()
	var dirs []string
	for i := 0; i < n; i++ {
		dirs = append(dirs, f.AddDevice(t, fmt.Sprintf("dev-%02d", i)))
	}
	caCerts, err := identity.LoadPEM(datadir.Paths{Dir: f.Config.DataDir}.CACert())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCerts[0])

	// Keep every version's credential to try it at the broker later.
	creds := map[string]map[uint32]tls.Certificate{}
	keep := func(v uint32) {
		for _, d := range dirs {
			ks, err := device.OpenKeystore(d)
			if err != nil {
				t.Fatal(err)
			}
			cred, _, err := ks.TLSCredential(v)
			if err != nil {
				t.Fatalf("%s v%d: %v", d, v, err)
			}
			id := filepath.Base(d)
			if creds[id] == nil {
				creds[id] = map[uint32]tls.Certificate{}
			}
			creds[id][v] = cred
		}
	}
	keep(1)
	runAgents(t, dirs, nil)

	for _, v := range []uint32{2, 3} {
		resp, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{All: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Rotations) != n {
			t.Fatalf("rotations requested: got %d, want %d", len(resp.Rotations), n)
		}
		eventually(t, 60*time.Second, fmt.Sprintf("all devices active at v%d", v), allAt(t, f.Admin, n, v))
		keep(v)
		for id, byVersion := range creds {
			leaf := byVersion[v].Leaf
			got, err := identity.Verify(leaf, roots, time.Now())
			if err != nil {
				t.Fatalf("%s v%d: certificate does not chain to the fleet CA: %v", id, v, err)
			}
			if got != (identity.Identity{Role: identity.RoleDevice, Name: id}) {
				t.Errorf("%s v%d: certificate names %v", id, v, got)
			}
			ks, err := device.OpenKeystore(filepath.Join(f.Dir, "devices", id))
			if err != nil {
				t.Fatal(err)
			}
			key, err := ks.Key(v)
			if err != nil {
				t.Fatal(err)
			}
			if !key.PublicKey.Equal(leaf.PublicKey) {
				t.Errorf("%s v%d: certificate is not for the device's own new key", id, v)
			}
			if byVersion[v-1].Leaf.PublicKey.(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
				t.Errorf("%s v%d: key not renewed", id, v)
			}
			if st := ks.State(); st.Active != v || st.Previous != v-1 || st.Pending != 0 {
				t.Errorf("%s keystore state: got %+v, want active %d previous %d", id, st, v, v-1)
			}
		}
		// Within grace the superseded credential still gets in.
		if err := dialAs(t, f.MQTTAddr(), "dev-00", creds["dev-00"][v-1], roots); err != nil {
			t.Errorf("v%d credential within grace: got %v, want accepted", v-1, err)
		}
	}

	// End the grace window: the engine retires v2, tells the devices, and
	// the broker refuses every old credential.
	clk.Advance(2 * time.Minute)
	eventually(t, 30*time.Second, "v2 retired everywhere", func() bool {
		for id := range creds {
			d, err := f.Admin.Device(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range d.Versions {
				if v.Version < 3 && v.State != "retired" {
					return false
				}
			}
		}
		return true
	})
	for _, id := range []string{"dev-00", "dev-07", "dev-19"} {
		for _, v := range []uint32{1, 2} {
			if err := dialAs(t, f.MQTTAddr(), id, creds[id][v], roots); !errors.Is(err, mqttc.ErrRefused) {
				t.Errorf("%s v%d after grace: got %v, want refused", id, v, err)
			}
		}
		if err := dialAs(t, f.MQTTAddr(), id, creds[id][3], roots); err != nil {
			t.Errorf("%s v3: got %v, want accepted", id, err)
		}
	}
	// The devices dropped their previous version when told to retire it.
	var holding []string
	eventually(t, 30*time.Second, "previous versions deleted on devices", func() bool {
		holding = holding[:0]
		for _, d := range dirs {
			ks, err := device.OpenKeystore(d)
			if err != nil {
				t.Fatal(err)
			}
			if st := ks.State(); st.Previous != 0 {
				holding = append(holding, fmt.Sprintf("%s %+v", filepath.Base(d), st))
			}
		}
		if len(holding) > 0 {
			t.Logf("still holding a previous version: %v", holding)
		}
		return len(holding) == 0
	})
	if got := issuedOnce(t, f.Store()); got != 2*n {
		t.Errorf("issued certificates: got %d, want %d", got, 2*n)
	}
	if st := f.Engine().Stats(); len(st.Rejected) != 0 {
		t.Errorf("rejections in a clean run: %v", st.Rejected)
	}
	_ = protocol.SlotIdentity
}
