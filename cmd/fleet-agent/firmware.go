package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/firmware"
)

// maxImage bounds a firmware download; the manifest's size is checked
// after, this keeps a hostile server from filling the disk first.
const maxImage = 256 << 20

// firmwareOptions builds the agent's firmware support from the flags: the
// two slots under dir, images fetched from file:// or https:// URIs, and a
// boot check that runs cmd with the image's path (exit status 0: good).
func firmwareOptions(dir, vendor, class string, factory uint32, bootCheck string) (*device.FirmwareOptions, error) {
	v, err := firmware.ParseUUID(vendor)
	if err != nil {
		return nil, fmt.Errorf("--firmware-vendor: %w", err)
	}
	c, err := firmware.ParseUUID(class)
	if err != nil {
		return nil, fmt.Errorf("--firmware-class: %w", err)
	}
	o := &device.FirmwareOptions{Dir: dir, Identity: firmware.Identity{VendorID: v, ClassID: c, FactoryVersion: factory},
		Fetch: fetch}
	if bootCheck != "" {
		o.BootCheck = func(m *firmware.Manifest, image []byte) error {
			f, err := os.CreateTemp(dir, "boot-check-*.img")
			if err != nil {
				return err
			}
			defer os.Remove(f.Name())
			if _, err := f.Write(image); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bootCheck, f.Name(), fmt.Sprint(m.Version)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("boot check %s: %w: %.200s", filepath.Base(bootCheck), err, out)
			}
			return nil
		}
	}
	return o, nil
}

// fetch downloads an image named by a manifest.
func fetch(ctx context.Context, uri string) ([]byte, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "file":
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return io.ReadAll(io.LimitReader(f, maxImage))
	case "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("fetch %s: %s", uri, resp.Status)
		}
		return io.ReadAll(io.LimitReader(resp.Body, maxImage))
	}
	return nil, errors.New("firmware URI must be file:// or https://")
}
