// Package trust keeps fleetd's chain of trust-anchor sets: which CA root,
// update-signing key and firmware-signing key are current, every set
// before them, and the HSM labels of their private keys.
//
// # Basics
//
// Version 1 is made at init from the first CA root and update key and a
// new firmware key. Rotate makes the next version: new HSM keys for the
// roles named, a new root certificate cross-signed by the old root (so
// devices that have not walked the chain yet still accept fleetd's TLS
// certificate and their new certificates), and the set signed by the old
// set's root and update keys (package anchors). Each version is one file,
// written atomically after its keys exist; a crash in between leaves keys
// that the retried rotation picks up again by label.
//
// A set may also be prepared rather than published (Prepare, rollout.go):
// the fleet is served the published set while an anchors campaign hands
// the prepared one to its devices, and Publish makes it the fleet's when
// the campaign completes. published.json records the published version
// whenever a prepared set follows it.
//
// # Caveats
//
// Old roots stay trusted by the broker for the certificates they issued
// until those expire: a rotation is routine hygiene, not a compromise
// response. A compromised update or firmware key is revoked in the next
// set (devices refuse what it signs from then on). A compromised CA key
// needs more than a rotation: revoke the devices it could impersonate.
package trust

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/anchors"
	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/fsutil"
	"github.com/keyfleet/keyfleet/protocol"
)

// Keys is the key custody the chain needs: the HSM token (or the insecure
// soft keys).
type Keys interface {
	GenerateP256(label string) (crypto.Signer, error)
	Signer(label string) (crypto.Signer, error)
}

// Labels names the HSM keys of one set.
type Labels struct {
	CA       string `json:"ca"`
	Update   string `json:"update"`
	Firmware string `json:"firmware"`
}

// Key labels in custody: those of anchor set version 1 and of the birth
// CA. A rotation names its new keys after them ("keyfleet-ca-v2").
const (
	LabelCA       = "keyfleet-ca"
	LabelUpdate   = "keyfleet-update"
	LabelFirmware = "keyfleet-firmware"
	// LabelBirthCA is the manufacturer CA that issues birth credentials
	// (IDevID). In a real supply chain it lives at the factory; fleetd
	// plays that role for fleetctl device add and the simulator.
	LabelBirthCA = "keyfleet-idevid-ca"
)

// Roles a rotation may replace.
const (
	RoleCA       = "ca"
	RoleUpdate   = "update"
	RoleFirmware = "firmware"
)

// RootValidity is the lifetime of a CA root made by a rotation.
const RootValidity = 10 * 365 * 24 * time.Hour

// record is one version's file.
type record struct {
	Set    []byte `json:"set"`
	Labels Labels `json:"labels"`
	// Cross is the set's root cross-signed by the previous set's root, when
	// the root changed at this version.
	Cross []byte `json:"cross,omitempty"`

	signed *anchors.Signed
	root   *x509.Certificate
	cross  *x509.Certificate
}

// Chain is the anchor chain of a deployment. It is safe for concurrent use.
type Chain struct {
	dir  string
	keys Keys
	now  func() time.Time

	mu   sync.RWMutex
	recs []*record // recs[i] is version i+1
	// published is the version the whole fleet is served: the hello
	// catch-up, the retained topic, the issuing CA and the update key of
	// the online key. A newer set, if any, is prepared: a staged roll-out
	// hands it to devices one by one until its campaign publishes it.
	published uint32
	// issuers are the external issuer's CA certificates (DER) every new
	// set carries (anchors.Set.Issuers), from SetIssuers.
	issuers [][]byte
}

// filePublished records the published version when a prepared set
// follows it; without it, the newest set is published (as every chain
// made before staged roll-outs).
const filePublished = "published.json"

type publishedRecord struct {
	Version uint32 `json:"version"`
}

// ErrNoChain: the directory holds no anchor set yet (Genesis makes one).
var ErrNoChain = errors.New("trust: no anchor chain")

func fileName(v uint32) string { return fmt.Sprintf("v%06d.json", v) }

