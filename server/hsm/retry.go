package hsm

import (
	"crypto"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// signRetries are the waits before each new try of a signature that failed
// with a transient token error: three more tries, the last 260 ms after
// the first. A token shared by several fleetd processes (SoftHSM2 on a
// shared directory, a network HSM behind a load balancer) answers now and
// then with an error that the next call does not repeat: a device or
// general error while another process holds the token's files, a session
// the HSM dropped. Surfacing those would fail a device's rotation for
// nothing; a key that is gone or a PIN that is wrong is not retried.
var signRetries = []time.Duration{10 * time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond}

// transientCKR are the PKCS#11 return values a signature is tried again
// on, with those of reopenCKR.
var transientCKR = []uint{pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DEVICE_ERROR}

// reopenCKR say the token no longer knows this process's sessions, or its
// login with them, or the key's handle in them (what a session handle
// becomes after a token restart or a network HSM's fail-over, and
// SoftHSM2's answer when every session of the process was closed): the
// signature is tried again after the sessions are re-opened (reopen) and
// the key found again.
var reopenCKR = []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
	pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_OBJECT_HANDLE_INVALID}

// tokenSigner counts each signature made with a token key, and retries
// those that fail with a transient token error (signRetries).
type tokenSigner struct {
	t     *Token
	label string

	mu  sync.Mutex
	s   crypto.Signer // the key in session pool gen of t
	gen uint64
}

// Retries returns how many signatures this Token tried again after a
// transient token error (each retry counted once): a token shared by
// processes that are fighting over it shows here before it fails anything.
func (t *Token) Retries() uint64 { return t.retries.Load() }

func (t *Token) newSigner(label string, s crypto.Signer, gen uint64) *tokenSigner {
	return &tokenSigner{t: t, label: label, s: s, gen: gen}
}

// Public returns the key's public half.
func (c *tokenSigner) Public() crypto.PublicKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s.Public()
}

// Sign signs digest in the token, trying again on transient errors.
func (c *tokenSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.t.ops.Add(1)
	for try := 0; ; try++ {
		s, gen := c.current()
		sig, err := s.Sign(r, digest, opts)
		if err == nil {
			return sig, nil
		}
		stale := gen != c.t.gen.Load() // the pool it used was replaced meanwhile
		lost := isCKR(err, reopenCKR...)
		if !stale && !lost && !isCKR(err, transientCKR...) {
			return nil, err
		}
		c.t.retries.Add(1)
		if try == len(signRetries) {
			return nil, fmt.Errorf("hsm: sign with %s: %d tries: %w", c.t.URI(c.label), try+1, err)
		}
		if lost {
			if rerr := c.t.reopen(gen); rerr != nil {
				return nil, fmt.Errorf("hsm: sign with %s: %w (after %w)", c.t.URI(c.label), rerr, err)
			}
		}
		time.Sleep(signRetries[try])
		if ferr := c.refresh(); ferr != nil {
			return nil, fmt.Errorf("hsm: sign with %s: %w (after %w)", c.t.URI(c.label), ferr, err)
		}
	}
}

func (c *tokenSigner) current() (crypto.Signer, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s, c.gen
}

// refresh finds the key again in the token's current session pool, if
// that was replaced since the key was found.
func (c *tokenSigner) refresh() error {
	gen := c.t.gen.Load()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		return nil
	}
	s, err := c.t.find(c.label)
	if err != nil {
		return err
	}
	c.s, c.gen = s, gen
	return nil
}

// reopen replaces crypto11's session pool with a new one, logged in again,
// when it is still pool gen: sessions the token no longer knows (it
// restarted, or closed every session of this process) are otherwise handed
// out again and again by the pool. Signers find their key again in the new
// pool (refresh); the old pool closes once its sessions come back.
func (t *Token) reopen(gen uint64) error {
	t.reMu.Lock()
	defer t.reMu.Unlock()
	if t.gen.Load() != gen {
		return nil // another signer re-opened it already
	}
	ctx, err := configure(t.cfg)
	if err != nil {
		return fmt.Errorf("hsm: re-open sessions: %w", err)
	}
	old := t.ctx.Swap(ctx)
	t.gen.Add(1)
	go old.Close() // waits for the sessions in use; their signers retry
	return nil
}
