// Package provision does what a factory station does for a device: makes
// its key, registers it with fleetd through the admin API and installs the
// keystore. fleetctl device add, the simulator and tests share it.
package provision

import (
	"context"
	"encoding/pem"
	"fmt"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/server/admin"
)

// Device makes a key for id, registers the device and installs its
// keystore in dir. broker, if not empty, overrides the broker address
// fleetd reports. The private key goes only into dir.
func Device(ctx context.Context, c *admin.Client, id, dir, broker string) (admin.ProvisionResponse, error) {
	key, err := device.NewKey()
	if err != nil {
		return admin.ProvisionResponse{}, err
	}
	csr, err := device.CSR(id, key)
	if err != nil {
		return admin.ProvisionResponse{}, err
	}
	resp, err := c.Provision(ctx, id, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	if err != nil {
		return resp, fmt.Errorf("provision %s: %w", id, err)
	}
	if broker == "" {
		broker = resp.Broker
	}
	if err := device.Install(dir, device.Identity{ID: id, Broker: broker}, key, []byte(resp.Cert), []byte(resp.CA), []byte(resp.UpdateKey)); err != nil {
		return resp, err
	}
	resp.Broker = broker
	return resp, nil
}
