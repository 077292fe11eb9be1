package policy

import (
	"errors"
	"testing"
)

// FuzzParse: a policy file comes from the operator's repository and is
// read at every start. Any input gives ErrInvalid or a policy that
// validates: nothing in between reaches the engine.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"grace: 30d\nrenew_after_expiry: 400d\n",
		"cert_validity: 720h\nrenew_before: 0.25\ndata_keys_decrypt: 3\ndata_key_destroy_after: 90d\n",
		"grase: 1d\n",
		"grace: -5d\n",
		"renew_before: 2\n",
		"grace: [1, 2]\n",
		"grace: 99999999999999999999d\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse accepted a policy that does not validate: %v", err)
		}
	})
}