// Open loads and checks the chain in dir: version 1 as installed, and every
// later version walked from the one before, as a device would.
func Open(dir string, keys Keys, now func() time.Time) (*Chain, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoChain
	} else if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "v") && strings.HasSuffix(e.Name(), ".json") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return nil, ErrNoChain
	}
	sort.Strings(names)
	c := &Chain{dir: dir, keys: keys, now: now}
	for i, n := range names {
		if n != fileName(uint32(i+1)) {
			return nil, fmt.Errorf("trust: %s: found %s where version %d belongs", dir, n, i+1)
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("trust: %w", err)
		}
		r := &record{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("trust: %s: %w", n, err)
		}
		if i == 0 {
			r.signed, err = anchors.TrustOnInstall(r.Set)
		} else {
			r.signed, err = anchors.Walk(c.recs[i-1].signed, [][]byte{r.Set}, anchors.WalkOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("trust: %s: %w", n, err)
		}
		if err := r.load(); err != nil {
			return nil, fmt.Errorf("trust: %s: %w", n, err)
		}
		c.recs = append(c.recs, r)
	}
	c.published = uint32(len(c.recs))
	b, err := os.ReadFile(filepath.Join(dir, filePublished))
	if err == nil {
		var p publishedRecord
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("trust: %s: %w", filePublished, err)
		}
		if p.Version >= 1 && p.Version < c.published {
			c.published = p.Version
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("trust: %w", err)
	}
	if c.published < uint32(len(c.recs))-1 {
		return nil, fmt.Errorf("trust: %s: v%d is published, but more than one set follows it", dir, c.published)
	}
	return c, nil
}

// setPublished records v as the published version and makes it so.
func (c *Chain) setPublished(v uint32) error {
	if err := c.writePublished(v); err != nil {
		return err
	}
	c.published = v
	return nil
}

// writePublished records v as the published version (Open reads a version
// past the newest set as the newest).
func (c *Chain) writePublished(v uint32) error {
	b, err := json.Marshal(publishedRecord{Version: v})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	if err := fsutil.WriteAtomic(filepath.Join(c.dir, filePublished), b, 0o644); err != nil {
		return fmt.Errorf("trust: record published v%d: %w", v, err)
	}
	return nil
}

func (r *record) load() error {
	var err error
	if r.root, err = r.signed.RootCert(); err != nil {
		return err
	}
	if len(r.Cross) > 0 {
		if r.cross, err = x509.ParseCertificate(r.Cross); err != nil {
			return fmt.Errorf("cross certificate: %w", err)
		}
	}
	return nil
}

// Genesis makes version 1 from the deployment's first root and update key
// (labels.CA, labels.Update, which must exist) and a firmware key
// (labels.Firmware, made if missing).
func Genesis(dir string, keys Keys, root *x509.Certificate, labels Labels, now func() time.Time) (*Chain, error) {
	ca, err := keys.Signer(labels.CA)
	if err != nil {
		return nil, err
	}
	upd, err := keys.Signer(labels.Update)
	if err != nil {
		return nil, err
	}
	fw, err := signerOrNew(keys, labels.Firmware)
	if err != nil {
		return nil, err
	}
	set, err := newSet(root, upd, fw, now())
	if err != nil {
		return nil, err
	}
	raw, err := anchors.Genesis(set, ca, upd)
	if err != nil {
		return nil, err
	}
	if err := write(dir, 1, &record{Set: raw, Labels: labels}); err != nil {
		return nil, err
	}
	return Open(dir, keys, now)
}

func newSet(root *x509.Certificate, upd, fw crypto.Signer, now time.Time) (*anchors.Set, error) {
	us, err := x509.MarshalPKIXPublicKey(upd.Public())
	if err != nil {
		return nil, fmt.Errorf("trust: update key: %w", err)
	}
	fs, err := x509.MarshalPKIXPublicKey(fw.Public())
	if err != nil {
		return nil, fmt.Errorf("trust: firmware key: %w", err)
	}
	return &anchors.Set{Root: root.Raw, UpdateKey: us, FirmwareKey: fs, IssuedAt: uint64(now.Unix())}, nil
}

