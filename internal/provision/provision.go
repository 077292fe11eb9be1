// Package provision does what a factory station does for a device: makes
// its keys (a birth credential and a first identity), registers it with
// fleetd through the admin API and installs the keystore. fleetctl device
// add, the simulator and tests share it.
package provision

import (
	"context"
	"crypto"
	"crypto/ecdsa"
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
	return register(ctx, c, id, &device.DirStorage{Dir: dir}, broker, inv, nil)
}

// To is Device into any keystore storage.
func To(ctx context.Context, c *client.Client, id string, st device.Storage, broker string) (adminapi.ProvisionResponse, error) {
	return register(ctx, c, id, st, broker, Inventory{}, nil)
}

// InToken is Device for a device whose keys live in a token (a TPM or
// secure element): its first identity key and its birth key are
// generated inside hw, and dir keeps only their references, so no private
// key of the device is ever in a file.
func InToken(ctx context.Context, c *client.Client, id, dir, broker string, inv Inventory, hw device.HardwareKeys) (adminapi.ProvisionResponse, error) {
	return register(ctx, c, id, &device.DirStorage{Dir: dir}, broker, inv, hw)
}

// newKey makes one of the device's keys: in software, or in hw.
func newKey(hw device.HardwareKeys, name string) (crypto.Signer, string, error) {
	if hw == nil {
		k, err := device.NewKey()
		return k, "", err
	}
	ref, k, err := hw.Generate(name)
	return k, ref, err
}

func register(ctx context.Context, c *client.Client, id string, st device.Storage, broker string, inv Inventory, hw device.HardwareKeys) (adminapi.ProvisionResponse, error) {
	key, keyRef, err := newKey(hw, "identity/v1")
	if err != nil {
		return adminapi.ProvisionResponse{}, err
	}
	birth, birthRef, err := newKey(hw, "birth")
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
	b := device.Bundle{Identity: device.Identity{ID: id, Broker: broker}, KeyRef: keyRef, CertPEM: []byte(resp.Cert),
		CAPEM: []byte(resp.CA), UpdatePEM: []byte(resp.UpdateKey), Anchors: resp.Anchors}
	if hw == nil {
		b.Key = key.(*ecdsa.PrivateKey)
	}
	if resp.Birth != "" {
		b.BirthCertPEM, b.BirthKeyRef = []byte(resp.Birth), birthRef
		if hw == nil {
			b.BirthKey = birth.(*ecdsa.PrivateKey)
		}
	} else if hw != nil {
		_ = hw.Destroy(birthRef) // fleetd issues no birth credentials
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
