// Package pgtest starts a real PostgreSQL for tests: Debian's server
// binaries, a cluster made by initdb in a temporary directory, owned by and
// run as a non-root user, listening on a free loopback port. Nothing here is
// a fake: the store's durability, locking and retries are tested against the
// engine they run on in production.
//
// # Basics
//
// One server serves a whole test binary; each test takes a schema of its
// own (NewSchema: milliseconds) or a database (NewDatabase: a few hundred
// milliseconds), where a cluster costs seconds:
//
//	var pg *pgtest.Server
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }
//
//	func TestX(t *testing.T) { dsn := pg.NewSchema(t); ... }
//
// Start and Stop serve tests that want a server of their own (a restart, a
// crash). fsync and synchronous_commit stay on, as in production; only
// shared_buffers and the connection count are small.
//
// # Caveats
//
// Tests run as root here, and PostgreSQL refuses to: the cluster belongs to
// the system user "postgres" (from the package), else "nobody", and the
// server runs under that uid. The server is a child of the test binary and
// is killed with it (Pdeathsig); a cluster left behind anyway (the machine
// lost power mid-run) is stopped and removed by the next Start. Missing
// binaries are an error naming scripts/deps.sh --with-postgres, never a skip.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDirs are where Debian installs the server binaries, newest wanted
// first; PGTEST_BINDIR overrides them.
var BinDirs = []string{"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"}

// ErrNotInstalled: no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin: " +
	"run scripts/deps.sh --with-postgres (make test does)")

// dirPrefix names the clusters pgtest makes, so that a later Start can
// find the ones a killed test binary left.
const dirPrefix = "keyfleet-pg-"

// Server is a running PostgreSQL cluster of a test binary.
type Server struct {
	dir  string // owned by the server's user; data/ and the socket are in it
	bin  string
	cred *syscall.Credential
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when the server process has exited
	seq  atomic.Uint64 // database names
}

// Main starts one server, stores it in *srv, runs the tests and stops it.
// Use it from TestMain: os.Exit(pgtest.Main(m, &pg)).
func Main(m *testing.M, srv **Server) int {
	s, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*srv = s
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// binDir finds the server binaries.
func binDir() (string, error) {
	dirs := BinDirs
	if d := os.Getenv("PGTEST_BINDIR"); d != "" {
		dirs = []string{d}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d, nil
			}
		}
	}
	return "", ErrNotInstalled
}

// owner is who runs the server: this process's user unless that is root.
func owner() (*syscall.Credential, error) {
	if os.Getuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 == nil && err2 == nil {
			return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
		}
	}
	return nil, errors.New("pgtest: running as root and found neither a postgres nor a nobody user to run PostgreSQL as")
}

// command runs bin as the server's user, killed if the test binary dies,
// in a process group of its own: the server's backends join it, so that
// Kill ends all of them at once, as a crash of the machine would.
func command(cred *syscall.Credential, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	return cmd
}

// Start makes a fresh cluster and starts its server.
func Start() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, err := owner()
	if err != nil {
		return nil, err
	}
	reapLeftovers(bin)
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fail(fmt.Errorf("pgtest: %w", err))
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(fmt.Errorf("pgtest: hand %s to the server's user: %w", dir, err))
		}
	}
	data := filepath.Join(dir, "data")
	// --no-sync makes initdb skip flushing the files it writes: a crash of
	// the machine during initdb loses a test cluster. The server's own
	// fsync stays on.
	out, err := command(cred, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("pgtest: initdb: %w: %s", err, out))
	}
	for attempt := 0; ; attempt++ {
		s, err := launch(bin, cred, dir)
		if err == nil || attempt == 2 {
			if err != nil {
				return fail(err)
			}
			return s, nil
		}
		// Most likely another process took the port between our probe and
		// the server's bind: try another.
	}
}

// launch starts the server on a free port and waits until it answers.
func launch(bin string, cred *syscall.Credential, dir string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return launchOn(bin, cred, dir, port)
}

