package hsm

import (
	"crypto"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ThalesGroup/crypto11"
)

// Errors of key custody.
var (
	// ErrKeyExists: GenerateP256 was asked for a label that already names a key.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrKeyNotFound: no key pair carries the label.
	ErrKeyNotFound = errors.New("hsm: key not found")
)

// PIN is a token PIN. Its String and LogValue hide it, so a PIN that ends up
// in a log line or an error shows as [redacted].
type PIN string

// String hides the PIN.
func (PIN) String() string { return "[redacted]" }

// LogValue hides the PIN from slog.
func (PIN) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// GoString hides the PIN from %#v.
func (PIN) GoString() string { return "hsm.PIN([redacted])" }

// MarshalText hides the PIN from JSON and other text encoders.
func (PIN) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Config selects a PKCS#11 token. All fields are required.
type Config struct {
	// Module is the path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel is the CKA_LABEL of the token (RFC 7512 "token").
	TokenLabel string
	// PIN is the user PIN.
	PIN PIN
	// MaxSessions bounds concurrent PKCS#11 sessions; 0 means 32.
	MaxSessions int
	// Keys places keys elsewhere than this token under their usual labels:
	// by role (package custody names the roles), each in a token and under
	// a label of its own, as the operator's PKCS#11 URIs say. Open ignores
	// it; custody.Open opens one Token per distinct token it names.
	Keys map[string]KeyPlace
}

// KeyPlace is where one key lives: the token that holds it (module, token
// label, PIN) and the key's label there, the RFC 7512 "token" and "object".
type KeyPlace struct {
	Token  Config
	Object string
}

// Token is an open PKCS#11 token. It is safe for concurrent use.
type Token struct {
	ctx     atomic.Pointer[crypto11.Context] // replaced by reopen
	cfg     Config
	gen     atomic.Uint64 // how many times reopen replaced ctx
	reMu    sync.Mutex    // one reopen at a time
	label   string
	ops     atomic.Uint64
	retries atomic.Uint64 // signatures tried again (retry.go)
	genMu   sync.Mutex    // makes look-up-then-generate atomic within the process
	raw     *rawToken     // raw PKCS#11 for the KEK and data keys (session.go), started lazily
}

// Open logs in to the token cfg names.
func Open(cfg Config) (*Token, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" || cfg.PIN == "" {
		return nil, errors.New("hsm: module, token label and PIN are required")
	}
	max := cfg.MaxSessions
	if max == 0 {
		max = 32
	}
	cfg.MaxSessions = max
	ctx, err := configure(cfg)
	if err != nil {
		return nil, err
	}
	t := &Token{cfg: cfg, label: cfg.TokenLabel, raw: newRawToken(cfg)}
	t.ctx.Store(ctx)
	return t, nil
}

// configure opens crypto11's session pool on cfg's token and logs in.
func configure(cfg Config) (*crypto11.Context, error) {
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:        cfg.Module,
		TokenLabel:  cfg.TokenLabel,
		Pin:         string(cfg.PIN),
		MaxSessions: cfg.MaxSessions,
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: open token %q with %s: %w", cfg.TokenLabel, cfg.Module, err)
	}
	return ctx, nil
}

// Close releases the token's sessions. The data-key sessions close first,
// while crypto11 still holds the module initialised.
func (t *Token) Close() error {
	err := t.raw.close()
	return errors.Join(err, t.ctx.Load().Close())
}

// Ops returns how many key operations this Token has performed: signatures
// and data-key wraps and unwraps under a KEK (datakey.go).
func (t *Token) Ops() uint64 { return t.ops.Load() }

// URI returns the RFC 7512 URI of the private key with the given label.
func (t *Token) URI(label string) string { return KeyURI(t.label, label) }

// GenerateP256 creates an ECDSA P-256 key pair named label inside the token,
// with only the attributes a signing key needs (signingKeyTemplates): the
// private key signs and does nothing else, is sensitive, non-extractable
// and not modifiable. Its CKA_ID is the label, so that both halves can be
// found by either attribute.
func (t *Token) GenerateP256(label string) (crypto.Signer, error) {
	t.genMu.Lock()
	defer t.genMu.Unlock()
	if existing, err := t.ctx.Load().FindKeyPairs(nil, []byte(label)); err != nil {
		return nil, fmt.Errorf("hsm: look up %s: %w", t.URI(label), err)
	} else if len(existing) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrKeyExists, t.URI(label))
	}
	pub, priv, err := signingKeyTemplates(label)
	if err != nil {
		return nil, fmt.Errorf("hsm: template of %s: %w", t.URI(label), err)
	}
	gen := t.gen.Load()
	s, err := t.ctx.Load().GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("hsm: generate %s: %w", t.URI(label), err)
	}
	return t.newSigner(label, s, gen), nil
}

// Signer returns the key pair named label.
func (t *Token) Signer(label string) (crypto.Signer, error) {
	gen := t.gen.Load()
	s, err := t.find(label)
	if err != nil {
		return nil, err
	}
	return t.newSigner(label, s, gen), nil
}

// find looks the key pair named label up in the current session pool.
func (t *Token) find(label string) (crypto.Signer, error) {
	found, err := t.ctx.Load().FindKeyPairs(nil, []byte(label))
	if err != nil {
		return nil, fmt.Errorf("hsm: find %s: %w", t.URI(label), err)
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%w: %s (%d matches)", ErrKeyNotFound, t.URI(label), len(found))
	}
	return found[0], nil
}

// countingSigner counts each signature made with the wrapped key (a soft
// key; token keys have tokenSigner, which also retries).
type countingSigner struct {
	crypto.Signer
	ops *atomic.Uint64
}

func (c *countingSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.ops.Add(1)
	return c.Signer.Sign(r, digest, opts)
}

// KeyURI builds the RFC 7512 URI of a private key in a token.
func KeyURI(token, object string) string {
	esc := func(s string) string { return strings.ReplaceAll(url.PathEscape(s), ";", "%3B") }
	return "pkcs11:token=" + esc(token) + ";object=" + esc(object) + ";type=private"
}

// ParseKeyURI returns the token and object labels of an RFC 7512 URI. It
// accepts the path attributes token, object, type and id and refuses others,
// so a typo does not silently select another key.
func ParseKeyURI(uri string) (token, object string, err error) {
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return "", "", fmt.Errorf("hsm: %q is not a pkcs11: URI", uri)
	}
	path, _, _ := strings.Cut(rest, "?")
	for _, attr := range strings.Split(path, ";") {
		if attr == "" {
			continue
		}
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			return "", "", fmt.Errorf("hsm: %q: attribute %q has no value", uri, attr)
		}
		v, err := url.PathUnescape(v)
		if err != nil {
			return "", "", fmt.Errorf("hsm: %q: %w", uri, err)
		}
		switch k {
		case "token":
			token = v
		case "object":
			object = v
		case "type", "id", "manufacturer", "model", "serial":
		default:
			return "", "", fmt.Errorf("hsm: %q: unsupported attribute %q", uri, k)
		}
	}
	if token == "" || object == "" {
		return "", "", fmt.Errorf("hsm: %q must name token and object", uri)
	}
	return token, object, nil
}
