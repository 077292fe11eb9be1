package mosquitto

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// CAPEM is the content of the broker's CA file: every root, in the order
// given, as PEM. Mosquitto verifies a device's certificate against any of
// them, so an identity issued under a root fleetd has rotated away from
// keeps connecting until it expires, and one under the new root connects
// from the first moment.
func CAPEM(roots []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, r := range roots {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
	}
	return b.Bytes()
}

// WriteCAFile replaces path with roots atomically (a file next to it,
// renamed over it), so that a broker that reloads meanwhile reads the old
// or the new file, never half of one. It reports whether the content
// changed: an unchanged file needs no reload.
func WriteCAFile(path string, roots []*x509.Certificate) (changed bool, err error) {
	if len(roots) == 0 {
		return false, fmt.Errorf("mosquitto: CA file %s: no roots", path)
	}
	return writeFile(path, "CA file", CAPEM(roots))
}

// writeFile replaces path with b atomically, mode 0644, unless it holds b
// already; what names the file in errors.
func writeFile(path, what string, b []byte) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, fmt.Errorf("mosquitto: %s: %w", what, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing left to remove
	fail := func(err error) (bool, error) {
		tmp.Close()
		return false, fmt.Errorf("mosquitto: %s %s: %w", what, path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fail(err)
	}
	// Certificates and CRLs are public; the broker often runs as another user.
	if err := tmp.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("mosquitto: %s %s: %w", what, path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("mosquitto: %s %s: %w", what, path, err)
	}
	return true, nil
}

// Reload runs the operator's --broker-reload (or --broker-crl-reload)
// command through sh -c, e.g. "sudo systemctl restart mosquitto". A
// command rather than a pid file to signal: fleetd and Mosquitto run as
// different users, so fleetd may not signal Mosquitto itself, and what
// makes a broker re-read its files differs: Mosquitto 2.0 re-reads cafile
// only when it starts (a SIGHUP, systemctl reload, reloads its own
// certificate and key and its crlfile, but not the CA store), so for a CA
// file the command is a restart (devices reconnect, and the
// dynamic-security state persists in its file), for a CRL file a SIGHUP.
func Reload(ctx context.Context, cmd string) error {
	if cmd == "" {
		return nil
	}
	out, err := exec.CommandContext(ctx, "sh", "-c", cmd).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mosquitto: reload %q: %w: %s", cmd, err, bytes.TrimSpace(out))
	}
	return nil
}
