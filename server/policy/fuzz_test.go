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
		"rules:\n  - select: model=x\n    max_key_age: 1h\n    schedule: {cron: '* * * * *', window: 1m}\n",
		"rules:\n  - select: 'a in (b'\n    campaign: {stages: 1%,100%, max_failure: 2%}\n",
		"rules: [{select: a, grace: 1h}, 7, {}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			var es Errors
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %v does not wrap ErrInvalid with its errors", err)
			}
			for _, e := range es {
				if e.Line < 1 || e.File != "policy" {
					t.Fatalf("error %q names no line of the file", e)
				}
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse accepted a policy that does not validate: %v", err)
		}
	})
}
