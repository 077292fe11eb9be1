package firmware

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// installed is a fresh slot directory with version v installed as a trial
// (not booted yet), plus what went into it.
type installed struct {
	dir   string
	s     *Slots
	img   []byte
	m     *Manifest
	key   *ecdsa.PrivateKey
	trust crypto.PublicKey
}

func installTrial(t *testing.T, v uint32) *installed {
	t.Helper()
	key := fixedKey(t, "A")
	in := &installed{dir: t.TempDir(), img: testImage(2000, byte(v)), key: key, trust: key.Public()}
	in.s = openSlots(t, in.dir)
	in.m = testManifest(v, in.img)
	if err := in.s.Install(mustSign(t, in.m, key), in.trust, in.img); err != nil {
		t.Fatalf("Install v%d: %v", v, err)
	}
	return in
}

// install signs and installs v over s, failing the test on error.
func install(t *testing.T, s *Slots, key *ecdsa.PrivateKey, v uint32) []byte {
	t.Helper()
	img := testImage(1500+int(v), byte(v))
	if err := s.Install(mustSign(t, testManifest(v, img), key), key.Public(), img); err != nil {
		t.Fatalf("Install v%d: %v", v, err)
	}
	return img
}

func boot(t *testing.T, s *Slots, check func(*Manifest, []byte) error) Result {
	t.Helper()
	r, err := s.Boot(check)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	return r
}

// wantSlots checks what a Slots reports.
func wantSlots(t *testing.T, s *Slots, active Slot, running, pending uint32, failed ...uint32) {
	t.Helper()
	if got := s.Active(); got != active {
		t.Errorf("Active: got %v, want %v", got, active)
	}
	if got := s.Running(); got != running {
		t.Errorf("Running: got %d, want %d", got, running)
	}
	if got := s.Pending(); got != pending {
		t.Errorf("Pending: got %d, want %d", got, pending)
	}
	if got := s.FailedVersions(); !slices.Equal(got, failed) {
		t.Errorf("FailedVersions: got %v, want %v", got, failed)
	}
}