// launchOn starts the server on port and waits until it answers.
func launchOn(bin string, cred *syscall.Credential, dir string, port int) (*Server, error) {
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close()
	cmd := command(cred, filepath.Join(bin, "postgres"), "-D", filepath.Join(dir, "data"),
		"-c", "listen_addresses=127.0.0.1", "-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+dir,
		"-c", "shared_buffers=16MB", "-c", "max_connections=100",
		"-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on")
	cmd.Stdout, cmd.Stderr = logf, logf
	s := &Server{dir: dir, bin: bin, cred: cred, port: port, cmd: cmd, done: make(chan struct{})}
	// Pdeathsig fires when the thread that started the child ends, not the
	// process: start it from a thread locked to a goroutine that lives as
	// long as the server, or a Go runtime retiring that thread would kill
	// PostgreSQL mid-test.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			return s, nil
		}
		cancel()
		select {
		case <-s.done:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("pgtest: postgres exited at start: %s", lastLines(string(b), 10))
		default:
		}
		if time.Now().After(deadline) {
			s.kill()
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("pgtest: postgres did not answer within 30 s: %w; log: %s", err, lastLines(string(b), 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DSN is the connection string of database db, as the superuser.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// CreateDatabase makes an empty database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d", s.seq.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return s.DSN(name), nil
}

// NewDatabase is CreateDatabase for a test: a fresh database and its DSN.
// The database stays until the server stops; nothing else uses it.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	dsn, err := s.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// sharedDB holds the schemas NewSchema makes.
const sharedDB = "postgres"

// CreateSchema makes an empty schema and returns a DSN whose search_path
// is it: to the store an empty database, in a few milliseconds where
// CREATE DATABASE takes hundreds (it copies and syncs a template).
func (s *Server) CreateSchema(ctx context.Context) (string, error) {
	name := fmt.Sprintf("s%d", s.seq.Add(1))
	conn, err := pgx.Connect(ctx, s.DSN(sharedDB))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		return "", fmt.Errorf("pgtest: create schema %s: %w", name, err)
	}
	return s.DSN(sharedDB) + "&search_path=" + name, nil
}

// NewSchema is CreateSchema for a test: what most tests want, an empty
// namespace of their own.
func (s *Server) NewSchema(t testing.TB) string {
	t.Helper()
	dsn, err := s.CreateSchema(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// Stop shuts the server down (fast shutdown: open sessions are ended)
// and removes the cluster.
func (s *Server) Stop() error {
	var err error
	select {
	case <-s.done: // killed, not restarted
		return os.RemoveAll(s.dir)
	default:
	}
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			err = errors.New("pgtest: postgres did not stop within 30 s; killed")
			s.kill()
		}
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// Kill ends the server and every backend at once with SIGKILL, as a crash
// would; the cluster stays for Restart (Stop removes it).
func (s *Server) Kill() { s.kill() }

func (s *Server) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	// The backends are gone with the group; wait until the kernel has
	// reaped them, or a restart finds their shared memory still attached.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(-s.cmd.Process.Pid, 0) != nil {
			return
		}
	}
}

// Restart starts the server again on its cluster after Kill (crash
// recovery replays the WAL) or Stop's shutdown, on the same port.
func (s *Server) Restart() error {
	select {
	case <-s.done:
	default:
		return errors.New("pgtest: restart: the server is still running")
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var n *Server
		if n, err = launchOn(s.bin, s.cred, s.dir, s.port); err == nil {
			s.cmd, s.done = n.cmd, n.done
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// reapLeftovers stops and removes the clusters of test binaries that are
// gone: their servers, if still running, by the pid in postmaster.pid.
func reapLeftovers(bin string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	sort.Strings(dirs)
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue // not ours, or still being made
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || alive(pid) {
			continue
		}
		if pm, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid")); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pm), "\n", 2)[0])); err == nil && alive(p) &&
				isPostgres(p, bin) {
				_ = syscall.Kill(p, syscall.SIGQUIT)
			}
		}
		_ = os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// isPostgres reports whether pid runs this installation's postgres, so that
// a recycled pid is never signalled.
func isPostgres(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == filepath.Join(bin, "postgres")
}
