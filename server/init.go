package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/keyfleet/keyfleet/server/custody"
	"github.com/keyfleet/keyfleet/server/datadir"
	"github.com/keyfleet/keyfleet/server/escrow"
	"github.com/keyfleet/keyfleet/server/issuing"
	"github.com/keyfleet/keyfleet/server/trust"
)

// ErrInitialized: Init found an existing deployment in the data directory.
var ErrInitialized = errors.New("server: already initialised")

// Init creates a deployment: the CA key, the update-signing key, the
// birth CA key and the escrow KEK in the token (sensitive, non-extractable), the CA
// certificate, anchor set version 1, fleetd's TLS credential and an
// operator credential in DataDir/admin. It refuses to run twice on the
// same data directory.
func Init(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	p := datadir.Paths{Dir: cfg.DataDir}
	if _, err := os.Stat(p.CACert()); err == nil {
		return fmt.Errorf("%w: %s exists", ErrInitialized, p.CACert())
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("server: init: %w", err)
	}
	keys, err := custody.OpenIn(cfg.HSM, cfg.InsecureSoftKeys, cfg.DataDir, cfg.Logger)
	if err != nil {
		return err
	}
	defer keys.Close()
	if err := errors.Join(trust.Bootstrap(ctx, trust.Options{Files: p.Trust(), Keys: keys, Now: cfg.Now}, cfg.ServerNames),
		issuing.Init(cfg.Issuer, keys, p.Dir, cfg.Logger), escrow.EnsureKEK(keys)); err != nil { // all run: a retried init keeps the keys made
		return err
	}
	cfg.Logger.Info("initialised", "data", cfg.DataDir, "ca_key", keys.URI(trust.LabelCA), "update_key", keys.URI(trust.LabelUpdate),
		"admin", p.AdminDir())
	return nil
}
