package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyfleet/keyfleet/adminapi"
	"github.com/keyfleet/keyfleet/device"
	"github.com/keyfleet/keyfleet/internal/fleettest"
	"github.com/keyfleet/keyfleet/server"
)

// screenshotEnv names where TestStatusPage saves its screenshot; unset,
// it goes to the system's temporary directory. Pointed at
// docs/status-page.png, it refreshes the documentation's screenshot.
const screenshotEnv = "KEYFLEET_STATUS_SCREENSHOT"

// chromium runs headless Chromium once with args and the URL, bounded by
// ctx, in a profile and HOME of its own, and returns what it printed. The
// browser runs in a process group of its own, killed whole when it ends
// or ctx does, so no renderer or zygote outlives the test.
func chromium(ctx context.Context, t *testing.T, url string, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("headless Chromium is needed (Debian package chromium): run scripts/deps.sh --with-chromium: %v", err)
	}
	home := t.TempDir()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--hide-scrollbars", "--user-data-dir=" + filepath.Join(home, "profile"), "--window-size=1280,1600"}, args...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Start()
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	err = cmd.Wait()
	// Whatever the browser left in its group goes with it.
	if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
		t.Errorf("kill chromium's process group: %v", kerr)
	}
	if err != nil {
		t.Fatalf("chromium %s: %v (ctx: %v)\n%s", strings.Join(args, " "), err, ctx.Err(), stderr.String())
	}
	return out.Bytes()
}

// TestStatusPage drives the status page in headless Chromium against a
// real fleetd: three devices running and rotated, one registered and never
// connected (so behind and away), a revoked one. The page's DOM as the
// browser built it must show the counts, the SLIs and the audit records,
// and the screenshot is saved (docs/status-page.png is one).
func TestStatusPage(t *testing.T) {
	f := fleettest.StartFleet(t, func(c *server.Config) { c.OpsAddr = "127.0.0.1:0"; c.Grace = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := "http://" + f.Server.OpsAddr()

	running := []string{"sensor-a", "sensor-b", "sensor-c"}
	var dirs []string
	for _, id := range running {
		dirs = append(dirs, f.AddDevice(t, id))
	}
	f.AddDevice(t, "sleeper") // never connects
	f.AddDevice(t, "stolen")
	runAgents(t, dirs, func(o *device.Options) { o.ReenrollAfter = time.Hour })
	eventually(t, 10*time.Second, "three devices connected", func() bool { return f.Broker().Connected() >= 4 })
	if _, err := f.Admin.Rotate(ctx, adminapi.RotateRequest{Devices: append(running, "sleeper")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the running devices on v2", func() bool {
		v := activeVersions(t, f.Admin)
		return v["sensor-a"] == 2 && v["sensor-b"] == 2 && v["sensor-c"] == 2
	})
	if _, err := f.Admin.Revoke(ctx, "stolen", "lost in transit"); err != nil {
		t.Fatal(err)
	}

	if code, body := httpGet(base + "/"); code != http.StatusOK || !strings.Contains(body, "keyfleet status") {
		t.Fatalf("GET / (redirected to /status): %d", code)
	}
	dom := string(chromium(ctx, t, base+"/status", "--dump-dom"))
	for _, want := range []string{
		`id="devices">5<`,      // the five registered
		`id="connected">3<`,    // the three agents, fleetd not counted
		`id="behind-count">1<`, // sleeper: desired v2, reported v1
		`id="away-count">1<`,   // sleeper, never seen
		"identity v1 → v2",     // what sleeper lags in
		`<td class="id">sleeper</td>`,
		`id="slis"`, "rotation success rate", "100.00%", // M1: three of three ended rotations activated
		`revocation latency</td><td class="value">p50`,                      // M5: the revocation observed
		`<td class="action">activated</td>`, `<td class="id">sensor-a</td>`, // audit records
		`<td class="action">revoked</td>`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page as Chromium built it lacks %q", want)
		}
	}
	if strings.Contains(dom, "<script") {
		t.Error("the page has a script")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	shot := os.Getenv(screenshotEnv)
	if shot == "" {
		shot = filepath.Join(os.TempDir(), "keyfleet-status-page.png")
	}
	if shot, err := filepath.Abs(shot); err == nil {
		tmp := filepath.Join(t.TempDir(), "status.png")
		chromium(ctx, t, base+"/status", "--screenshot="+tmp)
		png, err := os.ReadFile(tmp)
		if err != nil {
			t.Fatalf("chromium wrote no screenshot: %v", err)
		}
		if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
			t.Fatalf("screenshot is not a PNG of a page (%d bytes)", len(png))
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("status page screenshot: %s (%d bytes)", shot, len(png))
	} else {
		t.Fatal(err)
	}
}
