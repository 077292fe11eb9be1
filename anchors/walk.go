package anchors

import (
	"bytes"
	"fmt"
	"slices"
)

// DefaultMaxSteps is how many sets newer than its current one a device
// walks in one go unless told otherwise. Anchor rotations are rare (a few
// a year), so 16 covers years offline; a device further behind than that
// is better re-provisioned than made to verify an unbounded chain.
const DefaultMaxSteps = 16

// WalkOptions tunes Walk. The zero value is ready to use.
type WalkOptions struct {
	// MaxSteps bounds the sets newer than the current one that a chain may
	// carry, and so the signature verifications one chain can cost.
	// Zero or negative means DefaultMaxSteps.
	MaxSteps int
}

func (o WalkOptions) maxSteps() int {
	if o.MaxSteps <= 0 {
		return DefaultMaxSteps
	}
	return o.MaxSteps
}

// Walk takes a device from its current set to the newest set of chain,
// one version at a time, and returns that set. It is pure: on any error it
// returns nil and the caller keeps current, never a half-walked state.
//
// chain holds encoded signed sets, oldest first (DecodeChain's result or
// protocol.Anchors.Sets). The rules, in the order they are checked:
//
//  1. Every entry parses (ErrMalformed). No two entries share a version:
//     identical copies are ErrMalformed, different sets ErrFork. The entry
//     at current's version, if any, is byte-identical to current
//     (ErrFork). Entries older than current are otherwise ignored, so a
//     chain may carry history.
//  2. At most opts.MaxSteps entries are newer than current (ErrTooLong),
//     counted while parsing, before any signature is verified.
//  3. No newer entry: if one entry equals current, the device is up to
//     date and Walk returns current itself (the same pointer) and nil;
//     otherwise the chain is all older history (ErrRollback).
//  4. The newer entries run current.Version+1, +2, ... in chain order
//     (ErrSkip).
//  5. Each step N -> N+1 carries valid signatures by set N's root and
//     update keys and nothing else: a signature whose kid is revoked (by
//     current or a set walked so far) is ErrRevokedKey before anything
//     else about it is checked; then ErrUnknownKey, ErrBadSignature,
//     ErrMissingSignature. Then set N+1's Prev is set N's Hash (ErrFork)
//     and its Revoked keeps every id revoked so far (ErrRevocationDropped).
//
// Set N+1's own revocations apply from set N+2 on: the usual reason to
// issue set N+1 is to replace and revoke set N's update key, and that key
// still signs the step that revokes it.
//
// current must come from TrustOnInstall or an earlier Walk; Walk does not
// re-verify it.
func Walk(current *Signed, chain [][]byte, opts WalkOptions) (*Signed, error) {
	if current == nil || current.Set == nil {
		return nil, fmt.Errorf("anchors: walk: %w", ErrNoCurrent)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("anchors: walk from v%d: %w: empty chain", current.Version, ErrMalformed)
	}
	cur, limit := current.Version, opts.maxSteps()
	var (
		newer      []*Signed
		byVersion  = make(map[uint32][]byte, len(chain))
		newest     uint32
		sawCurrent bool
	)
	for i, b := range chain {
		s, err := parse(b)
		if err != nil {
			return nil, fmt.Errorf("anchors: walk from v%d: entry %d: %w", cur, i, err)
		}
		v := s.Version
		if other, dup := byVersion[v]; dup {
			if bytes.Equal(other, s.Raw) {
				return nil, fmt.Errorf("anchors: walk from v%d: entry %d: %w: v%d appears twice", cur, i, ErrMalformed, v)
			}
			return nil, fmt.Errorf("anchors: walk from v%d: entry %d: %w: two different sets claim v%d", cur, i, ErrFork, v)
		}
		byVersion[v] = s.Raw
		newest = max(newest, v)
		switch {
		case v < cur:
			// History the device walked past; ignored.
		case v == cur:
			if !bytes.Equal(s.Raw, current.Raw) {
				return nil, fmt.Errorf("anchors: walk from v%d: entry %d: %w: the chain's v%d is not the current set", cur, i, ErrFork, v)
			}
			sawCurrent = true
		default:
			newer = append(newer, s)
			if len(newer) > limit {
				return nil, fmt.Errorf("anchors: walk from v%d: %w: more than %d newer sets", cur, ErrTooLong, limit)
			}
		}
	}
	if len(newer) == 0 {
		if sawCurrent {
			return current, nil
		}
		return nil, fmt.Errorf("anchors: walk from v%d: %w: newest set in the chain is v%d", cur, ErrRollback, newest)
	}
	for i, s := range newer {
		if want := cur + 1 + uint32(i); s.Version != want {
			return nil, fmt.Errorf("anchors: walk from v%d: %w: got v%d, want v%d", cur, ErrSkip, s.Version, want)
		}
	}

	known := mergeIDs(nil, current.Revoked) // ids revoked so far, sorted
	prev := current
	for _, next := range newer {
		if err := step(prev, next, known); err != nil {
			return nil, fmt.Errorf("anchors: walk v%d -> v%d: %w", prev.Version, next.Version, err)
		}
		known = mergeIDs(known, next.Revoked)
		prev = next
	}
	return prev, nil
}

// step checks one link of the chain: next is signed by prev's keys and no
// revoked key, extends prev and keeps every id in known (sorted), the
// revocations learned so far.
func step(prev, next *Signed, known [][]byte) error {
	isRevoked := func(kid []byte) bool {
		_, found := slices.BinarySearchFunc(known, kid, bytes.Compare)
		return found
	}
	if err := verifyBy(prev.Set, next, isRevoked); err != nil {
		return err
	}
	if h := prev.Hash(); !bytes.Equal(next.Prev, h[:]) {
		return fmt.Errorf("%w: prev %x, want %x (hash of v%d)", ErrFork, next.Prev, h, prev.Version)
	}
	for _, id := range known {
		if !next.IsRevoked(id) {
			return fmt.Errorf("%w: %x", ErrRevocationDropped, id)
		}
	}
	return nil
}