func TestOpenSlotsFresh(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fw")
	s := openSlots(t, dir)
	wantSlots(t, s, SlotA, factoryVersion, 0)
	r := boot(t, s, func(*Manifest, []byte) error { t.Fatal("check ran with nothing pending"); return nil })
	if want := (Result{Outcome: OutcomeNoTrial, Active: SlotA, Running: factoryVersion}); r != want {
		t.Fatalf("Boot: got %+v, want %+v", r, want)
	}
	// The factory version is read once; the state file wins afterwards.
	id := testIdentity()
	id.FactoryVersion = 99
	s2, err := OpenSlots(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	wantSlots(t, s2, SlotA, factoryVersion, 0)
}

func TestOpenSlotsRefuses(t *testing.T) {
	good := t.TempDir()
	openSlots(t, good)
	writeState := func(content string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stateFileName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name string
		dir  string
		id   Identity
		want error // nil: any error
	}{
		{"other class", good, Identity{VendorID: testVendor, ClassID: otherUUID}, ErrWrongClass},
		{"other vendor", good, Identity{VendorID: otherUUID, ClassID: testClass}, ErrWrongClass},
		{"zero identity", t.TempDir(), Identity{}, nil},
		{"garbage state", writeState("not json"), testIdentity(), ErrState},
		{"unknown field", writeState(`{"format":1,"vendor_id":"` + testVendor.String() + `","class_id":"` + testClass.String() + `","active":1,"a":{},"b":{},"x":1}`), testIdentity(), ErrState},
		{"no active slot", writeState(`{"format":1,"vendor_id":"` + testVendor.String() + `","class_id":"` + testClass.String() + `","a":{},"b":{}}`), testIdentity(), ErrState},
		{"trial without manifest", writeState(`{"format":1,"vendor_id":"` + testVendor.String() + `","class_id":"` + testClass.String() + `","active":1,"a":{},"b":{"version":5},"trial":2}`), testIdentity(), ErrState},
		{"two states", writeState(`{"format":1,"vendor_id":"` + testVendor.String() + `","class_id":"` + testClass.String() + `","active":1,"a":{},"b":{}} {}`), testIdentity(), ErrState},
		{"oversized state", writeState(string(bytes.Repeat([]byte(" "), maxStateSize+1))), testIdentity(), ErrState},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenSlots(tc.dir, tc.id)
			if err == nil || s != nil {
				t.Fatalf("OpenSlots: got %v, %v, want an error", s, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("OpenSlots: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestInstallRefused(t *testing.T) {
	key := fixedKey(t, "A")
	rotatedOut := fixedKey(t, "rotated-out")
	img := testImage(3000, 42)
	good := testManifest(5, img)
	variant := func(f func(m *Manifest)) *Manifest {
		m := *good
		f(&m)
		return &m
	}
	badSig := mustSign(t, good, key)
	badSig[len(badSig)-3] ^= 0x10
	flipped := bytes.Clone(img)
	flipped[0] ^= 1

	tests := []struct {
		name   string
		signed []byte
		img    []byte
		want   error
	}{
		{"bad signature", badSig, img, ErrBadSignature},
		{"rotated-out key", mustSign(t, good, rotatedOut), img, ErrUntrustedKey},
		{"wrong digest", mustSign(t, variant(func(m *Manifest) { m.Digest[0] ^= 1 }), key), img, ErrDigest},
		{"image corrupted", mustSign(t, good, key), flipped, ErrDigest},
		{"wrong size", mustSign(t, variant(func(m *Manifest) { m.Size++ }), key), img, ErrSize},
		{"image truncated", mustSign(t, good, key), img[:len(img)-1], ErrSize},
		{"wrong class", mustSign(t, variant(func(m *Manifest) { m.ClassID = otherUUID }), key), img, ErrWrongClass},
		{"wrong vendor", mustSign(t, variant(func(m *Manifest) { m.VendorID = otherUUID }), key), img, ErrWrongClass},
		{"running version replayed", mustSign(t, variant(func(m *Manifest) { m.Version = factoryVersion }), key), img, ErrDowngrade},
		{"downgrade", mustSign(t, variant(func(m *Manifest) { m.Version = factoryVersion - 1 }), key), img, ErrDowngrade},
		{"malformed", []byte{0xd2, 0x84, 0x40}, img, ErrMalformed},
		{"too large", make([]byte, MaxManifestSize+1), img, ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Both a fresh device and one with a trial pending.
			for _, pending := range []bool{false, true} {
				dir := t.TempDir()
				s := openSlots(t, dir)
				var wantPending uint32
				if pending {
					install(t, s, key, 4)
					wantPending = 4
				}
				before := snapshot(t, dir)
				err := s.Install(tc.signed, key.Public(), tc.img)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Install (pending %v): got %v, want %v", pending, err, tc.want)
				}
				if !IsRejection(err) {
					t.Errorf("IsRejection(%v) = false, want true", err)
				}
				sameFiles(t, snapshot(t, dir), before)
				wantSlots(t, s, SlotA, factoryVersion, wantPending)
				wantSlots(t, openSlots(t, dir), SlotA, factoryVersion, wantPending)
			}
		})
	}
}

func TestInstallBootSwitchesSlots(t *testing.T) {
	in := installTrial(t, 4)
	wantSlots(t, in.s, SlotA, factoryVersion, 4)
	if got, err := os.ReadFile(filepath.Join(in.dir, "b.img")); err != nil || !bytes.Equal(got, in.img) {
		t.Fatalf("b.img: got %d bytes (%v), want the %d-byte image", len(got), err, len(in.img))
	}

	var checked *Manifest
	r := boot(t, in.s, func(m *Manifest, img []byte) error {
		checked = m
		if !bytes.Equal(img, in.img) {
			t.Errorf("check got %d bytes, want the installed image", len(img))
		}
		// The attempt is on disk before the check runs.
		if st := readState(t, in.dir); st.Attempts != 1 || st.Trial != SlotB {
			t.Errorf("state during check: attempts %d trial %v, want 1 and b", st.Attempts, st.Trial)
		}
		return nil
	})
	if want := (Result{Outcome: OutcomeConfirmed, Active: SlotB, Running: 4, Tried: 4}); r != want {
		t.Fatalf("Boot: got %+v, want %+v", r, want)
	}
	if checked == nil || *checked != *in.m {
		t.Fatalf("check saw manifest %+v, want %+v", checked, in.m)
	}
	wantSlots(t, in.s, SlotB, 4, 0)
	wantSlots(t, openSlots(t, in.dir), SlotB, 4, 0)
	if r := boot(t, in.s, nil); r.Outcome != OutcomeNoTrial || r.Running != 4 {
		t.Fatalf("second Boot: got %+v, want no trial, running 4", r)
	}

	// The next install goes to the other slot, and leaves b alone.
	bBefore, err := os.ReadFile(filepath.Join(in.dir, "b.img"))
	if err != nil {
		t.Fatal(err)
	}
	img5 := install(t, in.s, fixedKey(t, "A"), 5)
	if got, err := os.ReadFile(filepath.Join(in.dir, "a.img")); err != nil || !bytes.Equal(got, img5) {
		t.Fatalf("a.img: got %d bytes (%v), want the v5 image", len(got), err)
	}
	if got, _ := os.ReadFile(filepath.Join(in.dir, "b.img")); !bytes.Equal(got, bBefore) {
		t.Fatal("installing into a changed the active slot b")
	}
	wantSlots(t, in.s, SlotB, 4, 5)
	if r := boot(t, in.s, nil); r.Outcome != OutcomeConfirmed || r.Active != SlotA || r.Running != 5 {
		t.Fatalf("Boot v5: got %+v, want confirmed in a, running 5", r)
	}
	// Version 4 is now below the floor: refused as a downgrade.
	if err := in.s.Install(mustSign(t, in.m, in.key), in.trust, in.img); !errors.Is(err, ErrDowngrade) {
		t.Fatalf("reinstall v4 after v5: got %v, want %v", err, ErrDowngrade)
	}
}

func TestBootCheckFailsRollsBack(t *testing.T) {
	in := installTrial(t, 4)
	errUnhealthy := errors.New("no network after boot")
	r := boot(t, in.s, func(*Manifest, []byte) error { return errUnhealthy })
	if r.Outcome != OutcomeRolledBack || r.Active != SlotA || r.Running != factoryVersion || r.Tried != 4 {
		t.Fatalf("Boot: got %+v, want rolled back to a, running %d, tried 4", r, factoryVersion)
	}
	if !errors.Is(r.Reason, ErrBootCheck) || !errors.Is(r.Reason, errUnhealthy) {
		t.Fatalf("Reason: got %v, want %v wrapping %v", r.Reason, ErrBootCheck, errUnhealthy)
	}
	wantSlots(t, in.s, SlotA, factoryVersion, 0, 4)
	if !in.s.Failed(4) || in.s.Failed(5) {
		t.Fatalf("Failed(4), Failed(5): got %v, %v, want true, false", in.s.Failed(4), in.s.Failed(5))
	}
	reopened := openSlots(t, in.dir)
	wantSlots(t, reopened, SlotA, factoryVersion, 0, 4)

	// The failed version is not retried; a newer one is welcome, and its
	// success forgets the older failure.
	before := snapshot(t, in.dir)
	if err := reopened.Install(mustSign(t, in.m, in.key), in.trust, in.img); !errors.Is(err, ErrFailedVersion) {
		t.Fatalf("reinstall failed v4: got %v, want %v", err, ErrFailedVersion)
	}
	sameFiles(t, snapshot(t, in.dir), before)
	install(t, reopened, fixedKey(t, "A"), 6)
	if r := boot(t, reopened, nil); r.Outcome != OutcomeConfirmed || r.Active != SlotB || r.Running != 6 {
		t.Fatalf("Boot v6: got %+v, want confirmed in b, running 6", r)
	}
	wantSlots(t, reopened, SlotB, 6, 0)
}

func TestBootRereadsImage(t *testing.T) {
	tests := []struct {
		name   string
		damage func(path string) error
		want   error
	}{
		{"bit flip", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 4
			return os.WriteFile(p, b, 0o600)
		}, ErrDigest},
		{"truncated", func(p string) error { return os.Truncate(p, 100) }, ErrSize},
		{"grown", func(p string) error { return os.Truncate(p, 1<<20) }, ErrSize},
		{"removed", os.Remove, fs.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := installTrial(t, 4)
			if err := tc.damage(filepath.Join(in.dir, "b.img")); err != nil {
				t.Fatal(err)
			}
			r := boot(t, in.s, func(*Manifest, []byte) error { t.Error("check ran on a damaged image"); return nil })
			if r.Outcome != OutcomeRolledBack || r.Running != factoryVersion || !errors.Is(r.Reason, tc.want) {
				t.Fatalf("Boot: got %+v, want rolled back with %v", r, tc.want)
			}
			wantSlots(t, in.s, SlotA, factoryVersion, 0, 4)
		})
	}
}

func TestCrashDuringTrialBootRollsBack(t *testing.T) {
	in := installTrial(t, 4)
	// The disk as the device left it when power failed inside the check.
	var crashed string
	boot(t, in.s, func(*Manifest, []byte) error {
		crashed = copyDir(t, in.dir)
		return nil
	})

	crashedAgain := copyDir(t, crashed)
	s := openSlots(t, crashed)
	wantSlots(t, s, SlotA, factoryVersion, 0, 4)
	r := boot(t, s, nil)
	if r.Outcome != OutcomeRolledBack || r.Running != factoryVersion || r.Tried != 4 || !errors.Is(r.Reason, ErrBootInterrupted) {
		t.Fatalf("Boot after crash: got %+v, want rolled back from 4 with %v", r, ErrBootInterrupted)
	}
	if r := boot(t, s, nil); r.Outcome != OutcomeNoTrial {
		t.Fatalf("second Boot after crash: got %+v, want no trial", r)
	}
	wantSlots(t, openSlots(t, crashed), SlotA, factoryVersion, 0, 4)

	// An install between the reopen and the first Boot: Boot runs the new
	// trial instead of reporting the old rollback.
	s = openSlots(t, crashedAgain)
	install(t, s, in.key, 5)
	if r := boot(t, s, nil); r.Outcome != OutcomeConfirmed || r.Running != 5 || r.Tried != 5 {
		t.Fatalf("Boot after crash and install: got %+v, want confirmed 5", r)
	}
	wantSlots(t, s, SlotB, 5, 0) // v4 is below the floor now, forgotten
}

func TestCheckPanicRollsBackOnReopen(t *testing.T) {
	in := installTrial(t, 4)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("Boot did not propagate the check's panic")
			}
		}()
		in.s.Boot(func(*Manifest, []byte) error { panic("firmware hung") })
	}()
	// The same Slots still works (the lock was released) and rolls back.
	r := boot(t, in.s, nil)
	if r.Outcome != OutcomeRolledBack || !errors.Is(r.Reason, ErrBootInterrupted) {
		t.Fatalf("Boot after panic: got %+v, want rolled back with %v", r, ErrBootInterrupted)
	}
	wantSlots(t, openSlots(t, in.dir), SlotA, factoryVersion, 0, 4)
}

