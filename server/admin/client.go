package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// Client calls the admin API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient connects to addr (host:port) with an operator credential.
func NewClient(addr string, tlsConf *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 16}
	return &Client{base: "https://" + addr, hc: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// LoadCredential reads an operator credential directory (admin.pem,
// admin.key, ca.pem, as fleetd init writes it) into a TLS config.
func LoadCredential(dir string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "admin.pem"), filepath.Join(dir, "admin.key"))
	if err != nil {
		return nil, fmt.Errorf("admin: credential in %s: %w", dir, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("admin: credential in %s: %w", dir, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("admin: no CA certificate in %s/ca.pem", dir)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("admin API: %d: %s", e.Status, e.Message) }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = string(b)
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("admin API: decode answer: %w", err)
		}
	}
	return nil
}

// Status returns fleetd's counters.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Devices lists every device.
func (c *Client) Devices(ctx context.Context) ([]DeviceSummary, error) {
	var out []DeviceSummary
	return out, c.do(ctx, http.MethodGet, "/v1/devices", nil, &out)
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (Device, error) {
	var out Device
	return out, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id), nil, &out)
}

// Provision registers a device with a PEM CSR.
func (c *Client) Provision(ctx context.Context, id string, csrPEM []byte) (ProvisionResponse, error) {
	var out ProvisionResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices", ProvisionRequest{ID: id, CSR: string(csrPEM)}, &out)
}

// ProvisionDevice registers a device; with req.BirthCSR set it gets a birth
// credential (IDevID) too.
func (c *Client) ProvisionDevice(ctx context.Context, req ProvisionRequest) (ProvisionResponse, error) {
	var out ProvisionResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices", req, &out)
}

// Rotate requests rotations.
func (c *Client) Rotate(ctx context.Context, req RotateRequest) (RotateResponse, error) {
	var out RotateResponse
	return out, c.do(ctx, http.MethodPost, "/v1/rotations", req, &out)
}

// VerifyAudit checks the audit chain.
func (c *Client) VerifyAudit(ctx context.Context) (AuditVerify, error) {
	var out AuditVerify
	return out, c.do(ctx, http.MethodGet, "/v1/audit/verify", nil, &out)
}

// ProvisionBatch registers up to MaxBatch devices at once.
func (c *Client) ProvisionBatch(ctx context.Context, req BatchProvisionRequest) (BatchProvisionResponse, error) {
	var out BatchProvisionResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices/batch", req, &out)
}

// Revoke revokes a device at once.
func (c *Client) Revoke(ctx context.Context, id, reason string) (RevokeResponse, error) {
	var out RevokeResponse
	return out, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/revoke", RevokeRequest{Reason: reason}, &out)
}

// Anchors describes the current trust-anchor set.
func (c *Client) Anchors(ctx context.Context) (AnchorsInfo, error) {
	var out AnchorsInfo
	return out, c.do(ctx, http.MethodGet, "/v1/anchors", nil, &out)
}

// RotateAnchors makes the next anchor set.
func (c *Client) RotateAnchors(ctx context.Context, keys []string) (AnchorsInfo, error) {
	var out AnchorsInfo
	return out, c.do(ctx, http.MethodPost, "/v1/anchors/rotate", AnchorsRotateRequest{Keys: keys}, &out)
}

// RotateDataKeys gives every device a new primary data key.
func (c *Client) RotateDataKeys(ctx context.Context) (DataKeysResponse, error) {
	var out DataKeysResponse
	return out, c.do(ctx, http.MethodPost, "/v1/datakeys/rotate", struct{}{}, &out)
}

// RecoverEscrow asks for an escrowed data key, sealed to this client's
// certificate key.
func (c *Client) RecoverEscrow(ctx context.Context, device string, version uint32) (EscrowResponse, error) {
	var out EscrowResponse
	return out, c.do(ctx, http.MethodPost, "/v1/escrow/recover", EscrowRequest{Device: device, Version: version}, &out)
}

// PublishFirmware makes a release current.
func (c *Client) PublishFirmware(ctx context.Context, req FirmwareRequest) (FirmwareInfo, error) {
	var out FirmwareInfo
	return out, c.do(ctx, http.MethodPost, "/v1/firmware", req, &out)
}
