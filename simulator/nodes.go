package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyfleet/keyfleet/adminapi/client"
	"github.com/keyfleet/keyfleet/internal/softhsm"
	"github.com/keyfleet/keyfleet/server/datadir"
)

// NodesReport is what a run over several fleetd nodes measured (--nodes,
// or --server with several addresses). JSON field names are an interface:
// add fields, never rename.
type NodesReport struct {
	Nodes []NodeReport `json:"nodes"`
	// KilledNode is the node SIGKILLed mid-run (--kill-node, 1-based; 0:
	// none) and KilledAtDone how many rotations of the round had completed.
	KilledNode   int `json:"killed_node,omitempty"`
	KilledAtDone int `json:"killed_at_done,omitempty"`
	// The failover gap: from the kill to each of the killed node's devices
	// connected to another node, over the devices that lost their session.
	FailoverDevices  int     `json:"failover_devices"`
	FailoverGapP50Ms float64 `json:"failover_gap_p50_ms"`
	FailoverGapMaxMs float64 `json:"failover_gap_max_ms"`
	// NotFailedOver: devices that lost their session to the kill and were
	// connected nowhere 30 s after the rotations ended.
	NotFailedOver int `json:"not_failed_over"`
	// StoreStatements the nodes sent to PostgreSQL during the rotations
	// (keyfleet_store_statements_total, summed over the nodes, the killed
	// node's up to its kill), and per completed rotation; absent when the
	// nodes' ops listeners are unknown (--server without --server-ops).
	StoreStatements       uint64  `json:"store_statements,omitempty"`
	StatementsPerRotation float64 `json:"statements_per_rotation,omitempty"`
	// SimulatorCPUS is the CPU time of the simulator (agents and all)
	// during the rotations.
	SimulatorCPUS float64 `json:"simulator_cpu_s"`
	// StoreCPUS is PostgreSQL's CPU time (postmaster and backends) during
	// the rotations, when its postmaster runs on this machine (--store-pid).
	StoreCPUS float64 `json:"store_cpu_s,omitempty"`
}

// NodeReport is one node of a several-node run.
type NodeReport struct {
	Admin string `json:"admin"`
	MQTT  string `json:"mqtt,omitempty"`
	// Device sessions on its broker when the rotations began and at the
	// end (-1: the node was down).
	SessionsStart int `json:"sessions_start"`
	SessionsEnd   int `json:"sessions_end"`
	// SessionsAtKill: the killed node's sessions just before its kill.
	SessionsAtKill int `json:"sessions_at_kill,omitempty"`
	// CPUS is the node's CPU time during the rotations (spawned nodes).
	CPUS   float64 `json:"cpu_s,omitempty"`
	Killed bool    `json:"killed,omitempty"`
}

// adminSet is the admin APIs of several nodes: requests go to the current
// one, and to the next that answers when it does not.
type adminSet struct {
	mu    sync.Mutex
	addrs []string
	ops   []string // each node's ops listener (/metrics); nil: unknown
	cs    []*client.Client
	cur   int
}

func (a *adminSet) current() *client.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cs[a.cur]
}

// failover moves past bad to the first node that answers, and returns
// its client; nil when none does.
func (a *adminSet) failover(ctx context.Context, bad *client.Client) *client.Client {
	a.mu.Lock()
	start := a.cur
	if a.cs[a.cur] == bad {
		start = (a.cur + 1) % len(a.cs)
	}
	a.mu.Unlock()
	for i := range a.cs {
		k := (start + i) % len(a.cs)
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := a.cs[k].Status(sctx)
		cancel()
		if err == nil {
			a.mu.Lock()
			a.cur = k
			a.mu.Unlock()
			return a.cs[k]
		}
	}
	return nil
}