func signerOrNew(keys Keys, label string) (crypto.Signer, error) {
	if s, err := keys.Signer(label); err == nil {
		return s, nil
	}
	return keys.GenerateP256(label)
}

func write(dir string, v uint32, r *record) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	if err := fsutil.WriteAtomic(filepath.Join(dir, fileName(v)), b, 0o644); err != nil {
		return fmt.Errorf("trust: write v%d: %w", v, err)
	}
	return nil
}

// cur is the published set; newest the newest, prepared or published.
func (c *Chain) cur() *record    { return c.recs[c.published-1] }
func (c *Chain) newest() *record { return c.recs[len(c.recs)-1] }

// Current returns the current (published) set.
func (c *Chain) Current() *anchors.Signed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cur().signed
}

// AnchorVersion implements rotation.AnchorSource.
func (c *Chain) AnchorVersion() uint32 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.published
}

// SetsAfter implements rotation.AnchorSource: up to max published sets
// after v, oldest first.
func (c *Chain) SetsAfter(v uint32, max int) [][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.setsBetween(v, c.published, max)
}

// setsBetween returns up to max sets after v, up to version to.
func (c *Chain) setsBetween(v, to uint32, max int) [][]byte {
	var out [][]byte
	size := 0
	for i := v; i < to && len(out) < max; i++ {
		// Sets carrying an issuer's certificates are larger: stop before
		// the message outgrows a packet (at least one set always goes).
		if size += len(c.recs[i].Set); len(out) > 0 && size > setsBudget {
			break
		}
		out = append(out, c.recs[i].Set)
	}
	return out
}

// setsBudget bounds the signed sets of one anchors message, leaving room
// in protocol.MaxPacketSize for the message's header and framing.
const setsBudget = protocol.MaxPacketSize - 256

// Latest returns the newest n published sets, oldest first: what the
// retained anchors topic carries.
func (c *Chain) Latest(n int) [][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	from := max(int(c.published)-n, 0)
	var out [][]byte
	size := 0
	for i := int(c.published) - 1; i >= from; i-- { // newest first, within setsBudget
		if size += len(c.recs[i].Set); len(out) > 0 && size > setsBudget {
			break
		}
		out = append(out, c.recs[i].Set)
	}
	slices.Reverse(out)
	return out
}

// Roots returns every root of the chain: the broker accepts identities any
// of them issued, until those expire.
func (c *Chain) Roots() *x509.CertPool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := x509.NewCertPool()
	for _, r := range c.recs {
		p.AddCert(r.root)
	}
	return p
}

// RootCertificates returns every root of the chain, oldest first: what
// Roots holds, for a broker's CA file (an external Mosquitto's).
func (c *Chain) RootCertificates() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*x509.Certificate, 0, len(c.recs))
	for _, r := range c.recs {
		out = append(out, r.root)
	}
	return out
}

// Root returns the current root: new certificates are issued under it.
func (c *Chain) Root() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cur().root
}

// Crosses returns the cross certificates from the current root back to
// the first, newest first: appended to a leaf of the current root they
// let a device that holds any older root verify it.
func (c *Chain) Crosses() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*x509.Certificate
	for i := int(c.published) - 1; i > 0; i-- {
		if x := c.recs[i].cross; x != nil {
			out = append(out, x)
		}
	}
	return out
}

// Signer returns the current set's private key of role (RoleCA,
// RoleUpdate, RoleFirmware).
func (c *Chain) Signer(role string) (crypto.Signer, error) {
	c.mu.RLock()
	l := c.cur().Labels
	c.mu.RUnlock()
	return c.signer(l, role)
}

