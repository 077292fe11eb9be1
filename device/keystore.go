package device

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/keyfleet/keyfleet/certs/identity"
)

// Identity is the device's fixed configuration, written at provisioning.
type Identity struct {
	ID     string `json:"id"`
	Broker string `json:"broker"`
}

// SlotState names the identity versions a device holds.
type SlotState struct {
	Active     uint32 `json:"active"`
	Pending    uint32 `json:"pending,omitempty"`
	PendingRID []byte `json:"pending_rid,omitempty"`
	Previous   uint32 `json:"previous,omitempty"`
}

// Keystore is a device's key directory. It is safe for concurrent use.
type Keystore struct {
	st       Storage
	id       Identity
	roots    *x509.CertPool
	rootList []*x509.Certificate // newest first
	// issuerRoots and issuerInters come from the anchor set's Issuers: an
	// external issuer's CA certificates, trusted for the device's own new
	// certificates only (never for the server's TLS certificate).
	issuerRoots  []*x509.Certificate
	issuerInters *x509.CertPool
	update       any
	anchors      anchorState
	mu           sync.Mutex
	state        SlotState
}

// Paths inside the keystore directory.
const (
	fileIdentity = "device.json"
	fileState    = "state.json"
	fileCA       = "ca.pem"
	fileUpdate   = "update.pub.pem"
)

// ErrNoCredential: the keystore has no usable credential of that version.
var ErrNoCredential = errors.New("device: no such credential")

// NewKey makes a P-256 key, the only kind keyfleet identities use.
func NewKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// CSR builds the certificate request naming device for key. It carries the
// device id as common name only: the CA adds the identity URI itself, and
// the 45 bytes of a requested SAN would travel in every enroll.
func CSR(device string, key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: device},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("device: CSR: %w", err)
	}
	return der, nil
}

func versionDir(v uint32) string { return "identity/v" + strconv.FormatUint(uint64(v), 10) }

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// OpenKeystore loads a keystore made by Install.
func OpenKeystore(dir string) (*Keystore, error) { return Open(&DirStorage{Dir: dir}) }

// Open loads a keystore from any Storage.
func Open(st Storage) (*Keystore, error) {
	ks := &Keystore{st: st}
	b, err := st.ReadFile(fileIdentity)
	if err != nil {
		return nil, fmt.Errorf("device: keystore: %w", err)
	}
	if err := json.Unmarshal(b, &ks.id); err != nil {
		return nil, fmt.Errorf("device: keystore: identity: %w", err)
	}
	if b, err = st.ReadFile(fileState); err != nil {
		return nil, fmt.Errorf("device: keystore %s: %w", ks.id.ID, err)
	}
	if err := json.Unmarshal(b, &ks.state); err != nil {
		return nil, fmt.Errorf("device: keystore %s: state: %w", ks.id.ID, err)
	}
	if b, err = st.ReadFile(fileCA); err != nil {
		return nil, fmt.Errorf("device: keystore %s: %w", ks.id.ID, err)
	}
	cas, err := identity.ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("device: keystore %s: %w", ks.id.ID, err)
	}
	ks.roots = x509.NewCertPool()
	for _, c := range cas {
		ks.roots.AddCert(c)
	}
	ks.rootList = cas
	if b, err = st.ReadFile(fileUpdate); err != nil {
		return nil, fmt.Errorf("device: keystore %s: %w", ks.id.ID, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("device: keystore %s: no update key", ks.id.ID)
	}
	if ks.update, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		return nil, fmt.Errorf("device: keystore %s: update key: %w", ks.id.ID, err)
	}
	if b, err = st.ReadFile(fileAnchors); err == nil {
		if err := json.Unmarshal(b, &ks.anchors); err != nil {
			return nil, fmt.Errorf("device: keystore %s: anchors: %w", ks.id.ID, err)
		}
	}
	return ks, nil
}

func decodeKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("device: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device: key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("device: key is not ECDSA")
	}
	return ek, nil
}

// SetSync chooses whether a directory keystore's writes are fsynced (the
// default). Turning it off keeps writes atomic against a process crash but
// not a power loss; only the simulator, whose devices share one disk, does
// that.
func (ks *Keystore) SetSync(on bool) {
	if d, ok := ks.st.(*DirStorage); ok {
		d.NoSync = !on
	}
}

func (ks *Keystore) write(name string, data []byte, perm os.FileMode) error {
	return ks.st.WriteFile(name, data, perm)
}

// ID returns the device id.
func (ks *Keystore) ID() Identity { return ks.id }

// State returns a copy of the slot state.
func (ks *Keystore) State() SlotState {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	s := ks.state
	s.PendingRID = append([]byte(nil), s.PendingRID...)
	return s
}

func (ks *Keystore) saveState(s SlotState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := ks.write(fileState, b, 0o600); err != nil {
		return fmt.Errorf("device: save state: %w", err)
	}
	ks.state = s
	return nil
}

// Key loads the private key of version v.
func (ks *Keystore) Key(v uint32) (*ecdsa.PrivateKey, error) {
	b, err := ks.st.ReadFile(versionDir(v) + "/key.pem")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: key v%d", ErrNoCredential, v)
	} else if err != nil {
		return nil, fmt.Errorf("device: key v%d: %w", v, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("device: key v%d: no PEM block", v)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device: key v%d: %w", v, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("device: key v%d is not ECDSA", v)
	}
	return ek, nil
}