func TestCrashBetweenInstallSteps(t *testing.T) {
	// A crash after Install returned leaves the trial pending; it boots.
	in := installTrial(t, 4)
	s := openSlots(t, copyDir(t, in.dir))
	wantSlots(t, s, SlotA, factoryVersion, 4)
	if r := boot(t, s, nil); r.Outcome != OutcomeConfirmed || r.Running != 4 {
		t.Fatalf("Boot: got %+v, want confirmed 4", r)
	}

	// A crash while a second install overwrites the pending trial's slot:
	// the state forgot the old trial before the image was replaced.
	dir := t.TempDir()
	s = openSlots(t, dir)
	install(t, s, in.key, 4)
	next := s.st.clone() // what Install commits before writing the image
	*next.slot(SlotB) = slotState{}
	next.Trial = SlotNone
	if err := s.commit(next); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.img"), []byte("half of v5"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openSlots(t, dir)
	wantSlots(t, s, SlotA, factoryVersion, 0)
	if r := boot(t, s, nil); r.Outcome != OutcomeNoTrial {
		t.Fatalf("Boot: got %+v, want no trial", r)
	}
}

func TestInstallReplacesPendingTrial(t *testing.T) {
	in := installTrial(t, 5)
	img := install(t, in.s, fixedKey(t, "A"), 4) // lower than the pending 5, higher than running
	wantSlots(t, in.s, SlotA, factoryVersion, 4)
	r := boot(t, in.s, func(m *Manifest, got []byte) error {
		if m.Version != 4 || !bytes.Equal(got, img) {
			t.Errorf("check got v%d, want v4", m.Version)
		}
		return nil
	})
	if r.Outcome != OutcomeConfirmed || r.Running != 4 {
		t.Fatalf("Boot: got %+v, want confirmed 4", r)
	}
}

