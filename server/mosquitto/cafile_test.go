package mosquitto

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testRoot(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// WriteCAFile writes every root, readable by a broker of another user,
// reports a change only when the content changed, and refuses to empty
// the file (a broker with no CA refuses every device).
func TestWriteCAFile(t *testing.T) {
	r1, r2 := testRoot(t, "root 1"), testRoot(t, "root 2")
	path := filepath.Join(t.TempDir(), "ca.pem")
	for _, tc := range []struct {
		name        string
		roots       []*x509.Certificate
		wantChanged bool
		wantErr     bool
		wantRoots   int
	}{
		{"first root", []*x509.Certificate{r1}, true, false, 1},
		{"same root again", []*x509.Certificate{r1}, false, false, 1},
		{"a second root", []*x509.Certificate{r1, r2}, true, false, 2},
		{"no roots", nil, false, true, 2},
	} {
		changed, err := WriteCAFile(path, tc.roots)
		if changed != tc.wantChanged || (err != nil) != tc.wantErr {
			t.Errorf("%s: changed %v, err %v; want %v, error %v", tc.name, changed, err, tc.wantChanged, tc.wantErr)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if n := bytes.Count(b, []byte("BEGIN CERTIFICATE")); n != tc.wantRoots {
			t.Errorf("%s: %d roots in the file, want %d", tc.name, n, tc.wantRoots)
		}
		if blk, _ := pem.Decode(b); blk == nil || !bytes.Equal(blk.Bytes, r1.Raw) {
			t.Errorf("%s: the file does not start with the first root", tc.name)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, %v; want 0644", tc.name, fi.Mode().Perm(), err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("%d files next to the CA file, want only it (no temporary left)", len(ents))
	}
}

// Reload runs the command through the shell and reports its failure with
// its output.
func TestReload(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "reloaded")
	for _, tc := range []struct {
		name, cmd, wantErr string
	}{
		{"none", "", ""},
		{"runs", "touch " + mark, ""},
		{"fails", "echo no such broker >&2; exit 3", "no such broker"},
	} {
		err := Reload(context.Background(), tc.cmd)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: %v, want error %q", tc.name, err, tc.wantErr)
		}
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("the command did not run: %v", err)
	}
}
