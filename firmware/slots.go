package firmware

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/keyfleet/keyfleet/internal/fsutil"
)

// Slot names one of the two firmware slots. The zero value means "none", so
// an unset trial or active slot is never read as slot a.
type Slot uint8

// Slots. The values are stored in the state file: never renumber.
const (
	SlotNone Slot = 0
	SlotA    Slot = 1
	SlotB    Slot = 2
)

// String returns the slot's name, which is also its image file's name.
func (s Slot) String() string {
	switch s {
	case SlotA:
		return "a"
	case SlotB:
		return "b"
	case SlotNone:
		return "none"
	default:
		return fmt.Sprintf("slot(%d)", uint8(s))
	}
}

func (s Slot) other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

const (
	// MaxBootAttempts is how many times a trial image may start booting
	// before it is rolled back. One: a second attempt would follow a crash
	// or hang in the first, which the new firmware may well have caused, and
	// the device must come back on the known-good image rather than loop.
	MaxBootAttempts = 1

	// MaxFailedVersions bounds the remembered failed versions; the oldest
	// are forgotten first. Versions at or below the running one are dropped
	// anyway, since ErrDowngrade refuses them.
	MaxFailedVersions = 16

	// maxStateSize caps the state file read at open: two manifests and a
	// few numbers, base64-encoded, come to well under 4 KiB.
	maxStateSize = 8 << 10

	stateFormat   = 1
	stateFileName = "state.json"
)

// Identity is what a device knows about itself before any update: which
// firmware it accepts, and which version it left the factory with.
type Identity struct {
	// VendorID and ClassID must equal a manifest's for Install to accept
	// it. Both are required.
	VendorID UUID
	ClassID  UUID
	// FactoryVersion is the version of the image the device shipped with,
	// taken to run in slot a until the first confirmed install. Zero means
	// any manifest version is an upgrade. It is read only when the slot
	// directory is new; afterwards the state file is authoritative.
	FactoryVersion uint32
}

// Outcome says what Boot did.
type Outcome uint8

// Boot outcomes. The zero value is invalid, so a Result that was never
// filled in is not mistaken for a success.
const (
	OutcomeUnknown    Outcome = 0
	OutcomeNoTrial    Outcome = 1 // nothing pending: the active slot runs as before
	OutcomeConfirmed  Outcome = 2 // the trial image booted and its slot is now active
	OutcomeRolledBack Outcome = 3 // the trial failed; the previous slot stays active
)

// String names the outcome for logs and reports.
func (o Outcome) String() string {
	switch o {
	case OutcomeNoTrial:
		return "no-trial"
	case OutcomeConfirmed:
		return "confirmed"
	case OutcomeRolledBack:
		return "rolled-back"
	default:
		return fmt.Sprintf("outcome(%d)", uint8(o))
	}
}

// Result reports a Boot, with what the agent needs to tell the server.
type Result struct {
	Outcome Outcome
	// Active is the slot active after Boot, and Running its version.
	Active  Slot
	Running uint32
	// Tried is the trial version that was booted or rolled back; 0 with
	// OutcomeNoTrial.
	Tried uint32
	// Reason says why a trial was rolled back: it wraps ErrSize, ErrDigest,
	// ErrBootCheck (and the check's error), ErrBootInterrupted, or the I/O
	// error that kept the image from being read. Nil otherwise.
	Reason error
}

// slotState is what the state file says about one slot.
type slotState struct {
	// Version is the firmware version in the slot; 0 for an empty slot.
	Version uint32 `json:"version,omitempty"`
	// Manifest is the signed manifest the image was installed under; nil
	// for the factory image and for an empty slot.
	Manifest []byte `json:"manifest,omitempty"`
}

// state is the content of the state file. Every change is a new state
// written atomically, so a crash leaves either the old or the new one.
type state struct {
	Format   int       `json:"format"`
	VendorID UUID      `json:"vendor_id"`
	ClassID  UUID      `json:"class_id"`
	Active   Slot      `json:"active"`
	A        slotState `json:"a"`
	B        slotState `json:"b"`
	// Trial is the slot installed but not yet confirmed; SlotNone if none.
	Trial Slot `json:"trial,omitempty"`
	// Attempts counts trial boots started; it is written before the boot
	// check runs, so a crash inside the check is seen on the next open.
	Attempts int `json:"attempts,omitempty"`
	// Failed lists versions that failed a trial boot, ascending.
	Failed []uint32 `json:"failed,omitempty"`
}

func (st *state) slot(s Slot) *slotState {
	if s == SlotB {
		return &st.B
	}
	return &st.A
}

