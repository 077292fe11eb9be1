package broker

import (
	"net"
	"sync"
	"time"
)

// connectTimeout bounds how long an accepted connection may take to finish
// its TLS handshake and send CONNECT; mochi sets the keep-alive deadline
// after that. Without it a client that opens a connection and says
// nothing holds a goroutine, and a Close, for ever.
const connectTimeout = 30 * time.Second

// trackedListener records every connection it accepts until the connection
// is closed, so that Close can end them all: also those mochi has not
// registered yet (their TLS handshake or CONNECT still under way when the
// broker began closing), which mochi's own shutdown neither sees nor
// disconnects but waits for.
type trackedListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool // closeAll ran: a connection accepted now is closed at once
}

func newTrackedListener(l net.Listener) *trackedListener {
	return &trackedListener{Listener: l, conns: map[*trackedConn]struct{}{}}
}

// Accept implements net.Listener.
func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(connectTimeout))
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.conns[tc] = struct{}{}
	}
	l.mu.Unlock()
	if closed {
		_ = c.Close()
	}
	return tc, nil
}

// closeAll closes every open connection and any accepted from now on.
func (l *trackedListener) closeAll() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[*trackedConn]struct{}{}
	l.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// open returns how many accepted connections are not closed yet.
func (l *trackedListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

type trackedConn struct {
	net.Conn
	l    *trackedListener
	once sync.Once
}

// Close implements net.Conn.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return err
}
