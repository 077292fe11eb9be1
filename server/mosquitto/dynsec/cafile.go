package dynsec

import (
	"cmp"
	"context"
	"crypto/x509"
	"time"

	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/mosquitto"
)

// reloadTimeout bounds the operator's reload command.
const reloadTimeout = 30 * time.Second

// caFile is the external broker's CA file fleetd keeps current
// (--broker-ca-file) and the command that makes the broker re-read it
// (--broker-reload).
type caFile struct {
	path, reload string
	roots        func() []*x509.Certificate // set by Start
}

// WithCAFile has the Sync keep path holding every root the broker must
// accept: written at Start and after every anchor change, each change
// followed by reload (see mosquitto.Reload). So an anchor rotation needs no
// hand-edited cafile: a device whose new certificate chains only to the new
// root connects at once. An empty path keeps none.
func (s *Sync) WithCAFile(path, reload string) *Sync {
	s.ca.path, s.ca.reload = path, reload
	return s
}

// Observe returns next preceded by the upkeep of the broker's files: an
// anchor set made current (or prepared) rewrites the CRL and CA files and
// reloads the broker before the change is passed on, so that it is done
// when the admin call that rotated the anchors returns; a retired or
// revoked identity version has the CRL file rewritten (debounced, in the
// background).
func (s *Sync) Observe(next func(lifecycle.Change)) func(lifecycle.Change) {
	return func(c lifecycle.Change) {
		if c.Slot == lifecycle.SlotAnchors && (s.ca.path != "" || s.crl.path != "") {
			ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
			if err := s.writeFiles(ctx); err != nil {
				s.log.Error("broker CA or CRL file not updated; the broker may refuse certificates of the new root", "version", c.Version, "err", err)
			}
			cancel()
		}
		s.crlKick(c)
		if next != nil {
			next(c)
		}
	}
}

// writeFiles writes the CRL file, then the CA file, and reloads the broker
// if either changed: with the CA file's command if it changed (for
// Mosquitto a restart, which re-reads both), else with the CRL file's.
func (s *Sync) writeFiles(ctx context.Context) error {
	s.caMu.Lock()
	defer s.caMu.Unlock()
	var crlChanged, caChanged bool
	if s.crl.roots != nil { // before Start: Start writes it
		var err error
		if crlChanged, err = s.writeCRL(ctx); err != nil {
			return err
		}
	}
	if s.ca.roots != nil {
		roots := s.ca.roots()
		var err error
		if caChanged, err = mosquitto.WriteCAFile(s.ca.path, roots); err != nil {
			return err
		}
		if caChanged {
			s.log.Info("broker CA file written", "path", s.ca.path, "roots", len(roots))
		}
	}
	switch {
	case s.addr == "": // fleetd's embedded broker: the files are made ready for a broker not running yet
	case caChanged:
		return mosquitto.Reload(ctx, s.ca.reload)
	case crlChanged:
		return mosquitto.Reload(ctx, cmp.Or(s.crl.reload, s.ca.reload))
	}
	return nil
}
