// Package yamlerr turns the YAML decoder's errors into one-line messages
// without its "yaml:" prefix, so a file's error reads "policy: invalid:
// line 3: field grase not found ..." rather than leaking the decoder's
// layer and line breaks.
package yamlerr

import (
	"errors"
	"strings"

	"gopkg.in/yaml.v3"
)

// Clean returns err's message on one line without the decoder's prefix;
// errors not from the decoder pass through as they are.
func Clean(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return errors.New(strings.Join(te.Errors, "; "))
	}
	if msg, ok := strings.CutPrefix(err.Error(), "yaml: "); ok {
		return errors.New(msg)
	}
	return err
}
