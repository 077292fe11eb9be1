package hsm_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyfleet/keyfleet/server/hsm"
)

func TestSoftKEKFile(t *testing.T) {
	s, dir := openSoft(t)
	if err := s.GenerateKEK("escrow"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "escrow.kek")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("KEK file: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("KEK file mode: got %v, want 0600", got)
	}
	if fi.Size() != hsm.KEKSize {
		t.Errorf("KEK file size: got %d, want %d", fi.Size(), hsm.KEKSize)
	}
	kek, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key, wrapped, err := s.NewDataKey("escrow", hsm.DataKey128)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := hsm.UnwrapPad(kek, wrapped); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("UnwrapPad with the file's KEK: got error %v or another key, want the data key", err)
	}
	// A re-opened store finds the KEK.
	s2, err := hsm.OpenSoftKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.UnwrapDataKey("escrow", wrapped); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("UnwrapDataKey after re-open: got error %v or another key, want the data key", err)
	}
	for _, label := range []string{"../escrow", "a/b", ".", ".."} {
		if err := s.GenerateKEK(label); err == nil {
			t.Errorf("GenerateKEK(%q): got nil error, want one", label)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "short.kek"), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.NewDataKey("short", hsm.DataKey128); err == nil || errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("NewDataKey under a short KEK file: got %v, want an error other than ErrKeyNotFound", err)
	}
}
