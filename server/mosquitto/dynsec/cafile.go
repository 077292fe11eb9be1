package dynsec

import (
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

// Observe returns next preceded by the CA file's upkeep: an anchor set
// made current (or prepared) rewrites the file and reloads the broker
// before the change is passed on, so that it is done when the admin call
// that rotated the anchors returns.
func (s *Sync) Observe(next func(lifecycle.Change)) func(lifecycle.Change) {
	return func(c lifecycle.Change) {
		if c.Slot == lifecycle.SlotAnchors && s.ca.path != "" {
			ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
			if err := s.writeCA(ctx); err != nil {
				s.log.Error("broker CA file not updated; the broker may refuse certificates of the new root", "version", c.Version, "err", err)
			}
			cancel()
		}
		if next != nil {
			next(c)
		}
	}
}

// writeCA writes the CA file and, if it changed, reloads the broker.
func (s *Sync) writeCA(ctx context.Context) error {
	s.caMu.Lock()
	defer s.caMu.Unlock()
	if s.ca.roots == nil { // before Start: Start writes it
		return nil
	}
	roots := s.ca.roots()
	changed, err := mosquitto.WriteCAFile(s.ca.path, roots)
	if err != nil || !changed {
		return err
	}
	s.log.Info("broker CA file written", "path", s.ca.path, "roots", len(roots))
	return mosquitto.Reload(ctx, s.ca.reload)
}