// splitAddrs splits a comma-separated address list, dropping blanks.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// connectServers connects to the running nodes of cfg.Server (several
// addresses): provisioning and requests go through the first that
// answers, failing over to the next.
func connectServers(ctx context.Context, cfg *Config, addrs []string) (*adminSet, error) {
	a := &adminSet{addrs: addrs}
	if ops := splitAddrs(cfg.ServerOps); len(ops) > 0 {
		if len(ops) != len(addrs) {
			return nil, fmt.Errorf("simulator: --server-ops names %d listeners for %d --server addresses: want one per node, in the same order", len(ops), len(addrs))
		}
		a.ops = ops
	}
	tc, err := client.LoadCredential(cfg.Credential)
	if err != nil {
		return nil, err
	}
	for _, addr := range addrs {
		a.cs = append(a.cs, client.New(addr, tc))
	}
	if a.failover(ctx, nil) == nil {
		return nil, fmt.Errorf("simulator: none of the admin APIs %s answers", strings.Join(addrs, ", "))
	}
	return a, nil
}

// spawnNodes initialises one deployment on the PostgreSQL store dsn
// (fleetd init once, keys in one SoftHSM2 token), copies its data
// directory for each of n nodes, and starts them, each with its own
// broker, admin and ops listeners, all advertising every node's broker to
// devices. SOFTHSM2_CONF must already point at dir's token directory.
func spawnNodes(ctx context.Context, bin, dir, dsn string, n int, extra []string) ([]*spawned, *adminSet, error) {
	env := append(os.Environ(), fmt.Sprintf("KEYFLEET_HSM_PIN=sim-%d", os.Getpid()), "KEYFLEET_STORE="+dsn)
	token := fmt.Sprintf("fleetsim-%d", os.Getpid())
	src := filepath.Join(dir, "fleetd")
	init := exec.CommandContext(ctx, bin, "init", "--data", src, "--token", token, "--create-token", "--log-level", "warn")
	init.Env = env
	if out, err := init.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("simulator: fleetd init on the store: %v\n%s", err, out)
	}
	mqtt := make([]string, n)
	for i := range mqtt {
		var err error
		if mqtt[i], err = freeAddr(); err != nil {
			return nil, nil, err
		}
	}
	tc, err := client.LoadCredential(datadir.Paths{Dir: src}.AdminDir())
	if err != nil {
		return nil, nil, err
	}
	var nodes []*spawned
	stopAll := func() {
		for _, s := range nodes {
			s.stop()
		}
	}
	set := &adminSet{}
	for i := range n {
		ndir := filepath.Join(dir, fmt.Sprintf("node%d", i+1))
		s := &spawned{bin: bin, data: filepath.Join(ndir, "fleetd"), env: env}
		if err := os.CopyFS(s.data, os.DirFS(src)); err != nil {
			stopAll()
			return nil, nil, fmt.Errorf("simulator: copy the data directory for node %d: %w", i+1, err)
		}
		adm, err := freeAddr()
		if err != nil {
			stopAll()
			return nil, nil, err
		}
		if s.opsAddr, err = freeAddr(); err != nil {
			stopAll()
			return nil, nil, err
		}
		s.args = append([]string{"run", "--data", s.data, "--token", token, "--mqtt-listen", mqtt[i], "--admin-listen", adm,
			"--ops-listen", s.opsAddr, "--node-id", fmt.Sprintf("node%d", i+1), "--advertise-mqtt", strings.Join(mqtt, ","),
			"--log-level", "warn"}, extra...)
		if s.log, err = os.Create(filepath.Join(ndir, "fleetd.log")); err != nil {
			stopAll()
			return nil, nil, err
		}
		s.client = client.New(adm, tc)
		s.mqtt = mqtt[i]
		if err := s.start(ctx); err != nil {
			s.log.Close()
			stopAll()
			return nil, nil, fmt.Errorf("simulator: node %d: %w", i+1, err)
		}
		nodes = append(nodes, s)
		set.addrs, set.cs, set.ops = append(set.addrs, adm), append(set.cs, s.client), append(set.ops, s.opsAddr)
	}
	return nodes, set, nil
}

// procStat is what /proc/PID/stat says of a process: its parent, and its
// CPU time and that of its children it waited for, in seconds.
type procStat struct {
	ppid         int
	self, reaped float64
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name may hold spaces: the fields after it are counted
	// from its closing parenthesis (state, ppid, ..., utime and stime at
	// 14 and 15, cutime and cstime at 16 and 17 of proc(5)).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("simulator: unreadable /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return procStat{}, errors.New("simulator: short /proc stat")
	}
	var v [5]uint64
	for k, idx := range []int{1, 11, 12, 13, 14} {
		if v[k], err = strconv.ParseUint(f[idx], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("simulator: /proc stat: %w", err)
		}
	}
	return procStat{ppid: int(v[0]), self: float64(v[1]+v[2]) / clockTicks, reaped: float64(v[3]+v[4]) / clockTicks}, nil
}

