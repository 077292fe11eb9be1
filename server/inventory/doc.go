// Package inventory is what an operator knows about a device besides its
// keys: labels (key=value, in Kubernetes label syntax) and a model or
// class, and the selectors that pick devices by them. `fleetctl devices
// --selector` lists by it today; campaigns and policies select their
// devices with the same Selector, so that a selector means the same thing
// everywhere.
//
// # Basics
//
// ParseSelector reads the Kubernetes label-selector grammar
// (`model=x,site in (a,b),!beta`, parsed by k8s.io/apimachinery's labels
// package, the grammar's reference implementation); Selector.Matches tests
// a store.Device, whose model counts as the label-like key "model".
// Change is one edit of a device's labels, kubectl style (k=v sets, k-
// removes); Labeler applies it to the store, durably and audited.
//
// # Caveats
//
// The key "model" is never stored among the labels: setting or removing it
// sets or clears the device's model. Label keys and values follow
// Kubernetes' rules (ValidateLabel), so that every stored label can be
// selected.
package inventory
