// Package statuspage renders fleetd's status page: one server-rendered
// HTML page on the ops listener for the person on call, who wants the
// state of the fleet at a glance without a Prometheus server, a Grafana
// or an operator certificate at hand.
//
// # Basics
//
// The page shows the fleet summary (devices, by state, connected, the
// current anchors and firmware), the SLIs as figures since fleetd's start
// (package metrics computes them from its own registry), the devices
// behind (a desired version the device has not reported yet) or away (not
// connected and not seen for AwayAfter), and the last audit records. It
// reads its parts through the small interfaces of Sources; a campaigns
// section appears once Sources.Campaigns is set.
//
// The templates and the style sheet are embedded (html/template escapes
// every value: labels, models and actors are operator text). The page
// refreshes itself with a meta refresh; it has no script.
//
// # Caveats
//
// The page is read-only and carries no key material, PIN, token or
// certificate, but it names devices: the ops listener has no
// authentication, so bind it to loopback or a management network.
//
// Listing the devices behind and away reads every device record; the
// page reuses one reading for Options.ScanEvery (10 s by default), so that
// open browsers refreshing do not each read the store. The lists are
// bounded (Options.MaxDevices, 50 by default), the counts are not.
package statuspage
