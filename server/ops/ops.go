// Package ops serves fleetd's operations endpoints on their own plain-HTTP
// listener, apart from the mutual-TLS admin API: what a Prometheus server
// and an orchestrator's probes reach without an operator certificate.
//
// # Basics
//
//	/         redirects to /status
//	/status   the status page (package statuspage), for people
//	/metrics  the metrics registry (package metrics), Prometheus formats
//	/healthz  200 while the process serves at all (liveness)
//	/readyz   200 when the store, the key custody and the broker answer
//	          (readiness); 503 and the first failing part otherwise
//
// # Caveats
//
// The listener has no authentication: it serves nothing secret (the status
// page names devices, nothing more), but bind it to loopback or a
// management network (the default is 127.0.0.1:9464).
package ops

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/keyfleet/keyfleet/server/broker"
	"github.com/keyfleet/keyfleet/server/store"
	"github.com/keyfleet/keyfleet/server/trust"
)

// Ready names the parts /readyz asks. Broker is nil with an external
// broker; the link's connection stands for it then.
type Ready struct {
	Store interface {
		GetDevice(ctx context.Context, id string) (*store.Device, error)
	}
	// Keys answers Signer by looking the key up in the token: a cheap
	// PKCS#11 call that fails when the token is gone.
	Keys interface {
		Signer(label string) (crypto.Signer, error)
	}
	KeyLabel string
	Broker   *broker.Embedded
	Link     interface{ Connected() bool }
}

// probeDevice is the id the store check looks up; found or not, the store
// answered.
const probeDevice = "readyz-probe"

// check returns why fleetd is not ready, or nil.
func (r Ready) check(ctx context.Context) error {
	if _, err := r.Store.GetDevice(ctx, probeDevice); err != nil && !errors.Is(err, store.ErrNotExist) {
		return fmt.Errorf("store: %w", err)
	}
	if _, err := r.Keys.Signer(r.KeyLabel); err != nil {
		return fmt.Errorf("key custody: %w", err)
	}
	if r.Broker != nil && !r.Broker.Serving() {
		return errors.New("broker: embedded broker not serving")
	}
	if !r.Link.Connected() {
		return errors.New("broker: fleetd's MQTT session is not connected")
	}
	return nil
}

// readyTimeout bounds one readiness check.
const readyTimeout = 3 * time.Second

// Listen serves the ops endpoints on addr until ctx ends and returns the
// address it listens on; an empty addr (or "off") turns the listener off
// and returns "". A nil status leaves the status page out.
func Listen(ctx context.Context, addr string, metrics, status http.Handler, ready Ready, log *slog.Logger) (string, error) {
	if addr == "" || addr == "off" {
		return "", nil
	}
	if ready.KeyLabel == "" {
		ready.KeyLabel = trust.LabelBirthCA
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("ops: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	if status != nil {
		mux.Handle("GET /status", status)
		mux.Handle("GET /{$}", http.RedirectHandler("/status", http.StatusFound))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready.check(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("ops listener stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("ops listener serving", "addr", ln.Addr().String())
	return ln.Addr().String(), nil
}
