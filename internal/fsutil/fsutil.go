// Package fsutil has the one file-writing primitive keyfleet trusts for
// state that must survive a crash: write a temporary file, fsync it, rename
// it over the old one, fsync the directory.
package fsutil

import (
	"os"
	"path/filepath"
)

// WriteAtomic writes, fsyncs and renames, so a crash or a power loss leaves
// the old file or the new one, never half of one.
func WriteAtomic(path string, data []byte, perm os.FileMode) error {
	return Write(path, data, perm, true)
}

// Write is WriteAtomic with the fsyncs optional. Without them the rename
// still makes the write atomic against a process crash (the page cache
// survives it) but not against power loss; the simulator uses that, because
// thousands of simulated devices share one disk where real ones each have
// their own flash.
func Write(path string, data []byte, perm os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if sync {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
