// Package deps holds the tests that keep keyfleet's architecture what
// docs/architecture.md says it is: which binaries may link what, that the
// root server package only wires parts together, and that files are named
// by concern. It has no code; `make test` runs its tests.
//
// # Caveats
//
// The tests run `go list`, so they need the go tool on PATH, as `make
// test` has it.
package deps
