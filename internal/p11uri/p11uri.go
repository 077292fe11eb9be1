// Package p11uri reads RFC 7512 PKCS#11 URIs the way keyfleet's two users
// of them need: fleetd's --key-uri (server/custody) and the agent's
// --key-store (device/hwkeys). Both refuse unknown or repeated attributes,
// check that the module exists and read the PIN from pin-source or
// pin-value before anything opens a token, and neither may ever put the
// URI, which can hold a PIN, into an error. One parser keeps the two
// refusing the same URIs with the same words.
//
// Parsing itself is go.step.sm/crypto/kms/uri's, the maintained parser
// smallstep's tools use.
package p11uri

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"slices"
	"strings"

	"go.step.sm/crypto/kms/uri"
)

// Scheme is the prefix every PKCS#11 URI starts with.
const Scheme = "pkcs11:"

// URI is a parsed PKCS#11 URI whose attributes were checked against the
// caller's allowed ones.
type URI struct {
	// Path holds the path attributes (token, object, type, ...).
	Path url.Values
	// Query holds the query attributes (module-path, pin-source, ...).
	Query url.Values
	u     *uri.URI
}

// Parse reads raw, allowing only the path and query attributes named,
// each at most once. Its errors are messages without the URI.
func Parse(raw string, pathAttrs, queryAttrs []string) (*URI, error) {
	if !strings.HasPrefix(raw, Scheme) {
		return nil, errors.New("not a pkcs11: URI (RFC 7512)")
	}
	// RFC 7512 gives "+" no meaning, but the parser reads attributes as a
	// query string, where it is a space: keep it a plus.
	u, err := uri.ParseWithScheme("pkcs11", strings.ReplaceAll(raw, "+", "%2B"))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return nil, fmt.Errorf("malformed: %v", ue.Err)
		}
		return nil, errors.New("malformed path attributes")
	}
	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, errors.New("malformed query attributes")
	}
	for _, a := range []struct {
		vals    url.Values
		allowed []string
		where   string
	}{{u.Values, pathAttrs, "path"}, {query, queryAttrs, "query"}} {
		for k, v := range a.vals {
			if !slices.Contains(a.allowed, k) {
				return nil, fmt.Errorf("unknown %s attribute %q (allowed: %s)", a.where, k, strings.Join(a.allowed, ", "))
			}
			if len(v) > 1 {
				return nil, fmt.Errorf("attribute %q given %d times", k, len(v))
			}
		}
	}
	return &URI{Path: u.Values, Query: query, u: u}, nil
}

// CheckModule refuses a module path that is not a regular file, so that a
// typo is named before the PKCS#11 library is loaded.
func CheckModule(path string) error {
	if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("module-path %s: no such PKCS#11 library", path)
	}
	return nil
}

// PIN returns the PIN that pin-source (file:PATH or PATH, read now) or
// pin-value gives, or "" when the URI gives neither; both at once, an
// unreadable or an empty source are errors.
func (u *URI) PIN() (string, error) {
	src, val := u.Query.Get("pin-source"), u.Query.Get("pin-value")
	switch {
	case src != "" && val != "":
		return "", errors.New("both pin-source and pin-value: give one")
	case src != "":
		b, err := u.u.Read("pin-source")
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", fmt.Errorf("pin-source %s: unreadable: %v", src, err)
		}
		pin := strings.TrimSpace(string(b))
		if pin == "" {
			return "", fmt.Errorf("pin-source %s: empty", src)
		}
		return pin, nil
	}
	return val, nil
}