func (st *state) running() uint32 { return st.slot(st.Active).Version }

func (st *state) clone() state {
	c := *st
	c.A.Manifest = bytes.Clone(st.A.Manifest)
	c.B.Manifest = bytes.Clone(st.B.Manifest)
	c.Failed = slices.Clone(st.Failed)
	return c
}

// addFailed records v and drops what can no longer matter.
func (st *state) addFailed(v uint32) {
	if !slices.Contains(st.Failed, v) {
		st.Failed = append(st.Failed, v)
		slices.Sort(st.Failed)
	}
	st.pruneFailed()
}

func (st *state) pruneFailed() {
	run := st.running()
	st.Failed = slices.DeleteFunc(st.Failed, func(v uint32) bool { return v <= run })
	if n := len(st.Failed); n > MaxFailedVersions {
		st.Failed = st.Failed[n-MaxFailedVersions:]
	}
	if len(st.Failed) == 0 {
		st.Failed = nil
	}
}

// check validates a state read from disk against itself and the identity.
func (st *state) check(id Identity) error {
	if st.Format != stateFormat {
		return fmt.Errorf("%w: format %d", ErrState, st.Format)
	}
	if st.VendorID != id.VendorID || st.ClassID != id.ClassID {
		return fmt.Errorf("%w: slots belong to vendor %v class %v", ErrWrongClass, st.VendorID, st.ClassID)
	}
	if st.Active != SlotA && st.Active != SlotB {
		return fmt.Errorf("%w: active slot %v", ErrState, st.Active)
	}
	for _, s := range []Slot{SlotA, SlotB} {
		ss := st.slot(s)
		if ss.Manifest == nil {
			continue
		}
		m, err := decodeSigned(ss.Manifest)
		if err != nil {
			return fmt.Errorf("%w: slot %v manifest: %v", ErrState, s, err)
		}
		if m.Version != ss.Version || m.VendorID != id.VendorID || m.ClassID != id.ClassID {
			return fmt.Errorf("%w: slot %v manifest does not match the slot", ErrState, s)
		}
	}
	switch {
	case st.Trial == SlotNone:
		if st.Attempts != 0 {
			return fmt.Errorf("%w: boot attempts without a trial", ErrState)
		}
	case st.Trial != st.Active.other():
		return fmt.Errorf("%w: trial slot %v", ErrState, st.Trial)
	case st.slot(st.Trial).Manifest == nil:
		return fmt.Errorf("%w: trial slot %v has no manifest", ErrState, st.Trial)
	case st.slot(st.Trial).Version <= st.running():
		return fmt.Errorf("%w: trial v%d not newer than running v%d", ErrState, st.slot(st.Trial).Version, st.running())
	}
	if st.Attempts < 0 || len(st.Failed) > MaxFailedVersions ||
		!slices.IsSorted(st.Failed) || len(slices.Compact(slices.Clone(st.Failed))) != len(st.Failed) {
		return fmt.Errorf("%w: counters", ErrState)
	}
	return nil
}

// Slots is the device side of A/B firmware installs: two image slots in a
// directory and a state file saying which one is active, which one holds a
// trial, and which versions failed. New images only ever go into the
// inactive slot, and become active only after a trial boot succeeded, so
// the device always has a known-good image to fall back to.
//
// A Slots is safe for concurrent use: every method takes one lock. Boot
// holds it while the boot check runs, so the check must not call back into
// the Slots. One directory must be opened by one Slots in one process at a
// time; nothing locks the directory against a second opener.
type Slots struct {
	mu        sync.Mutex
	dir       string
	st        state
	recovered *Result // a rollback done by OpenSlots, reported by the next Boot
}

// OpenSlots opens the slot directory dir, creating it (with slot a holding
// the factory image) if it does not exist. If the state shows a trial boot
// that started and never finished, because the device crashed or lost power
// during it, OpenSlots rolls it back at once, like a bootloader whose boot
// counter ran out; the next Boot reports that rollback.
//
// A directory written for another vendor or class fails with
// ErrWrongClass; a corrupt state file with ErrState.
func OpenSlots(dir string, id Identity) (*Slots, error) {
	if id.VendorID == (UUID{}) || id.ClassID == (UUID{}) {
		return nil, fmt.Errorf("firmware: open %s: identity needs vendor and class ids", dir)
	}
	s := &Slots{dir: dir}
	b, err := readCapped(s.statePath(), maxStateSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st := state{Format: stateFormat, VendorID: id.VendorID, ClassID: id.ClassID, Active: SlotA}
		st.A.Version = id.FactoryVersion
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("firmware: open %s: %w", dir, err)
		}
		if err := s.commit(st); err != nil {
			return nil, fmt.Errorf("firmware: open %s: %w", dir, err)
		}
	case err != nil:
		return nil, fmt.Errorf("firmware: open %s: %w", dir, err)
	default:
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s.st); err != nil {
			return nil, fmt.Errorf("firmware: open %s: %w: %v", dir, ErrState, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("firmware: open %s: %w: data after the state", dir, ErrState)
		}
		if err := s.st.check(id); err != nil {
			return nil, fmt.Errorf("firmware: open %s: %w", dir, err)
		}
	}
	if err := s.recoverInterrupted(); err != nil {
		return nil, fmt.Errorf("firmware: open %s: %w", dir, err)
	}
	return s, nil
}

