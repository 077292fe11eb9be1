package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// The admin API lets in operators' certificates only.
func TestAdminAPIRefusesNonOperators(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	dir := f.AddDevice(t, "dev-1")
	ks, err := device.OpenKeystore(dir)
	if err != nil {
		t.Fatal(err)
	}
	devCred, _, err := ks.TLSCredential(1)
	if err != nil {
		t.Fatal(err)
	}
	fleetdCred, err := tls.LoadX509KeyPair(datadir.Paths{Dir: f.Config.DataDir}.ServerCert(), datadir.Paths{Dir: f.Config.DataDir}.ServerKey())
	if err != nil {
		t.Fatal(err)
	}
	// An admin-looking certificate from a CA that is not the fleet's.
	foreignKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreignRoot, err := certs.NewRoot(foreignKey, "foreign CA", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := certs.NewCA(foreignRoot, foreignKey, certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreignLeaf, err := foreignCA.Issue(context.Background(), certs.Request{Identity: identity.Identity{Role: identity.RoleAdmin, Name: "admin"}, PublicKey: &leafKey.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	foreignCred := tls.Certificate{Certificate: [][]byte{foreignLeaf.Raw}, PrivateKey: leafKey}

	roots := ks.Roots()
	for _, tc := range []struct {
		name       string
		creds      []tls.Certificate
		wantStatus int // 0: the TLS handshake itself must fail
	}{
		{"no client certificate", nil, 0},
		{"certificate from another CA", []tls.Certificate{foreignCred}, 0},
		{"device certificate", []tls.Certificate{devCred}, http.StatusForbidden},
		{"fleetd's own certificate", []tls.Certificate{fleetdCred}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := client.New(f.AdminAddr(), &tls.Config{Certificates: tc.creds, RootCAs: roots})
			_, err := c.Devices(context.Background())
			var apiErr *client.APIError
			switch {
			case tc.wantStatus == 0 && err == nil:
				t.Fatal("got a response, want the TLS handshake refused")
			case tc.wantStatus == 0 && errors.As(err, &apiErr):
				t.Fatalf("got HTTP %d, want the TLS handshake refused", apiErr.Status)
			case tc.wantStatus != 0 && (!errors.As(err, &apiErr) || apiErr.Status != tc.wantStatus):
				t.Fatalf("got %v, want HTTP %d", err, tc.wantStatus)
			}
		})
	}
	// And nothing changed for the refusals: still one device, version 1.
	if got := activeVersions(t, f.Admin); len(got) != 1 || got["dev-1"] != 1 {
		t.Errorf("devices after refusals: %v", got)
	}
}

// Bad operator requests get a clear error and change nothing.
func TestAdminAPIBadRequests(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	f.AddDevice(t, "dev-1")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		want int
	}{
		{"rotate unknown device", func() error {
			_, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: []string{"nope"}})
			return err
		}, http.StatusNotFound},
		{"rotate with neither devices nor all", func() error {
			_, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{})
			return err
		}, http.StatusBadRequest},
		{"show unknown device", func() error { _, err := f.Admin.Device(ctx, "nope"); return err }, http.StatusNotFound},
		{"add a device twice", func() error {
			_, err := f.Admin.Provision(ctx, "dev-1", csrPEM(t, "dev-1"))
			return err
		}, http.StatusConflict},
		{"add with a CSR naming another device", func() error {
			_, err := f.Admin.Provision(ctx, "dev-2", csrPEM(t, "dev-3"))
			return err
		}, http.StatusBadRequest},
		{"add with a bad device id", func() error {
			_, err := f.Admin.Provision(ctx, "a/b", csrPEM(t, "a/b"))
			return err
		}, http.StatusBadRequest},
		{"add with garbage for a CSR", func() error {
			_, err := f.Admin.Provision(ctx, "dev-4", []byte("not a csr"))
			return err
		}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := f.Store().VerifyAudit(ctx)
			err := tc.call()
			var apiErr *client.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != tc.want {
				t.Fatalf("got %v, want HTTP %d", err, tc.want)
			}
			if apiErr.Message == "" {
				t.Error("error without a message")
			}
			if after, _ := f.Store().VerifyAudit(ctx); after != before {
				t.Errorf("audit records: %d before, %d after a refused request", before, after)
			}
		})
	}
	if got := activeVersions(t, f.Admin); len(got) != 1 {
		t.Errorf("devices: got %v, want only dev-1", got)
	}
}

// A batch registration answers each device on its own: good ones are
// stored (in one transaction), bad ones refused with a reason, nothing else
// changes.
func TestAdminBatchProvision(t *testing.T) {
	f := fleettest.StartFleet(t, nil)
	f.AddDevice(t, "taken")
	ctx := context.Background()
	csr := func(name string) []byte {
		k, _ := device.NewKey()
		der, err := device.CSR(name, k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	before, _ := f.Store().VerifyAudit(ctx)
	resp, err := f.Admin.ProvisionBatch(ctx, adminapi.BatchProvisionRequest{Devices: []adminapi.BatchDevice{
		{ID: "b-1", CSR: csr("b-1")},
		{ID: "taken", CSR: csr("taken")},
		{ID: "b-2", CSR: csr("someone-else")},
		{ID: "b-3", CSR: []byte{0x30, 0x00}},
		{ID: "b-4", CSR: csr("b-4")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"", "already exists", "another identity", "csr", ""} {
		r := resp.Results[i]
		switch {
		case want == "" && (r.Error != "" || len(r.Cert) == 0):
			t.Errorf("%s: got error %q, want a certificate", r.ID, r.Error)
		case want != "" && !strings.Contains(r.Error, want):
			t.Errorf("%s: got error %q, want one containing %q", r.ID, r.Error, want)
		}
	}
	after, _ := f.Store().VerifyAudit(ctx)
	if after != before+2 {
		t.Errorf("audit records: %d before, %d after; want 2 more (b-1, b-4)", before, after)
	}
	if got := activeVersions(t, f.Admin); len(got) != 3 {
		t.Errorf("devices: %v, want taken, b-1, b-4", got)
	}
	if _, err := f.Admin.ProvisionBatch(ctx, adminapi.BatchProvisionRequest{}); err == nil {
		t.Error("empty batch: got nil error")
	}
}
