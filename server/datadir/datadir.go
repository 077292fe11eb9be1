// Package datadir is the layout of a fleetd data directory: which file
// holds what. fleetd init writes it, fleetd run reads it, and fleetctl,
// the simulator and tests find the operator credential and the store in
// it; one place names every path so they cannot drift apart.
package datadir

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/keyfleet/keyfleet/server/trust"
)

// Paths of the files in DataDir: the store, the trust material (pki/),
// the operator credential fleetd init writes (admin/), the firmware
// release and, with InsecureSoftKeys, the keys.
type Paths struct{ Dir string }

// Each method names one file or directory under Dir.

func (p Paths) Store() string      { return filepath.Join(p.Dir, "fleet.db") }
func (p Paths) CACert() string     { return filepath.Join(p.Dir, "pki", "ca.pem") }
func (p Paths) UpdateKey() string  { return filepath.Join(p.Dir, "pki", "update.pub.pem") }
func (p Paths) ServerCert() string { return filepath.Join(p.Dir, "pki", "fleetd.pem") }
func (p Paths) ServerKey() string  { return filepath.Join(p.Dir, "pki", "fleetd.key") }
func (p Paths) AdminDir() string   { return filepath.Join(p.Dir, "admin") }
func (p Paths) BirthCA() string    { return filepath.Join(p.Dir, "pki", "idevid-ca.pem") }
func (p Paths) Anchors() string    { return filepath.Join(p.Dir, "pki", "anchors") }
func (p Paths) Firmware() string   { return filepath.Join(p.Dir, "firmware", "current.json") }
func (p Paths) SoftKeys() string   { return filepath.Join(p.Dir, "keys") }

// Trust names the files of the trust material, for package trust.
func (p Paths) Trust() trust.Files {
	return trust.Files{Anchors: p.Anchors(), CACert: p.CACert(), UpdateKey: p.UpdateKey(),
		ServerCert: p.ServerCert(), ServerKey: p.ServerKey(), AdminDir: p.AdminDir(), BirthCA: p.BirthCA()}
}

// Initialised checks that fleetd init made the deployment in Dir (its CA
// certificate is there), so that fleetd run on a wrong or empty directory
// says so instead of failing later on some other file.
func (p Paths) Initialised() error {
	if _, err := os.Stat(p.CACert()); err != nil {
		return fmt.Errorf("server: not initialised? %w", err)
	}
	return nil
}