// cpuSeconds is the CPU time (user and system) of process pid so far.
func cpuSeconds(pid int) (float64, error) {
	st, err := readProcStat(pid)
	return st.self, err
}

// treeCPUSeconds is the CPU time of process pid, of its live children and
// of those it reaped: a PostgreSQL server's postmaster with its backends.
func treeCPUSeconds(pid int) (float64, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return 0, err
	}
	total := st.self + st.reaped
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cs, err := readProcStat(child); err == nil && cs.ppid == pid {
			total += cs.self
		}
	}
	return total, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// selfCPUSeconds is this process's CPU time so far.
func selfCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// pid is the running fleetd's process id; 0 when it is not running.
func (s *spawned) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	select {
	case <-s.done:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

// kill SIGKILLs the node for good (no restart) and waits for its exit.
func (s *spawned) kill() error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("simulator: SIGKILL node: %w", err)
	}
	<-done
	return nil
}

// nodeWatch is what a several-node run records as it goes: each node's
// counters when the rotations began, the kill, and the devices that lost
// their session to it.
type nodeWatch struct {
	set   *adminSet
	nodes []*spawned // nil with --server

	mu         sync.Mutex
	rep        NodesReport
	stmts0     []float64 // each node's statement count at the start
	stmtsLast  []float64 // a killed node's count just before its kill
	cpu0, cpu1 []float64
	killedAt   time.Time
	lost       map[string]bool // devices disconnected after the kill
	gaps       []time.Duration
	simCPU0    float64
	storePID   int
	storeCPU0  float64
}

func newNodeWatch(set *adminSet, nodes []*spawned, storePID int) *nodeWatch {
	n := len(set.cs)
	w := &nodeWatch{set: set, nodes: nodes, lost: map[string]bool{}, storePID: storePID,
		stmts0: make([]float64, n), stmtsLast: make([]float64, n), cpu0: make([]float64, n), cpu1: make([]float64, n)}
	w.rep.Nodes = make([]NodeReport, n)
	for i := range w.rep.Nodes {
		w.rep.Nodes[i].Admin = set.addrs[i]
		if nodes != nil {
			w.rep.Nodes[i].MQTT = nodes[i].mqtt
		}
	}
	return w
}

// sessions returns the device sessions on node i's broker; -1 when it
// does not answer.
func (w *nodeWatch) sessions(ctx context.Context, i int) int {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := w.set.cs[i].Status(sctx)
	if err != nil {
		return -1
	}
	return st.ConnectedClient - 1 // the node's own session
}

// statements reads node i's keyfleet_store_statements_total; 0 when its
// ops listener is unknown (--server without --server-ops).
func (w *nodeWatch) statements(ctx context.Context, i int) (float64, error) {
	if w.set.ops == nil {
		return 0, nil
	}
	return scrapeCounter(ctx, w.set.ops[i], "keyfleet_store_statements_total")
}

// begin records every node's counters as the rotations begin.
func (w *nodeWatch) begin(ctx context.Context) error {
	w.simCPU0 = selfCPUSeconds()
	if w.storePID > 0 {
		v, err := treeCPUSeconds(w.storePID)
		if err != nil {
			return fmt.Errorf("simulator: PostgreSQL CPU (--store-pid %d): %w", w.storePID, err)
		}
		w.storeCPU0 = v
	}
	for i := range w.set.cs {
		w.rep.Nodes[i].SessionsStart = w.sessions(ctx, i)
		if w.rep.Nodes[i].SessionsStart < 0 {
			continue // down from the start (--server): nothing to count
		}
		v, err := w.statements(ctx, i)
		if err != nil {
			return err
		}
		w.stmts0[i] = v
		if w.nodes != nil {
			w.cpu0[i], _ = cpuSeconds(w.nodes[i].pid())
		}
	}
	return nil
}

