package datakey

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// The secret type on its own redacts in every printer, and wipe zeroes
// the bytes it held.
func TestSecretRedacts(t *testing.T) {
	key := bytes.Repeat([]byte{0xa7}, 16)
	s := newSecret(key)
	key[0] = 0 // newSecret copied
	if got := s.bytes(); len(got) != 16 || got[0] != 0xa7 {
		t.Fatalf("secret bytes %x, want a copy of the key", got)
	}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		out = append(out, fmt.Sprintf(verb, s), fmt.Sprintf(verb, &s), fmt.Sprintf(verb, struct{ S secret }{s}))
	}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("k", "key", s)
	out = append(out, logs.String())
	j, err := json.Marshal(struct{ S secret }{s})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(j))
	for _, o := range out {
		if strings.Contains(o, "a7a7") || strings.Contains(o, "A7A7") || strings.Contains(o, "167 167") || strings.Contains(o, "p7en") {
			t.Errorf("secret leaks: %s", o)
		}
		if !strings.Contains(o, redacted) {
			t.Errorf("secret output %q does not say %s", o, redacted)
		}
	}

	held := s.bytes()
	s.wipe()
	if s.bytes() != nil || !bytes.Equal(held, make([]byte, 16)) {
		t.Errorf("after wipe: secret %x, old bytes %x, want nil and zeros", s.bytes(), held)
	}
	s.wipe() // idempotent
}
