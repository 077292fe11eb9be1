package rotation

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyfleet/keyfleet/certs"
	"github.com/keyfleet/keyfleet/internal/logx"
	"github.com/keyfleet/keyfleet/protocol"
	"github.com/keyfleet/keyfleet/server/lifecycle"
	"github.com/keyfleet/keyfleet/server/online"
	"github.com/keyfleet/keyfleet/server/policy"
	"github.com/keyfleet/keyfleet/server/store"
)

// Store is what the engine needs of the store.
type Store interface {
	CreateDevice(ctx context.Context, d *store.Device, events ...store.Event) error
	UpdateDevice(ctx context.Context, id string, fn func(d *store.Device) ([]store.Event, error)) (*store.Device, error)
	GetDevice(ctx context.Context, id string) (*store.Device, error)
	ForEachDevice(ctx context.Context, fn func(d *store.Device) error) error
	Audit(ctx context.Context, events ...store.Event) error
}

// Publisher sends a downlink. It is satisfied by *mqttc.Conn.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Signer seals downlinks; it is satisfied by *online.Keeper via keeperSigner.
type Signer interface {
	Current() *online.Key
}

// Options configures an Engine. Zero values take the defaults.
type Options struct {
	// Policy gives the windows: renewal before expiry, renewal after
	// expiry, grace; read at each decision, per device, so an applied
	// policy takes effect at once. A policy.Policy value never changes (its
	// zero fields take policy.Default's); nil is policy.Default().
	Policy policy.Source
	// Grace, if set, is how long a superseded version stays accepted
	// whatever the policy says; 0 means the device's policy's.
	Grace time.Duration
	// CommandTTL is the expiry given to commands and the freshness window
	// for uplinks; 0 means 10 minutes.
	CommandTTL time.Duration
	// Workers is the number of uplink workers; 0 means 64 (enough for the
	// HSM's sessions and for group commits to fill).
	Workers int
	// QueueLen bounds the uplinks waiting for one device (one up or
	// re-enrolment topic); 0 means 64. Its excess is dropped, and counted
	// as queue-full, without delaying any other device (see intake).
	QueueLen int
	// MaxQueued bounds the uplinks waiting for all devices together; 0
	// means 65,536.
	MaxQueued int
	Topics    protocol.Topics
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// OnStateChange, if set, is called after each durable state change of
	// a key version, in every slot the engine moves, for make run's
	// readable lines and the simulator. Registrations are audited but not
	// reported here: a fleet registers thousands of devices at once.
	OnStateChange func(lifecycle.Change)
	// Anchors, DataKeys and Firmware, when set, let the engine bring a
	// device's trust anchors, data keys and firmware to the desired state
	// too; nil leaves that part out.
	Anchors  AnchorSource
	DataKeys DataKeySource
	Firmware FirmwareSource
}

// AnchorSource gives the signed trust-anchor sets (package anchors).
type AnchorSource interface {
	// AnchorVersion is the current set's version.
	AnchorVersion() uint32
	// SetsAfter returns up to max signed sets following version v, oldest
	// first.
	SetsAfter(v uint32, max int) [][]byte
}

// DataKeySource turns an escrowed data key back into key material, inside
// the HSM, for sealing to a device.
type DataKeySource interface {
	UnwrapDataKey(ctx context.Context, k *store.DataKey) ([]byte, error)
}

// FirmwareSource gives the firmware release each device should run.
type FirmwareSource interface {
	// FirmwareFor returns the version and signed manifest of the release
	// a device should run, given its pin (store.Device.FirmwarePin: a
	// staged release, 0 for none) and the version it runs; version 0
	// means no release.
	FirmwareFor(pin, running uint32) (uint32, []byte)
}

// Engine runs rotations. Create it with New, then Start it.
type Engine struct {
	st     Store
	issuer certs.Issuer
	signer Signer
	pub    atomic.Pointer[publisherBox]
	codec  *protocol.Codec
	opts   Options
	log    *slog.Logger

	closer  SessionCloser
	intake  *intake
	logs    *logx.Limiter // rejection lines: one per topic and reason per interval
	wg      sync.WaitGroup
	replays *replayCache
	grace   *graceQueue
	stats   Stats
	refused refusals
	answers *logx.Limiter // error answers: one per device and reason per AnswerInterval
}