// Cert loads the certificate of version v.
func (ks *Keystore) Cert(v uint32) (*x509.Certificate, error) {
	b, err := ks.st.ReadFile(versionDir(v) + "/cert.pem")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: certificate v%d", ErrNoCredential, v)
	} else if err != nil {
		return nil, fmt.Errorf("device: certificate v%d: %w", v, err)
	}
	cs, err := identity.ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("device: certificate v%d: %w", v, err)
	}
	return cs[0], nil
}

// TLSCredential returns version v as a TLS client certificate.
func (ks *Keystore) TLSCredential(v uint32) (tls.Certificate, *ecdsa.PrivateKey, error) {
	k, err := ks.Key(v)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	c, err := ks.Cert(v)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}, k, nil
}

// BeginPending generates (or, for a repeated request, reloads) the key of
// version v and records it as pending. The key is on disk before the state
// names it, so the state never points at a missing key.
func (ks *Keystore) BeginPending(v uint32, rid []byte) (*ecdsa.PrivateKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.state.Pending == v {
		if k, err := ks.Key(v); err == nil {
			if string(ks.state.PendingRID) != string(rid) {
				s := ks.state
				s.PendingRID = rid
				if err := ks.saveState(s); err != nil {
					return nil, err
				}
			}
			return k, nil
		}
	}
	if v <= ks.state.Active {
		return nil, fmt.Errorf("device: version %d is not newer than active %d", v, ks.state.Active)
	}
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	pemKey, err := encodeKey(k)
	if err != nil {
		return nil, err
	}
	vdir := versionDir(v)
	_ = ks.st.RemoveAll(vdir + "/cert.pem") // a stale certificate from an abandoned attempt
	if err := ks.write(vdir+"/key.pem", pemKey, 0o600); err != nil {
		return nil, fmt.Errorf("device: pending key: %w", err)
	}
	s := ks.state
	s.Pending, s.PendingRID = v, rid
	if err := ks.saveState(s); err != nil {
		return nil, err
	}
	return k, nil
}

// StorePendingCert checks that der is a certificate from the fleet CA,
// valid at now, naming this device, for the pending key of version v, and
// stores it next to the key.
func (ks *Keystore) StorePendingCert(v uint32, der []byte, now time.Time) (*x509.Certificate, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.state.Pending != v {
		return nil, fmt.Errorf("device: certificate for version %d, pending is %d", v, ks.state.Pending)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("device: certificate v%d: %w", v, err)
	}
	roots, inters := ks.certPools()
	id, err := identity.VerifyChain(c, roots, inters, now)
	if err != nil {
		return nil, fmt.Errorf("device: certificate v%d: %w", v, err)
	}
	if id.Role != identity.RoleDevice || id.Name != ks.id.ID {
		return nil, fmt.Errorf("device: certificate v%d names %s", v, id)
	}
	k, err := ks.Key(v)
	if err != nil {
		return nil, err
	}
	if !k.PublicKey.Equal(c.PublicKey) {
		return nil, fmt.Errorf("device: certificate v%d is not for the pending key", v)
	}
	if err := ks.write(versionDir(v)+"/cert.pem", identity.EncodePEM(c), 0o644); err != nil {
		return nil, fmt.Errorf("device: store certificate v%d: %w", v, err)
	}
	return c, nil
}

// PendingReady reports whether the pending version has its certificate.
func (ks *Keystore) PendingReady() (uint32, bool) {
	st := ks.State()
	if st.Pending == 0 {
		return 0, false
	}
	_, err := ks.Cert(st.Pending)
	return st.Pending, err == nil
}

// Promote makes the pending version active, after the broker accepted it.
// The old active version becomes previous; an older previous is deleted.
func (ks *Keystore) Promote(v uint32) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.state.Pending != v {
		return fmt.Errorf("device: promote v%d, pending is %d", v, ks.state.Pending)
	}
	old := ks.state
	s := SlotState{Active: v, Previous: old.Active}
	if err := ks.saveState(s); err != nil {
		return err
	}
	if old.Previous != 0 && old.Previous != v {
		_ = ks.st.RemoveAll(versionDir(old.Previous))
	}
	return nil
}

// Retire deletes version v if it is the previous one (its grace is over)
// or the pending one (its rotation was cancelled or failed, e.g. by a
// campaign's rollback: the key and any certificate for it are dropped and
// the active version stays). The active version is never retired.
func (ks *Keystore) Retire(v uint32) (bool, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if v == 0 || v == ks.state.Active || (v != ks.state.Previous && v != ks.state.Pending) {
		return false, nil
	}
	s := ks.state
	if v == s.Pending {
		s.Pending, s.PendingRID = 0, nil
	} else {
		s.Previous = 0
	}
	if err := ks.saveState(s); err != nil {
		return false, err
	}
	if err := ks.st.RemoveAll(versionDir(v)); err != nil {
		return true, fmt.Errorf("device: remove v%d: %w", v, err)
	}
	return true, nil
}

// Roots returns the fleet CA pool.
func (ks *Keystore) Roots() *x509.CertPool {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.roots
}

// UpdateKey returns the server's update-signing public key.
func (ks *Keystore) UpdateKey() any {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.update
}
