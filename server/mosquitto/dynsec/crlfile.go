package dynsec

import (
	"context"
	"crypto"
	"crypto/x509"
	"time"

	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/mosquitto"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// Timing of the CRL file.
const (
	// crlValidity is each list's nextUpdate after its signing. Long, so
	// that a fleetd that is down for days does not lock every device out
	// of the broker (an expired list refuses its whole root); the lists
	// are signed again when half of it has passed.
	crlValidity = 7 * 24 * time.Hour
	// crlDebounce gathers retirements that come together (a fleet's
	// grace ending in one minute, a bulk revocation) into one rewrite and
	// one reload.
	crlDebounce = 200 * time.Millisecond
	// crlCheck is how often the lists' freshness is checked, and
	// crlRetry how soon a failed write is tried again.
	crlCheck = time.Hour
	crlRetry = 10 * time.Second
)

// Roots is the anchor chain as the broker's files need it (trust.Chain):
// every root, and the CA key of each to sign its CRL.
type Roots interface {
	RootCertificates() []*x509.Certificate
	RootSigner(root *x509.Certificate) (crypto.Signer, error)
}

// crlFile is the external broker's CRL file fleetd keeps current
// (--broker-crl-file) and the command that makes the broker re-read it.
type crlFile struct {
	path, reload string
	pol          policy.Source // its certificate validity: how long an entry may matter
	roots        Roots         // set by Start
	kick         chan struct{}
}

// WithCRLFile has the Sync keep path holding one CRL per root of the
// chain, signed with that root's key in the HSM, listing every retired or
// revoked identity certificate that has not expired: what makes Mosquitto
// refuse a retired version in the TLS handshake, which its
// dynamic-security plugin cannot (every version of a device has one user
// name). It is written at Start, after every anchor change (before the CA
// file, so that a new root is never without its list), within crlDebounce
// of a retirement or revocation, and whenever a list has less than half of
// its validity left; each change is followed by reload, or, if empty, the
// CA file's reload command. Entries whose version the store has forgotten
// (it keeps a few dead versions per device) stay listed for pol's
// certificate validity, after which the certificate has expired. An empty
// path keeps none.
func (s *Sync) WithCRLFile(path, reload string, pol policy.Source) *Sync {
	s.crl.path, s.crl.reload, s.crl.pol = path, reload, pol
	s.crl.kick = make(chan struct{}, 1)
	return s
}

// crlKick asks for a rewrite of the CRL file if c refused a certificate.
func (s *Sync) crlKick(c lifecycle.Change) {
	if s.crl.path == "" || c.Slot != lifecycle.SlotIdentity || !c.To.Dead() {
		return
	}
	select {
	case s.crl.kick <- struct{}{}:
	default: // one is pending: it reads the store after this change
	}
}

// crlLoop rewrites the CRL file crlDebounce after a kick, and checks its
// freshness every crlCheck, until ctx ends.
func (s *Sync) crlLoop(ctx context.Context) {
	wait := crlCheck
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.crl.kick:
			t.Stop()
			select {
			case <-time.After(crlDebounce):
			case <-ctx.Done():
				return
			}
			select { // what came meanwhile is in the store this write reads
			case <-s.crl.kick:
			default:
			}
		case <-t.C:
		}
		wait = crlCheck
		if err := s.writeFiles(ctx); err != nil {
			s.log.Error("broker CRL file not updated; retired certificates may still connect to the broker", "err", err)
			wait = crlRetry
		}
	}
}

// writeCRL brings the CRL file in step with the store; it reports
// whether it changed the file. Called with caMu held.
func (s *Sync) writeCRL(ctx context.Context) (bool, error) {
	start := time.Now()
	var refused []mosquitto.Refused
	err := s.st.ForEachDevice(ctx, func(d *store.Device) error {
		refused = append(refused, refusedOf(d, start)...)
		return nil
	})
	if err != nil {
		return false, err
	}
	old, err := mosquitto.ReadCRLFile(s.crl.path)
	if err != nil {
		s.log.Warn("broker CRL file unreadable; writing it anew", "path", s.crl.path, "err", err)
	}
	var keep time.Duration
	if s.crl.pol != nil {
		keep = s.crl.pol.Current().CertValidity.D()
	}
	plan, err := mosquitto.PlanCRLFile(s.crl.roots.RootCertificates(), s.crl.roots.RootSigner, refused, old,
		mosquitto.CRLOptions{Now: start, Validity: crlValidity, Keep: keep})
	if err != nil || plan.PEM == nil {
		return false, err
	}
	if plan.Unknown > 0 {
		s.log.Warn("refused certificates of an issuer outside the anchor chain (an external CA): not in the broker's CRL file", "certificates", plan.Unknown)
	}
	if d := time.Until(plan.ThisUpdate); d > 0 { // a list is valid from its thisUpdate on
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	changed, err := mosquitto.WriteCRLFile(s.crl.path, plan.PEM)
	if err != nil {
		return false, err
	}
	s.log.Info("broker CRL file written", "path", s.crl.path, "entries", plan.Listed, "took", time.Since(start))
	return changed, nil
}

// refusedOf returns d's identity certificates the broker must refuse at
// now: every retired, revoked, failed or cancelled version's that has not
// expired (an expired one is refused anyway).
func refusedOf(d *store.Device, now time.Time) []mosquitto.Refused {
	slot := d.Slots[protocol.SlotIdentity]
	if slot == nil {
		return nil
	}
	var out []mosquitto.Refused
	for _, k := range slot.Versions {
		if !k.State.Dead() || len(k.Cert) == 0 || !now.Before(k.NotAfter) {
			continue
		}
		c, err := x509.ParseCertificate(k.Cert)
		if err != nil {
			continue // the store holds what fleetd issued; never unreadable
		}
		at := k.RetiredAt
		if at.IsZero() {
			at = now
		}
		out = append(out, mosquitto.Refused{Cert: c, At: at})
	}
	return out
}