// readCapped reads a file of at most limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s larger than %d bytes", ErrState, path, limit)
	}
	return b, nil
}

func (s *Slots) statePath() string { return filepath.Join(s.dir, stateFileName) }

func (s *Slots) imagePath(slot Slot) string { return filepath.Join(s.dir, slot.String()+".img") }

// commit writes next atomically and only then makes it the state in
// memory, so memory never runs ahead of the disk.
func (s *Slots) commit(next state) error {
	b, err := json.MarshalIndent(&next, "", "  ")
	if err != nil {
		return err
	}
	if err := fsutil.WriteAtomic(s.statePath(), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	s.st = next
	return nil
}

// recoverInterrupted rolls back a trial whose boot attempts ran out without a confirm.
func (s *Slots) recoverInterrupted() error {
	if s.st.Trial == SlotNone || s.st.Attempts < MaxBootAttempts {
		return nil
	}
	tried := s.st.slot(s.st.Trial).Version
	r, err := s.rollback(tried, fmt.Errorf("%w: v%d after %d attempt(s)", ErrBootInterrupted, tried, s.st.Attempts))
	if err != nil {
		return err
	}
	s.recovered = &r
	return nil
}

// rollback ends the trial, leaving the active slot as it is, and remembers
// the tried version as failed.
func (s *Slots) rollback(tried uint32, reason error) (Result, error) {
	next := s.st.clone()
	next.Trial = SlotNone
	next.Attempts = 0
	next.addFailed(tried)
	if err := s.commit(next); err != nil {
		return Result{}, fmt.Errorf("firmware: roll back v%d: %w", tried, err)
	}
	return Result{Outcome: OutcomeRolledBack, Active: s.st.Active, Running: s.st.running(), Tried: tried, Reason: reason}, nil
}

// Install verifies a signed manifest against the trusted firmware-signing
// key, checks that it is for this device and newer than the running
// firmware, checks the image against it, and writes both into the inactive
// slot as the trial for the next Boot. It never touches the active slot,
// and refused input (every error for which IsRejection is true) changes
// nothing on disk.
//
// A trial that is installed but not yet booted is replaced by the next
// Install, whatever its version: only the running version is the floor.
func (s *Slots) Install(signedManifest []byte, trusted crypto.PublicKey, image []byte) error {
	m, err := Verify(signedManifest, trusted)
	if err != nil {
		return fmt.Errorf("firmware: install: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.recoverInterrupted(); err != nil {
		return fmt.Errorf("firmware: install v%d: %w", m.Version, err)
	}
	if m.VendorID != s.st.VendorID || m.ClassID != s.st.ClassID {
		return fmt.Errorf("firmware: install v%d: %w: vendor %v class %v", m.Version, ErrWrongClass, m.VendorID, m.ClassID)
	}
	if run := s.st.running(); m.Version <= run {
		return fmt.Errorf("firmware: install v%d: %w: running v%d", m.Version, ErrDowngrade, run)
	}
	if slices.Contains(s.st.Failed, m.Version) {
		return fmt.Errorf("firmware: install v%d: %w", m.Version, ErrFailedVersion)
	}
	if err := m.CheckImage(image); err != nil {
		return fmt.Errorf("firmware: install: %w", err)
	}

	target := s.st.Active.other()
	// First forget what the target slot held, so that a crash while the
	// image is written never leaves a state naming a manifest that does not
	// describe the bytes in the slot.
	if old := s.st.slot(target); old.Version != 0 || old.Manifest != nil || s.st.Trial != SlotNone {
		next := s.st.clone()
		*next.slot(target) = slotState{}
		next.Trial, next.Attempts = SlotNone, 0
		if err := s.commit(next); err != nil {
			return fmt.Errorf("firmware: install v%d: %w", m.Version, err)
		}
	}
	if err := fsutil.WriteAtomic(s.imagePath(target), image, 0o600); err != nil {
		return fmt.Errorf("firmware: install v%d: write slot %v: %w", m.Version, target, err)
	}
	next := s.st.clone()
	*next.slot(target) = slotState{Version: m.Version, Manifest: bytes.Clone(signedManifest)}
	next.Trial, next.Attempts = target, 0
	if err := s.commit(next); err != nil {
		return fmt.Errorf("firmware: install v%d: %w", m.Version, err)
	}
	return nil
}

// Boot tries the pending trial image, if there is one. It counts the
// attempt on disk first, then reads the image back from its slot, checks
// its size and digest against the manifest again (flash can go bad between
// install and boot), and runs check, the caller's health test of the new
// firmware (nil: no test beyond the digest). If all pass, the trial slot
// becomes active; otherwise the previous slot stays active, the tried
// version is remembered as failed, and the Result says why.
//
// A rolled-back trial is an outcome, not an error: the error return is for
// state that could not be written, after which the trial is left for the
// next OpenSlots to roll back. If check panics, or the process dies while
// it runs, the counted attempt makes the next OpenSlots roll back too:
// the device never boots into an unconfirmed image twice.
func (s *Slots) Boot(check func(m *Manifest, image []byte) error) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.recoverInterrupted(); err != nil {
		return Result{}, err
	}
	trial := s.st.Trial
	if r := s.recovered; r != nil {
		s.recovered = nil
		// Report OpenSlots' rollback, unless an Install since then left
		// a new trial, which is what this Boot is for; the rolled-back
		// version stays in FailedVersions either way.
		if trial == SlotNone {
			return *r, nil
		}
	}
	if trial == SlotNone {
		return Result{Outcome: OutcomeNoTrial, Active: s.st.Active, Running: s.st.running()}, nil
	}
	tried := s.st.slot(trial).Version

	next := s.st.clone()
	next.Attempts++
	if err := s.commit(next); err != nil {
		return Result{}, fmt.Errorf("firmware: boot v%d: count attempt: %w", tried, err)
	}

	if reason := s.try(trial, check); reason != nil {
		return s.rollback(tried, reason)
	}

	next = s.st.clone()
	next.Active = trial
	next.Trial, next.Attempts = SlotNone, 0
	next.pruneFailed()
	if err := s.commit(next); err != nil {
		return Result{}, fmt.Errorf("firmware: boot v%d: confirm: %w", tried, err)
	}
	return Result{Outcome: OutcomeConfirmed, Active: s.st.Active, Running: s.st.running(), Tried: tried}, nil
}

// try reads the trial image back and runs the checks; a non-nil result is
// the reason to roll back.
func (s *Slots) try(trial Slot, check func(m *Manifest, image []byte) error) error {
	m, err := decodeSigned(s.st.slot(trial).Manifest)
	if err != nil {
		return err // check at open makes this unreachable, short of a bug
	}
	f, err := os.Open(s.imagePath(trial))
	if err != nil {
		return fmt.Errorf("read slot %v: %w", trial, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read slot %v: %w", trial, err)
	}
	// Compare sizes before reading, so a corrupt slot cannot make us
	// allocate more than the manifest promised.
	if uint64(fi.Size()) != m.Size {
		return fmt.Errorf("%w: slot %v holds %d bytes, manifest v%d says %d", ErrSize, trial, fi.Size(), m.Version, m.Size)
	}
	img := make([]byte, m.Size)
	if _, err := io.ReadFull(f, img); err != nil {
		return fmt.Errorf("read slot %v: %w", trial, err)
	}
	if err := m.CheckImage(img); err != nil {
		return err
	}
	if check != nil {
		if err := check(m, img); err != nil {
			return fmt.Errorf("%w: v%d: %w", ErrBootCheck, m.Version, err)
		}
	}
	return nil
}

// Running returns the version of the firmware in the active slot: what the
// agent reports to the server, and the floor for the next Install.
func (s *Slots) Running() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.running()
}

// Active returns the active slot, the one a bootloader would start.
func (s *Slots) Active() Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Active
}

// Pending returns the version installed as a trial and not yet booted, or
// 0, so the agent can report an update in progress.
func (s *Slots) Pending() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Trial == SlotNone {
		return 0
	}
	return s.st.slot(s.st.Trial).Version
}

// Failed reports whether version v failed a trial boot on this device, so
// the agent can refuse to download it again before Install would.
func (s *Slots) Failed(v uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.st.Failed, v)
}

// FailedVersions returns the versions newer than the running one that
// failed a trial boot, ascending (at most MaxFailedVersions of them), for
// the agent's report to the server.
func (s *Slots) FailedVersions() []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.st.Failed)
}
