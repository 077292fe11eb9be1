package device

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/keyfleet/keyfleet/internal/fsutil"
)

// Storage is where a keystore keeps its files. Names are slash-separated
// paths relative to the keystore's root. WriteFile must be atomic: after a
// crash a file holds its old content or its new one.
type Storage interface {
	ReadFile(name string) ([]byte, error) // fs.ErrNotExist when absent
	WriteFile(name string, data []byte, perm os.FileMode) error
	RemoveAll(name string) error
}

// DirStorage keeps the files in a directory, written atomically (write,
// fsync, rename, fsync the directory): what a real device uses.
type DirStorage struct {
	Dir string
	// NoSync skips the fsyncs: still atomic against a process crash, not
	// against power loss. Only the simulator sets it.
	NoSync bool
}

func (d *DirStorage) path(name string) string { return filepath.Join(d.Dir, filepath.FromSlash(name)) }

// ReadFile implements Storage.
func (d *DirStorage) ReadFile(name string) ([]byte, error) { return os.ReadFile(d.path(name)) }

// WriteFile implements Storage.
func (d *DirStorage) WriteFile(name string, data []byte, perm os.FileMode) error {
	return fsutil.Write(d.path(name), data, perm, !d.NoSync)
}

// RemoveAll implements Storage.
func (d *DirStorage) RemoveAll(name string) error { return os.RemoveAll(d.path(name)) }

// MemStorage keeps the files in memory: the simulator's sleeping devices,
// millions of them, each a few hundred bytes of keys and certificates
// rather than a directory and a live agent. Data passed to WriteFile is
// kept, not copied, so devices installed from the same CA bytes share them.
// It is safe for concurrent use.
type MemStorage struct {
	mu    sync.Mutex
	files map[string][]byte
}

// NewMemStorage returns an empty MemStorage.
func NewMemStorage() *MemStorage { return &MemStorage{files: map[string][]byte{}} }

// ReadFile implements Storage.
func (m *MemStorage) ReadFile(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.files[path.Clean(name)]
	if !ok {
		return nil, fmt.Errorf("memstorage %s: %w", name, fs.ErrNotExist)
	}
	return b, nil
}

// WriteFile implements Storage.
func (m *MemStorage) WriteFile(name string, data []byte, _ os.FileMode) error {
	if name == "" {
		return errors.New("memstorage: empty name")
	}
	m.mu.Lock()
	m.files[path.Clean(name)] = data
	m.mu.Unlock()
	return nil
}

// RemoveAll implements Storage.
func (m *MemStorage) RemoveAll(name string) error {
	name = path.Clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.files {
		if k == name || strings.HasPrefix(k, name+"/") {
			delete(m.files, k)
		}
	}
	return nil
}

// Size returns the bytes held, for the simulator's memory accounting.
func (m *MemStorage) Size() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, v := range m.files {
		n += len(k) + len(v)
	}
	return n
}
