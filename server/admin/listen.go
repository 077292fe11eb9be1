package admin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Identity is fleetd's side of the API's mutual TLS; *trust.Service
// satisfies it. Both are read per connection: a rotation of the anchors
// adds a root and replaces fleetd's certificate without a restart.
type Identity interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Roots are the roots operator certificates must chain to.
	Roots() *x509.CertPool
}

// Server serves the API on its own mutual-TLS listener.
type Server struct {
	l   net.Listener
	srv *http.Server
	wg  sync.WaitGroup
}

// Listen serves Handler(p, log) on addr until Close, requiring a client
// certificate under id's roots, checked at the time now gives.
func Listen(addr string, p Parts, id Identity, now func() time.Time, log *slog.Logger) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	s := &Server{l: l, srv: &http.Server{
		Handler: Handler(p, log),
		TLSConfig: &tls.Config{
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return &tls.Config{GetCertificate: id.GetCertificate, ClientCAs: id.Roots(), Time: now,
					ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
			},
			MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the API listens on.
func (s *Server) Addr() string { return s.l.Addr().String() }

// closeTimeout bounds how long Close lets running requests finish.
const closeTimeout = 2 * time.Second

// Close stops accepting, lets running requests finish for up to 2 s, and
// returns when the server has stopped.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.wg.Wait()
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // the stragglers were cut off; that is what the bound is for
	}
	return err
}
