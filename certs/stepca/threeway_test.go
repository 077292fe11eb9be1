package stepca_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/ca"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/certs/identity"
	"github.com/keyfleet/keyfleet/certs/stepca"
	"github.com/keyfleet/keyfleet/certs/stepca/stepcatest"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// peerResult is one peer's figures in the three-way comparison.
type peerResult struct {
	Peer        string  `json:"peer"`
	Rotations   int     `json:"rotations"`
	DurationS   float64 `json:"duration_s"`
	RotationsPS float64 `json:"rotations_per_s"`
	P50MS       float64 `json:"p50_ms"`
	P99MS       float64 `json:"p99_ms"`
}

// threeWay is what make bench writes to bench/results/stepca-threeway.json.
type threeWay struct {
	Devices     int          `json:"devices"`
	Rounds      int          `json:"rounds"`
	Concurrency int          `json:"concurrency"`
	CPUs        int          `json:"cpus"`
	GoVersion   string       `json:"go_version"`
	Peers       []peerResult `json:"peers"`
	// RatioAC and RatioBC are rates (a)/(c) and (b)/(c).
	RatioAC float64 `json:"ratio_a_c"`
	RatioBC float64 `json:"ratio_b_c"`
}

// run times rounds of rotations of devices, concurrency at a time, with
// rotate doing one rotation of device d; it returns the peer's figures.
func run(b *testing.B, peer string, devices, rounds, concurrency int, rotate func(d int) error) peerResult {
	b.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	start := time.Now()
	for r := range rounds {
		var wg sync.WaitGroup
		sem := make(chan struct{}, concurrency)
		errs := make(chan error, devices)
		for d := range devices {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				t0 := time.Now()
				if err := rotate(d); err != nil {
					errs <- fmt.Errorf("%s: device %d round %d: %w", peer, d, r+1, err)
					return
				}
				el := time.Since(t0)
				mu.Lock()
				lat = append(lat, el)
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	dur := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) float64 { // nearest rank
		i := int(p*float64(len(lat))+0.999999) - 1
		return float64(lat[max(i, 0)].Microseconds()) / 1000
	}
	res := peerResult{Peer: peer, Rotations: len(lat), DurationS: dur.Seconds(),
		RotationsPS: float64(len(lat)) / dur.Seconds(), P50MS: pct(0.50), P99MS: pct(0.99)}
	b.ReportMetric(res.RotationsPS, peer+"-rot/s")
	b.ReportMetric(res.P50MS, peer+"-p50-ms")
	b.ReportMetric(res.P99MS, peer+"-p99-ms")
	return res
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkThreeWay rotates the same devices the same number of times
// (a) through keyfleet's embedded CA with its key in SoftHSM2, (b) through
// step-ca as keyfleet's issuer (HSM-signed JWK token, the device's CSR
// forwarded to /sign), and (c) as a fleet uses step-ca without keyfleet:
// each device makes a new key and calls /rekey over mTLS with its current
// certificate, as `step ca rekey` does. Each rotation includes the
// device's key generation and CSR; (a) and (b) include fleetd's CSR check.
// None includes MQTT or COSE (the simulator measures those for (a)).
// BENCH_STEPCA_DEVICES (default 200) and BENCH_STEPCA_ROUNDS (default 2)
// set the load; BENCH_STEPCA_OUT names the JSON report. Run it with
// -benchtime 1x: the load is fixed, not b.N.
func BenchmarkThreeWay(b *testing.B) {
	devices, rounds := envInt("BENCH_STEPCA_DEVICES", 200), envInt("BENCH_STEPCA_ROUNDS", 2)
	concurrency := 4 * runtime.NumCPU()
	ctx := context.Background()
	tok, err := hsm.Open(fleettest.NewToken(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tok.Close() })
	caKey, err := tok.GenerateP256("keyfleet-ca")
	if err != nil {
		b.Fatal(err)
	}
	provKey, err := tok.GenerateP256("keyfleet-stepca-provisioner")
	if err != nil {
		b.Fatal(err)
	}
	root, err := certs.NewRoot(caKey, "keyfleet CA", time.Now(), 365*24*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	embedded, err := certs.NewCA(root, caKey, certs.CAOptions{})
	if err != nil {
		b.Fatal(err)
	}
	sca := stepcatest.Start(b, "keyfleet", provKey.Public(), 0)
	viaStep, err := stepca.New(ctx, stepca.Options{URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner, Key: provKey})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, devices)
	for d := range ids {
		ids[d] = fmt.Sprintf("bench-%05d", d)
	}
	for b.Loop() {
		out := threeWay{Devices: devices, Rounds: rounds, Concurrency: concurrency, CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
		viaKeyfleet := func(is certs.Issuer) func(int) error {
			return func(d int) error {
				_, _, err := enroll(ctx, is, ids[d])
				return err
			}
		}
		out.Peers = append(out.Peers, run(b, "a-embedded", devices, rounds, concurrency, viaKeyfleet(embedded)))
		out.Peers = append(out.Peers, run(b, "b-stepca-issuer", devices, rounds, concurrency, viaKeyfleet(viaStep)))

		// (c): every device first gets a certificate from step-ca (not
		// timed), then rekeys with it.
		client, err := ca.NewClient(sca.URL, ca.WithRootFile(sca.RootFile))
		if err != nil {
			b.Fatal(err)
		}
		creds := make([]tls.Certificate, devices)
		for d := range devices {
			k, err := device.NewKey()
			if err != nil {
				b.Fatal(err)
			}
			der, err := device.CSR(ids[d], k)
			if err != nil {
				b.Fatal(err)
			}
			c, err := viaStep.Issue(ctx, certs.Request{Identity: identity.Identity{Role: identity.RoleDevice, Name: ids[d]}, PublicKey: k.Public(), CSR: der})
			if err != nil {
				b.Fatal(err)
			}
			creds[d] = tls.Certificate{Certificate: [][]byte{c.Raw, sca.Intermediate.Raw}, PrivateKey: k, Leaf: c}
		}
		out.Peers = append(out.Peers, run(b, "c-step-rekey", devices, rounds, concurrency, func(d int) error {
			k, chain, err := sca.Rekey(ctx, client, creds[d])
			if err != nil {
				return err
			}
			if id, err := identity.Of(chain[0]); err != nil || id.Name != ids[d] {
				return fmt.Errorf("rekeyed certificate names %v (%v)", id, err)
			}
			raw := make([][]byte, len(chain))
			for i, c := range chain {
				raw[i] = c.Raw
			}
			creds[d] = tls.Certificate{Certificate: raw, PrivateKey: k, Leaf: chain[0]}
			return nil
		}))
		c := out.Peers[2].RotationsPS
		out.RatioAC, out.RatioBC = out.Peers[0].RotationsPS/c, out.Peers[1].RotationsPS/c
		b.ReportMetric(out.RatioAC, "a/c")
		b.ReportMetric(out.RatioBC, "b/c")
		if name := os.Getenv("BENCH_STEPCA_OUT"); name != "" {
			js, err := json.MarshalIndent(out, "", "  ")
			if err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(name, append(js, '\n'), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
}
