// Package client is the Go client of fleetd's operator API (package
// adminapi): what fleetctl, the simulator and tests use. It links only the
// wire types, never the server.
//
// # Basics
//
// LoadCredential reads the operator credential fleetd init writes; New
// connects with it. Every method is one request; a non-2xx answer is an
// *APIError carrying the status and the API's error code.
//
// # Caveats
//
// A Client is safe for concurrent use and keeps up to 16 idle connections.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
)

// Client calls the admin API.
type Client struct {
	base string
	hc   *http.Client
}

// New returns a client of the API at addr (host:port) that authenticates
// with the operator credential in tlsConf.
func New(addr string, tlsConf *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 16}
	return &Client{base: "https://" + addr, hc: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// LoadCredential reads an operator credential directory (admin.pem,
// admin.key, ca.pem, as fleetd init writes it) into a TLS config.
func LoadCredential(dir string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "admin.pem"), filepath.Join(dir, "admin.key"))
	if err != nil {
		return nil, fmt.Errorf("admin client: credential in %s: %w", dir, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("admin client: credential in %s: %w", dir, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("admin client: no CA certificate in %s/ca.pem", dir)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Message string
	// Code is the API's error code (adminapi.Code...), empty if the answer
	// carried none.
	Code string
	// Details are the errors of a refused policy file, one per entry
	// ("file:line: field: message"); empty for other answers.
	Details []string
}

// Error is the server's message as it stands: it already says what was
// refused and why; the status and code are fields for programs.
func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("admin API answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// apiError reads a non-2xx answer's body.
func apiError(status int, b []byte) *APIError {
	var e adminapi.PolicyErrors
	_ = json.Unmarshal(b, &e)
	if e.Error == "" {
		e.Error = string(b)
	}
	return &APIError{Status: status, Message: e.Error, Code: e.Code, Details: e.Errors}
}

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
		return apiError(resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("admin API: decode answer: %w", err)
		}
	}
	return nil
}

// Status returns fleetd's counters.
func (c *Client) Status(ctx context.Context) (adminapi.Status, error) {
	var s adminapi.Status
	return s, c.do(ctx, http.MethodGet, adminapi.PathStatus, nil, &s)
}

// Devices lists every device.
func (c *Client) Devices(ctx context.Context) ([]adminapi.DeviceSummary, error) {
	var out []adminapi.DeviceSummary
	return out, c.do(ctx, http.MethodGet, adminapi.PathDevices, nil, &out)
}

// SelectDevices lists the devices selector selects (Kubernetes label
// selector grammar; the model is the key "model"); "" lists all. A bad
// selector is an *APIError with code adminapi.CodeInvalid.
func (c *Client) SelectDevices(ctx context.Context, selector string) ([]adminapi.DeviceSummary, error) {
	var out []adminapi.DeviceSummary
	return out, c.do(ctx, http.MethodGet, adminapi.DevicesPath(selector), nil, &out)
}

// Label changes a device's labels and model and returns the device.
func (c *Client) Label(ctx context.Context, id string, req adminapi.LabelRequest) (adminapi.Device, error) {
	var out adminapi.Device
	return out, c.do(ctx, http.MethodPost, adminapi.LabelsPath(id), req, &out)
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (adminapi.Device, error) {
	var out adminapi.Device
	return out, c.do(ctx, http.MethodGet, adminapi.DevicePath(id), nil, &out)
}

// Provision registers a device with a PEM CSR.
func (c *Client) Provision(ctx context.Context, id string, csrPEM []byte) (adminapi.ProvisionResponse, error) {
	var out adminapi.ProvisionResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathDevices, adminapi.ProvisionRequest{ID: id, CSR: string(csrPEM)}, &out)
}

// ProvisionDevice registers a device; with req.BirthCSR set it gets a birth
// credential (IDevID) too.
func (c *Client) ProvisionDevice(ctx context.Context, req adminapi.ProvisionRequest) (adminapi.ProvisionResponse, error) {
	var out adminapi.ProvisionResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathDevices, req, &out)
}

// Rotate requests rotations.
func (c *Client) Rotate(ctx context.Context, req adminapi.RotateRequest) (adminapi.RotateResponse, error) {
	var out adminapi.RotateResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathRotations, req, &out)
}

// VerifyAudit checks the audit chain.
func (c *Client) VerifyAudit(ctx context.Context) (adminapi.AuditVerify, error) {
	var out adminapi.AuditVerify
	return out, c.do(ctx, http.MethodGet, adminapi.PathAuditVerify, nil, &out)
}

// ProvisionBatch registers up to adminapi.MaxBatch devices at once.
func (c *Client) ProvisionBatch(ctx context.Context, req adminapi.BatchProvisionRequest) (adminapi.BatchProvisionResponse, error) {
	var out adminapi.BatchProvisionResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathDevicesBatch, req, &out)
}

// Revoke revokes a device at once.
func (c *Client) Revoke(ctx context.Context, id, reason string) (adminapi.RevokeResponse, error) {
	var out adminapi.RevokeResponse
	return out, c.do(ctx, http.MethodPost, adminapi.RevokePath(id), adminapi.RevokeRequest{Reason: reason}, &out)
}

// Anchors describes the current trust-anchor set.
func (c *Client) Anchors(ctx context.Context) (adminapi.AnchorsInfo, error) {
	var out adminapi.AnchorsInfo
	return out, c.do(ctx, http.MethodGet, adminapi.PathAnchors, nil, &out)
}

// RotateAnchors makes the next anchor set.
func (c *Client) RotateAnchors(ctx context.Context, keys []string) (adminapi.AnchorsInfo, error) {
	var out adminapi.AnchorsInfo
	return out, c.do(ctx, http.MethodPost, adminapi.PathAnchorsRotate, adminapi.AnchorsRotateRequest{Keys: keys}, &out)
}

// RotateDataKeys gives every device a new primary data key.
func (c *Client) RotateDataKeys(ctx context.Context) (adminapi.DataKeysResponse, error) {
	var out adminapi.DataKeysResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathDataKeysRotate, struct{}{}, &out)
}

// RecoverEscrow asks for an escrowed data key, sealed to this client's
// certificate key.
func (c *Client) RecoverEscrow(ctx context.Context, device string, version uint32) (adminapi.EscrowResponse, error) {
	var out adminapi.EscrowResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathEscrowRecover, adminapi.EscrowRequest{Device: device, Version: version}, &out)
}

// PublishFirmware makes a release current.
func (c *Client) PublishFirmware(ctx context.Context, req adminapi.FirmwareRequest) (adminapi.FirmwareInfo, error) {
	var out adminapi.FirmwareInfo
	return out, c.do(ctx, http.MethodPost, adminapi.PathFirmware, req, &out)
}

// BrokerCert has fleetd issue an external broker's TLS certificate for the
// key in req.CSR.
func (c *Client) BrokerCert(ctx context.Context, req adminapi.BrokerCertRequest) (adminapi.BrokerCertResponse, error) {
	var out adminapi.BrokerCertResponse
	return out, c.do(ctx, http.MethodPost, adminapi.PathBrokerCert, req, &out)
}
