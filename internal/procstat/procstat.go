// Package procstat reports what a process costs — resident memory and
// goroutines — for fleetd's status and the simulator's report, and raises
// the open-file limit. The figures come from client_golang's process and
// Go collectors, the same ones fleetd's /metrics serves, not from reading
// /proc by hand.
package procstat

import (
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Read returns the resident memory (process_resident_memory_bytes) and
// goroutines (go_goroutines) that g gathers; 0 for a figure it lacks (the
// process collector has none on some platforms).
func Read(g prometheus.Gatherer) (rssBytes uint64, goroutines int) {
	mfs, _ := g.Gather() // what could be gathered comes back with the error
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		switch mf.GetName() {
		case "process_resident_memory_bytes":
			rssBytes = uint64(mf.GetMetric()[0].GetGauge().GetValue())
		case "go_goroutines":
			goroutines = int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	return rssBytes, goroutines
}

// RSS returns the process's resident set size in bytes; 0 where the
// platform does not say.
func RSS() uint64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rss, _ := Read(reg)
	return rss
}

// RaiseFileLimit lifts the soft open-file limit to the hard one (each MQTT
// connection is a descriptor) and returns the limit now in force.
func RaiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}
