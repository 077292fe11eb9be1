package store

import "errors"

// ErrClustered: what was asked changes state that each fleetd process
// keeps in its own data directory (the anchor chain, firmware releases),
// so it is refused while several processes share the store, which would
// otherwise diverge.
var ErrClustered = errors.New("store: not available while several fleetd processes share the store")