// RootSigner returns the CA key of root, a root of the chain (one of
// RootCertificates): what signs that root's CRL for an external broker,
// which refuses every certificate of a root whose CRL it lacks.
func (c *Chain) RootSigner(root *x509.Certificate) (crypto.Signer, error) {
	c.mu.RLock()
	label := ""
	for _, r := range c.recs {
		if r.root.Equal(root) {
			label = r.Labels.CA
			break
		}
	}
	c.mu.RUnlock()
	if label == "" {
		return nil, fmt.Errorf("trust: %s is no root of the chain", root.Subject)
	}
	return c.keys.Signer(label)
}

func (c *Chain) signer(l Labels, role string) (crypto.Signer, error) {
	switch role {
	case RoleCA:
		return c.keys.Signer(l.CA)
	case RoleUpdate:
		return c.keys.Signer(l.Update)
	case RoleFirmware:
		return c.keys.Signer(l.Firmware)
	}
	return nil, fmt.Errorf("trust: unknown role %q", role)
}

// Rotate makes the next set with new keys for roles, signed by the newest
// set's root and update keys, and publishes it (with a prepared set before
// it, if any: devices walk both). A replaced update or firmware key is
// revoked in the new set: devices that walked past it refuse what it
// signs. It returns the new set.
func (c *Chain) Rotate(ctx context.Context, roles []string) (*anchors.Signed, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Recorded first: a crash after the set is written finds it published.
	if err := c.writePublished(uint32(len(c.recs)) + 1); err != nil {
		return nil, err
	}
	set, err := c.next(ctx, roles)
	if err != nil {
		return nil, errors.Join(err, c.writePublished(c.published))
	}
	c.published = uint32(len(c.recs))
	return set, nil
}

// SetIssuers makes every set made from now on carry ders, an external
// issuer's CA certificates (step-ca's roots and intermediates), so that
// devices accept the certificates it issues. Nil drops them again.
func (c *Chain) SetIssuers(ders [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.issuers = ders
}

// Prepared returns the prepared set, or nil when the newest is published.
func (c *Chain) Prepared() *anchors.Signed {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.published == uint32(len(c.recs)) {
		return nil
	}
	return c.newest().signed
}

// PreparedSetsAfter returns up to max sets after v, up to the newest
// (prepared or published): what a staged roll-out hands one device.
func (c *Chain) PreparedSetsAfter(v uint32, max int) [][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.setsBetween(v, uint32(len(c.recs)), max)
}

// PreparedRoles names the keys the prepared set replaces, or nil.
func (c *Chain) PreparedRoles() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.published == uint32(len(c.recs)) {
		return nil
	}
	return rolesBetween(c.cur().Labels, c.newest().Labels)
}

// rolesBetween names the roles whose keys differ from a to b.
func rolesBetween(a, b Labels) []string {
	var out []string
	for _, r := range []struct {
		role string
		a, b string
	}{{RoleCA, a.CA, b.CA}, {RoleUpdate, a.Update, b.Update}, {RoleFirmware, a.Firmware, b.Firmware}} {
		if r.a != r.b {
			out = append(out, r.role)
		}
	}
	return out
}

// PreparedSigner returns the prepared set's private key of role.
func (c *Chain) PreparedSigner(role string) (crypto.Signer, error) {
	c.mu.RLock()
	l := c.newest().Labels
	c.mu.RUnlock()
	return c.signer(l, role)
}

// Prepare makes the next set with new keys for roles, as Rotate does,
// but leaves it unpublished: the fleet is served the current set until
// Publish. With a set prepared already, it returns that one if it replaces
// the same roles (a second campaign finishing the first's roll-out) and
// refuses otherwise: the chain moves forward one set at a time. The
// published version is recorded before the set is written, so a crash in
// between never publishes it.
func (c *Chain) Prepare(ctx context.Context, roles []string) (*anchors.Signed, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.published != uint32(len(c.recs)) {
		have := rolesBetween(c.cur().Labels, c.newest().Labels)
		if len(roles) > 0 && !sameRoles(have, roles) {
			return nil, fmt.Errorf("trust: v%d is prepared already, replacing %v: roll it out before preparing another", len(c.recs), have)
		}
		return c.newest().signed, nil
	}
	if err := c.setPublished(c.published); err != nil {
		return nil, err
	}
	return c.next(ctx, roles)
}

