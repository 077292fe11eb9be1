package procstat

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// TestFigures: on Linux the process collector knows the resident memory,
// and the Go collector the goroutines, started ones included.
func TestFigures(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	for i := 0; i < 3; i++ {
		go func() { <-stop }()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rss, g := Read(reg)
	if g < 4 {
		t.Errorf("goroutines %d, want at least 4", g)
	}
	if runtime.GOOS == "linux" && (rss == 0 || RSS() == 0) {
		t.Errorf("resident memory: Read %d, RSS %d, want both above 0", rss, RSS())
	}
}
