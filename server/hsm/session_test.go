package hsm_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server/hsm"
)

// TestDataKeysConcurrent makes and unwraps data keys from many goroutines
// at once (run it with -race), more than the Token's data-key sessions.
func TestDataKeysConcurrent(t *testing.T) {
	for _, b := range dataKeyBackends() {
		t.Run(b.name, func(t *testing.T) {
			ks := b.open(t)
			if err := ks.GenerateKEK("k"); err != nil {
				t.Fatal(err)
			}
			const workers, each = 12, 15
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						size := hsm.DataKey128
						if i%2 == 1 {
							size = hsm.DataKey256
						}
						key, wrapped, err := ks.NewDataKey("k", size)
						if err != nil {
							errs <- err
							return
						}
						got, err := ks.UnwrapDataKey("k", wrapped)
						if err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(got, key) {
							errs <- errors.New("unwrapped another key")
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got, want := ks.Ops(), uint64(2*workers*each); got != want {
				t.Errorf("Ops: got %d, want %d", got, want)
			}
		})
	}
}

// TestDataKeysCloseAndShare: two Tokens on one token share the module; the
// first one's Close (which closes its data-key sessions) must leave the
// second one, its signatures and its data keys working; a closed Token
// refuses data keys with ErrClosed instead of crashing.
func TestDataKeysCloseAndShare(t *testing.T) {
	cfg := fleettest.NewToken(t)
	a, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.GenerateKEK("k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GenerateP256("ca"); err != nil {
		t.Fatal(err)
	}
	_, wa, err := a.NewDataKey("k", hsm.DataKey128)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, err := b.NewDataKey("k", hsm.DataKey128); err != nil {
		t.Fatalf("NewDataKey on the second Token: got error %v, want nil", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: got error %v, want nil", err)
	}
	if _, _, err := a.NewDataKey("k", hsm.DataKey128); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("NewDataKey after Close: got %v, want ErrClosed", err)
	}
	if _, err := a.UnwrapDataKey("k", wa); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("UnwrapDataKey after Close: got %v, want ErrClosed", err)
	}
	if _, err := b.UnwrapDataKey("k", wa); err != nil {
		t.Fatalf("UnwrapDataKey on the second Token after the first closed: got error %v, want nil", err)
	}
	s, err := b.Signer("ca")
	if err != nil {
		t.Fatalf("Signer on the second Token: got error %v, want nil", err)
	}
	checkSigns(t, s, p256Public(t, s), "after the other Token closed")
}

// TestDataKeysCloseWhileBusy closes a Token while goroutines use data keys:
// each call either works or fails with ErrClosed, and the module is usable
// by a new Token afterwards.
func TestDataKeysCloseWhileBusy(t *testing.T) {
	cfg := fleettest.NewToken(t)
	tok, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.GenerateKEK("k"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < 50; i++ {
				_, _, err := tok.NewDataKey("k", hsm.DataKey128)
				if errors.Is(err, hsm.ErrClosed) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	close(start)
	if err := tok.Close(); err != nil {
		t.Errorf("Close while busy: got error %v, want nil", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("NewDataKey racing Close: got error %v, want nil or ErrClosed", err)
	}
	again, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("Open after Close: got error %v, want nil", err)
	}
	defer again.Close()
	if _, _, err := again.NewDataKey("k", hsm.DataKey256); err != nil {
		t.Fatalf("NewDataKey on a new Token: got error %v, want nil", err)
	}
}