func TestFailedVersionsBounded(t *testing.T) {
	s := openSlots(t, t.TempDir())
	key := fixedKey(t, "A")
	fail := func(*Manifest, []byte) error { return errors.New("bad") }
	var want []uint32
	for i := range MaxFailedVersions + 3 {
		v := uint32(10 + 2*i)
		install(t, s, key, v)
		if r := boot(t, s, fail); r.Outcome != OutcomeRolledBack {
			t.Fatalf("Boot v%d: got %+v, want rolled back", v, r)
		}
		want = append(want, v)
	}
	want = want[len(want)-MaxFailedVersions:]
	wantSlots(t, s, SlotA, factoryVersion, 0, want...)
	wantSlots(t, openSlots(t, s.dir), SlotA, factoryVersion, 0, want...)
	// Confirming a version drops the failures at or below it.
	install(t, s, key, 31)
	boot(t, s, nil)
	wantSlots(t, s, SlotB, 31, 0, want[slices.Index(want, 32):]...)
}

func TestSlotsConcurrentUse(t *testing.T) {
	s := openSlots(t, t.TempDir())
	key := fixedKey(t, "A")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = s.Running()
				_ = s.Pending()
				_ = s.FailedVersions()
			}
		}()
	}
	for v := uint32(4); v < 8; v++ {
		install(t, s, key, v)
		boot(t, s, nil)
	}
	close(stop)
	wg.Wait()
	if got := s.Running(); got != 7 {
		t.Fatalf("Running: got %d, want 7", got)
	}
}

func readState(t *testing.T, dir string) state {
	t.Helper()
	s, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(s, &st); err != nil {
		t.Fatal(err)
	}
	return st
}