// killNode banks node k's (1-based) counters and SIGKILLs it.
func (w *nodeWatch) killNode(ctx context.Context, k, done int) error {
	i := k - 1
	v, err := w.statements(ctx, i)
	if err != nil {
		return err
	}
	cpu, _ := cpuSeconds(w.nodes[i].pid())
	held := w.sessions(ctx, i)
	w.mu.Lock()
	w.rep.Nodes[i].SessionsAtKill = held
	w.stmtsLast[i], w.cpu1[i] = v, cpu
	w.rep.KilledNode, w.rep.KilledAtDone = k, done
	w.rep.Nodes[i].Killed = true
	w.killedAt = time.Now()
	w.mu.Unlock()
	return w.nodes[i].kill()
}

// onDisconnected and onConnected follow the killed node's devices to
// their next node.
func (w *nodeWatch) onDisconnected(id string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.killedAt.IsZero() && !at.Before(w.killedAt) {
		w.lost[id] = true
	}
}

func (w *nodeWatch) onConnected(id string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lost[id] {
		delete(w.lost, id)
		w.gaps = append(w.gaps, at.Sub(w.killedAt))
	}
}

// end completes the report after the rotations.
func (w *nodeWatch) end(ctx context.Context, rotations int) (*NodesReport, error) {
	// The killed node's devices whose rotation was done before the kill
	// may still be on their way to another node: wait for them a while,
	// so that the gap covers them all.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		w.mu.Lock()
		lost := len(w.lost)
		w.mu.Unlock()
		if lost == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rep.SimulatorCPUS = selfCPUSeconds() - w.simCPU0
	if w.storePID > 0 {
		if v, err := treeCPUSeconds(w.storePID); err == nil {
			w.rep.StoreCPUS = v - w.storeCPU0
		}
	}
	var stmts float64
	for i := range w.set.cs {
		n := &w.rep.Nodes[i]
		if n.Killed {
			n.SessionsEnd = -1
			stmts += w.stmtsLast[i] - w.stmts0[i]
		} else if n.SessionsEnd = w.sessions(ctx, i); n.SessionsStart >= 0 && n.SessionsEnd >= 0 {
			v, err := w.statements(ctx, i)
			if err != nil {
				return nil, err
			}
			stmts += v - w.stmts0[i]
			if w.nodes != nil {
				w.cpu1[i], _ = cpuSeconds(w.nodes[i].pid())
			}
		}
		if w.nodes != nil {
			n.CPUS = w.cpu1[i] - w.cpu0[i]
		}
	}
	w.rep.StoreStatements = uint64(stmts)
	if rotations > 0 {
		w.rep.StatementsPerRotation = stmts / float64(rotations)
	}
	sort.Slice(w.gaps, func(a, b int) bool { return w.gaps[a] < w.gaps[b] })
	w.rep.FailoverDevices = len(w.gaps)
	w.rep.NotFailedOver = len(w.lost)
	if len(w.gaps) > 0 {
		w.rep.FailoverGapP50Ms = float64(w.gaps[len(w.gaps)/2]) / 1e6
		w.rep.FailoverGapMaxMs = float64(w.gaps[len(w.gaps)-1]) / 1e6
	}
	rep := w.rep
	return &rep, nil
}

// checkNodes refuses a several-node configuration that cannot run, before
// anything starts.
func (c *Config) checkNodes() error {
	switch {
	case c.Nodes < 0:
		return errors.New("simulator: --nodes must not be negative")
	case c.Nodes > 0 && c.FleetdBin == "":
		return errors.New("simulator: --nodes spawns fleetd nodes and needs --fleetd-bin")
	case c.Nodes > 0 && !strings.HasPrefix(c.Store, "postgres://") && !strings.HasPrefix(c.Store, "postgresql://"):
		return errors.New("simulator: --nodes needs --store postgres://…, the store the nodes share")
	case c.Nodes > 0 && c.Server != "":
		return errors.New("simulator: --nodes spawns the nodes; drop --server")
	case c.Nodes > 0 && (c.Fleet > 0 || c.Campaign != nil || c.Faults.FleetdKills > 0 || c.Faults.BrokerRestarts > 0):
		return errors.New("simulator: --nodes runs rotation rounds only: no --fleet, --campaign, --kill-fleetd or --restart-broker")
	case c.KillNode < 0 || c.KillNode > 0 && c.KillNode > c.Nodes:
		return fmt.Errorf("simulator: --kill-node %d: want a node between 1 and --nodes (%d)", c.KillNode, c.Nodes)
	case c.KillNode > 0 && c.Nodes < 2:
		return errors.New("simulator: --kill-node needs at least 2 nodes, one to fail over to")
	case c.KillNode > 0 && (c.KillAt <= 0 || c.KillAt >= 1):
		return errors.New("simulator: --kill-at must be between 0% and 100%, exclusive")
	}
	return nil
}

