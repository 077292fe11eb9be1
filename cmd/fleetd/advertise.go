package main

import (
	"fmt"
	"net"
	"strings"
)

// checkAdvertise checks --advertise-mqtt: empty, or host:port addresses
// separated by commas (a cluster's nodes, which the agent fails over
// between), so that a typo is refused at start rather than written into
// every device provisioned afterwards.
func checkAdvertise(s string) error {
	if s == "" {
		return nil
	}
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("broker address %q: want HOST:PORT, several separated by commas", a)
		}
	}
	return nil
}