type uplink struct {
	topic   string
	payload []byte
}

// New returns an engine; pub may be set later with SetPublisher.
func New(st Store, issuer certs.Issuer, signer Signer, codec *protocol.Codec, opts Options) *Engine {
	if opts.Policy == nil {
		opts.Policy = policy.Default()
	}
	if opts.CommandTTL == 0 {
		opts.CommandTTL = 10 * time.Minute
	}
	if opts.Workers == 0 {
		opts.Workers = 64
	}
	if opts.QueueLen == 0 {
		opts.QueueLen = defaultDeviceQueue
	}
	if opts.MaxQueued == 0 {
		opts.MaxQueued = defaultTotalQueue
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	e := &Engine{
		st: st, issuer: issuer, signer: signer, codec: codec, opts: opts,
		log:     opts.Logger,
		replays: newReplayCache(2 * opts.CommandTTL),
		grace:   newGraceQueue(),
		intake:  newIntake(opts.QueueLen, opts.MaxQueued),
		logs:    logx.NewLimiter(logx.DefaultLogEvery, nil),
	}
	e.answers = logx.NewLimiter(AnswerInterval, e.now)
	e.stats.rejected = map[Reason]*atomic.Uint64{}
	return e
}

// SessionCloser drops live sessions that use a credential no longer
// accepted; the embedded broker implements it. An external broker must be
// told another way (its own checks, a CRL).
type SessionCloser interface {
	DisconnectCredential(device, serial string) int
	// Disconnect drops every session of the device (revocation).
	Disconnect(device string) int
}

// SetSessionCloser sets who drops sessions of retired credentials.
func (e *Engine) SetSessionCloser(c SessionCloser) { e.closer = c }

// publisherBox lets the publisher be swapped atomically on reconnect.
type publisherBox struct{ Publisher }

// SetPublisher sets the downlink path (the engine's MQTT connection). It
// may be called again, concurrently with the workers, after a reconnect.
func (e *Engine) SetPublisher(p Publisher) { e.pub.Store(&publisherBox{p}) }

// Start launches the workers and the grace timer; they stop when ctx ends.
// It first loads the superseded versions whose grace is running.
func (e *Engine) Start(ctx context.Context) error {
	if err := e.forEachGrace(ctx, func(it graceItem) error {
		e.grace.push(it)
		return nil
	}); err != nil {
		return fmt.Errorf("rotation: load grace windows: %w", err)
	}
	for range e.opts.Workers {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			for {
				q, u, ok := e.intake.next()
				if !ok {
					return
				}
				_ = e.HandleUplink(ctx, u.topic, u.payload)
				e.intake.done(q)
			}
		}()
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		<-ctx.Done()
		e.intake.close()
	}()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.runGrace(ctx)
	}()
	return nil
}

// Wait blocks until the workers have stopped.
func (e *Engine) Wait() { e.wg.Wait() }

// Submit queues an uplink for the workers. It never blocks: it runs on
// the MQTT client's one reading goroutine, which also carries the
// acknowledgements the workers wait for, so blocking it would stall them
// all. Each device (topic) has its own bounded queue, served round-robin
// with the others (see intake), so one device's backlog never delays
// another's messages. A message that finds its device's queue full is
// dropped and counted ("queue-full"); the device says hello again and gets
// what it missed.
func (e *Engine) Submit(ctx context.Context, topic string, payload []byte) {
	p := append([]byte(nil), payload...)
	if !e.intake.add(topic, uplink{topic, p}) {
		e.stats.reject("queue-full")
		e.logs.Log(e.log, slog.LevelWarn, topic+"/queue-full", "uplink dropped: queue full", "topic", topic)
	}
}

func (e *Engine) now() time.Time { return e.opts.Now() }

func parsePub(k *store.KeyVersion) (any, error) {
	c, err := x509.ParseCertificate(k.Cert)
	if err != nil {
		return nil, fmt.Errorf("rotation: stored certificate of version %d: %w", k.Version, err)
	}
	return c.PublicKey, nil
}