// spawnCluster starts cfg.Nodes nodes on cfg.Store and returns what
// connectServer returns.
func spawnCluster(ctx context.Context, cfg *Config) (*client.Client, func(context.Context) uint64, func(), string, error) {
	if _, err := softhsm.Configure(filepath.Join(cfg.Dir, "softhsm")); err != nil {
		return nil, nil, nil, "", err
	}
	nodes, set, err := spawnNodes(ctx, cfg.FleetdBin, cfg.Dir, cfg.Store, cfg.Nodes, cfg.FleetdArgs)
	if err != nil {
		return nil, nil, nil, "", err
	}
	cfg.nodes, cfg.admins = nodes, set
	ops := func(ctx context.Context) uint64 {
		var n uint64
		for _, s := range nodes {
			n += s.ops(ctx)
		}
		return n
	}
	stop := func() {
		for _, s := range nodes {
			s.stop()
		}
	}
	return set.current(), ops, stop, fmt.Sprintf("%d spawned nodes (%s)", len(nodes), strings.Join(set.addrs, ", ")), nil
}

// nodeKill returns the round's hook that SIGKILLs node cfg.KillNode once
// KillAt of total rotations have completed; nil when there is none.
func (f *fleet) nodeKill(ctx context.Context, total int) func(done int) {
	k := f.cfg.KillNode
	if k == 0 || f.watch == nil || f.cfg.nodes == nil {
		return nil
	}
	at := int(f.cfg.KillAt * float64(total))
	var once sync.Once
	return func(done int) {
		if done < at {
			return
		}
		once.Do(func() {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := f.watch.killNode(ctx, k, done); err != nil {
					f.cfg.Logger.Error("kill node failed", "node", k, "err", err)
					return
				}
				f.faults.kills.Add(1)
			}()
		})
	}
}

func (n *NodesReport) writeTable(tw io.Writer) {
	for i, nd := range n.Nodes {
		state := ""
		if nd.Killed {
			state = fmt.Sprintf(" (SIGKILLed holding %d sessions)", nd.SessionsAtKill)
		}
		cpu := ""
		if nd.CPUS > 0 {
			cpu = fmt.Sprintf("; CPU %.1f s", nd.CPUS)
		}
		fmt.Fprintf(tw, "node %d%s\t%s: sessions %d at start, %d at end%s\n", i+1, state, nd.Admin, nd.SessionsStart, nd.SessionsEnd, cpu)
	}
	if n.KilledNode > 0 {
		fmt.Fprintf(tw, "failover\tnode %d killed at %d rotations; %d devices reconnected elsewhere (%d not), gap p50 %.0f ms, max %.0f ms\n",
			n.KilledNode, n.KilledAtDone, n.FailoverDevices, n.NotFailedOver, n.FailoverGapP50Ms, n.FailoverGapMaxMs)
	}
	if n.StoreStatements > 0 {
		fmt.Fprintf(tw, "PostgreSQL statements\t%d (%.1f per rotation)\n", n.StoreStatements, n.StatementsPerRotation)
	} else {
		fmt.Fprintf(tw, "PostgreSQL statements\tnot read (--server-ops names the nodes' /metrics listeners)\n")
	}
	fmt.Fprintf(tw, "simulator CPU\t%.1f s\n", n.SimulatorCPUS)
	if n.StoreCPUS > 0 {
		fmt.Fprintf(tw, "PostgreSQL CPU\t%.1f s\n", n.StoreCPUS)
	}
}
