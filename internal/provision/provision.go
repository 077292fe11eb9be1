// Package provision does what a factory station does for a device: makes
// its keys (a birth credential and a first identity), registers it with
// fleetd through the admin API and installs the keystore. fleetctl device
// add, the simulator and tests share it.
package provision

import (
	"context"
	"encoding/pem"
	"fmt"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/device"
)

// Device makes the keys for id, registers the device and installs its
// keystore in dir. broker, if not empty, overrides the broker address
// fleetd reports. The private keys go only into dir.
func Device(ctx context.Context, c *client.Client, id, dir, broker string) (adminapi.ProvisionResponse, error) {
	return To(ctx, c, id, &device.DirStorage{Dir: dir}, broker)
}

// Inventory is what a registration records of a device besides its keys:
// labels and a model (Kubernetes label syntax; fleetd checks them).
type Inventory struct {
	Labels map[string]string
	Model  string
}

// Labelled is Device with the device's labels and model recorded at
// registration (fleetctl device add --label --model).
func Labelled(ctx context.Context, c *client.Client, id, dir, broker string, inv Inventory) (adminapi.ProvisionResponse, error) {
	return register(ctx, c, id, &device.DirStorage{Dir: dir}, broker, inv)
}

// To is Device into any keystore storage.
func To(ctx context.Context, c *client.Client, id string, st device.Storage, broker string) (adminapi.ProvisionResponse, error) {
	return register(ctx, c, id, st, broker, Inventory{})
}

func register(ctx context.Context, c *client.Client, id string, st device.Storage, broker string, inv Inventory) (adminapi.ProvisionResponse, error) {
	key, err := device.NewKey()
	if err != nil {
		return adminapi.ProvisionResponse{}, err
	}
	birth, err := device.NewKey()
	if err != nil {
		return adminapi.ProvisionResponse{}, err
	}
	csr, err := device.CSR(id, key)
	if err != nil {
		return adminapi.ProvisionResponse{}, err
	}
	bcsr, err := device.CSR(id, birth)
	if err != nil {
		return adminapi.ProvisionResponse{}, err
	}
	resp, err := c.ProvisionDevice(ctx, adminapi.ProvisionRequest{ID: id, CSR: pemCSR(csr), BirthCSR: pemCSR(bcsr),
		Labels: inv.Labels, Model: inv.Model})
	if err != nil {
		return resp, fmt.Errorf("provision %s: %w", id, err)
	}
	if broker == "" {
		broker = resp.Broker
	}
	b := device.Bundle{Identity: device.Identity{ID: id, Broker: broker}, Key: key, CertPEM: []byte(resp.Cert),
		CAPEM: []byte(resp.CA), UpdatePEM: []byte(resp.UpdateKey), Anchors: resp.Anchors}
	if resp.Birth != "" {
		b.BirthKey, b.BirthCertPEM = birth, []byte(resp.Birth)
	}
	if err := device.InstallBundle(st, b); err != nil {
		return resp, err
	}
	resp.Broker = broker
	return resp, nil
}

func pemCSR(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
