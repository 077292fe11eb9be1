// Package softhsm finds and configures SoftHSM2, the software PKCS#11 token
// keyfleet uses for `make run`, the simulator and tests. It only prepares
// files and the environment; all key work goes through server/hsm.
package softhsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ModulePaths are where Debian and other distributions install the library.
var ModulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
}

// ErrNotInstalled: no SoftHSM2 library was found.
var ErrNotInstalled = errors.New("softhsm: libsofthsm2.so not found; install the softhsm2 package (apt-get install softhsm2)")

// Module returns the path of the SoftHSM2 PKCS#11 library.
func Module() (string, error) {
	if p := os.Getenv("KEYFLEET_PKCS11_MODULE"); p != "" {
		return p, nil
	}
	for _, p := range ModulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", ErrNotInstalled
}

// Configure writes dir/softhsm2.conf with its token directory under dir and
// points SOFTHSM2_CONF at it. SoftHSM2 reads the variable when the module is
// first initialised in a process, so call this before any token is opened;
// later calls in the same process change nothing SoftHSM2 sees.
func Configure(dir string) (string, error) {
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	return conf, nil
}