func sameRoles(a, b []string) bool {
	m := map[string]bool{}
	for _, r := range a {
		m[r] = true
	}
	n := map[string]bool{}
	for _, r := range b {
		n[r] = true
	}
	if len(m) != len(n) {
		return false
	}
	for r := range n {
		if !m[r] {
			return false
		}
	}
	return true
}

// Publish makes every set up to version v published (never moving back):
// the end of a staged roll-out. It reports whether anything changed.
func (c *Chain) Publish(v uint32) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v = min(v, uint32(len(c.recs)))
	if v <= c.published {
		return false, nil
	}
	return true, c.setPublished(v)
}

// next writes the set after the newest with new keys for roles.
func (c *Chain) next(ctx context.Context, roles []string) (*anchors.Signed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cur := c.newest()
	v := uint32(len(c.recs)) + 1
	want := map[string]bool{}
	for _, r := range roles {
		switch r {
		case RoleCA, RoleUpdate, RoleFirmware:
			want[r] = true
		default:
			return nil, fmt.Errorf("trust: unknown role %q", r)
		}
	}
	if len(want) == 0 && slices.EqualFunc(cur.signed.Issuers, c.issuers, bytes.Equal) {
		return nil, errors.New("trust: a rotation replaces at least one key or changes the issuers")
	}
	oldCA, err := c.keys.Signer(cur.Labels.CA)
	if err != nil {
		return nil, err
	}
	oldUpd, err := c.keys.Signer(cur.Labels.Update)
	if err != nil {
		return nil, err
	}
	labels := cur.Labels
	next := func(base string) string { return fmt.Sprintf("%s-v%d", base, v) }
	root, rec := cur.root, &record{}
	now := c.now()
	if want[RoleCA] {
		labels.CA = next(LabelCA)
		k, err := signerOrNew(c.keys, labels.CA)
		if err != nil {
			return nil, err
		}
		if root, err = certs.NewRoot(k, fmt.Sprintf("keyfleet CA %d", v), now, RootValidity); err != nil {
			return nil, err
		}
		x, err := certs.CrossSign(root, cur.root, oldCA)
		if err != nil {
			return nil, err
		}
		rec.Cross = x.Raw
	}
	var revoked [][]byte
	if want[RoleUpdate] {
		labels.Update = next(LabelUpdate)
		kid, err := protocol.KeyID(oldUpd.Public())
		if err != nil {
			return nil, err
		}
		revoked = append(revoked, kid)
	}
	if want[RoleFirmware] {
		labels.Firmware = next(LabelFirmware)
		kid, err := cur.signed.FirmwarePublicKey()
		if err != nil {
			return nil, err
		}
		id, err := protocol.KeyID(kid)
		if err != nil {
			return nil, err
		}
		revoked = append(revoked, id)
	}
	upd, err := signerOrNew(c.keys, labels.Update)
	if err != nil {
		return nil, err
	}
	fw, err := signerOrNew(c.keys, labels.Firmware)
	if err != nil {
		return nil, err
	}
	set, err := newSet(root, upd, fw, now)
	if err != nil {
		return nil, err
	}
	set.Revoked, set.Issuers = revoked, c.issuers
	raw, err := anchors.Next(cur.signed, set, oldCA, oldUpd)
	if err != nil {
		return nil, err
	}
	rec.Set, rec.Labels = raw, labels
	if rec.signed, err = anchors.Walk(cur.signed, [][]byte{raw}, anchors.WalkOptions{}); err != nil {
		return nil, fmt.Errorf("trust: the new set does not walk: %w", err)
	}
	if err := rec.load(); err != nil {
		return nil, err
	}
	if err := write(c.dir, v, rec); err != nil {
		return nil, err
	}
	c.recs = append(c.recs, rec)
	return rec.signed, nil
}
