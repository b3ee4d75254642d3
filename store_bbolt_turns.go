package hostbreaker

// This file holds the shared turns of a bbolt store: the fleet's shared
// bucket (turnTaker) and the fleet's start (starter) for the processes of
// one machine. They live beside the bbolt file, in a small file of their
// own, path + ".turns": a turn is a read and a write of one slot under a
// file lock held for microseconds, where a bbolt write transaction would
// take the bbolt file's lock (polled every 50 ms) and sync the file, for
// every request to a limited host. What it holds is only pacing, worth
// seconds: it is never synced, and a machine's restart may lose it.
// The processes share one clock, the machine's.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"sync"
	"time"
)

// The turns file: a header, then turnSlots slots of turnSlotSize bytes.
// A host's slot is found by the hash of its name, among turnProbe slots
// from the one it hashes to; a slot whose turns, slow-down and start have
// all expired is free, and when none of the turnProbe slots is, the one
// touched longest ago is taken. Two hosts whose 64-bit hashes agree share
// a slot.
const (
	turnMagic    = "hbturns1"
	turnHeader   = 64
	turnSlotSize = 128
	turnSlots    = 1 << 16
	turnProbe    = 32                                  // 4 KiB: one read
	turnFileSize = turnHeader + turnSlots*turnSlotSize // 8 MiB, sparse until used
)

// turnSlot is one host's slot of the turns file, times in µs since the
// epoch. Its fields are those of a Redis store's t:, w: and a: keys (see
// redisTurnScript and redisStartScript).
type turnSlot struct {
	key     uint64  // hash of the host's name; 0: empty
	touched int64   // last write
	tat     int64   // the bucket's next free turn
	slow    float64 // the slow-down's factor of the bucket's rate
	slowEnd int64   // when the slow-down ends
	f       int64   // the start's first turn; 0: no start
	n       int64   // the start's turns given
	x       int64   // when a throttle stopped the start; 0: not stopped
	reached float64 // the start's rate when stopped, r/s
	held    float64 // the rate held since, r/s
	h       int64   // the next free turn at the held rate
	np      int64   // the processes that took part
	end     int64   // when the start's record expires
	hold    int64   // when the last hold (a Retry-After's cooldown) ends
}

// decodeTurnSlot reads a slot from b, at least turnSlotSize bytes. Any
// bytes decode: a rate that is not finite and positive reads as 0, and
// the other values are bounded where they are used.
func decodeTurnSlot(b []byte) turnSlot {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[i*8:]) }
	i := func(k int) int64 { return int64(u(k)) }
	fl := func(k int) float64 { return math.Float64frombits(u(k)) }
	fin := func(k int) float64 { // a rate or factor: finite and positive, or 0
		if v := fl(k); v > 0 && v <= math.MaxFloat64 {
			return v
		}
		return 0
	}
	return turnSlot{
		key: u(0), touched: i(1), tat: i(2), slow: fin(3), slowEnd: i(4),
		f: i(5), n: i(6), x: i(7), reached: fin(8), held: fin(9), h: i(10), np: i(11), end: i(12), hold: i(13),
	}
}

// encode writes s to b, turnSlotSize bytes.
func (s *turnSlot) encode(b []byte) {
	clear(b[:turnSlotSize])
	for k, v := range [...]uint64{
		s.key, uint64(s.touched), uint64(s.tat), math.Float64bits(s.slow), uint64(s.slowEnd),
		uint64(s.f), uint64(s.n), uint64(s.x), math.Float64bits(s.reached), math.Float64bits(s.held),
		uint64(s.h), uint64(s.np), uint64(s.end), uint64(s.hold),
	} {
		binary.LittleEndian.PutUint64(b[k*8:], v)
	}
}

// live reports whether anything of s holds at now: a turn of its bucket
// (which, as a Redis store's key, lives a second past the next free
// turn), its slow-down or hold, or its start.
func (s *turnSlot) live(now int64) bool {
	return s.key != 0 && (s.tat+1e6 > now || s.slowEnd > now || s.hold > now || s.end > now)
}

// turnFile is a bbolt store's turns file, opened at its first turn and
// closed with the store. mu serializes this process's turns: a file lock
// (flock) is held by an open file, not a goroutine. A turn holds mu only
// while it holds the file lock, or tries to take it: it waits for the
// lock without mu (so that, under testing/synctest, every turn that waits
// waits durably, on a timer).
type turnFile struct {
	path    string
	mu      sync.Mutex
	f       *os.File
	buf     [turnProbe * turnSlotSize]byte
	counted map[string]int64 // host+NUL+source: the start (its f) this process counted itself in
}

// errTurnsClosed is returned by the turns of a closed store.
var errTurnsClosed = errors.New("closed")

// with runs fn on the slot of host, read under the file lock, and writes
// the slot back when fn returns true. A slot that holds nothing live is
// zero when fn sees it, but for its key. It waits for the file lock until
// ctx is done: a turn holds it for microseconds, so it polls from 20 µs,
// doubling up to a millisecond.
func (tf *turnFile) with(ctx context.Context, host string, fn func(s *turnSlot, now int64) bool) error {
	for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
		tf.mu.Lock()
		if tf.f == nil {
			tf.mu.Unlock()
			return errTurnsClosed
		}
		locked, err := lockTurnFile(tf.f)
		if locked {
			err = tf.locked(host, fn)
			unlockTurnFile(tf.f)
		}
		tf.mu.Unlock()
		if locked || err != nil {
			return err
		}
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// locked is with's work under the file lock and mu.
func (tf *turnFile) locked(host string, fn func(s *turnSlot, now int64) bool) error {
	if err := tf.check(); err != nil {
		return err
	}
	key := turnKey(host)
	first := int(key % (turnSlots - turnProbe + 1))
	off := int64(turnHeader + first*turnSlotSize)
	if _, err := tf.f.ReadAt(tf.buf[:], off); err != nil {
		return err
	}
	now := time.Now().UnixMicro()
	pick, free, oldest := -1, -1, 0
	var oldestAt int64 = math.MaxInt64
	for k := range turnProbe {
		s := decodeTurnSlot(tf.buf[k*turnSlotSize:])
		switch {
		case s.key == key:
			pick = k
		case !s.live(now):
			if free < 0 {
				free = k
			}
		case s.touched < oldestAt:
			oldest, oldestAt = k, s.touched
		}
		if pick >= 0 {
			break
		}
	}
	switch {
	case pick >= 0:
	case free >= 0:
		pick = free
	default:
		pick = oldest
	}
	b := tf.buf[pick*turnSlotSize : (pick+1)*turnSlotSize]
	s := decodeTurnSlot(b)
	if s.key != key || !s.live(now) {
		s = turnSlot{key: key}
	}
	if !fn(&s, now) {
		return nil
	}
	s.touched = now
	s.encode(b)
	_, err := tf.f.WriteAt(b, off+int64(pick*turnSlotSize))
	return err
}

// check makes sure the file is a turns file of turnFileSize bytes: an
// empty one (new, or cut by a crash) is made one; any other is left as it
// is and refused, and the processes pace alone.
func (tf *turnFile) check() error {
	var head [len(turnMagic)]byte
	_, err := tf.f.ReadAt(head[:], 0)
	switch {
	case err == nil && string(head[:]) == turnMagic:
		fi, err := tf.f.Stat()
		if err != nil {
			return err
		}
		if fi.Size() < turnFileSize {
			return tf.f.Truncate(turnFileSize)
		}
		return nil
	case err == io.EOF:
		if fi, err := tf.f.Stat(); err != nil {
			return err
		} else if fi.Size() > 0 {
			return fmt.Errorf("%s: not a turns file", tf.path)
		}
		if err := tf.f.Truncate(turnFileSize); err != nil {
			return err
		}
		_, err := tf.f.WriteAt([]byte(turnMagic), 0)
		return err
	case err != nil:
		return err
	default:
		return fmt.Errorf("%s: not a turns file", tf.path)
	}
}

// turnKey is the slot key of host: never 0, which marks an empty slot.
func turnKey(host string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(host))
	return h.Sum64() | 1
}

// turns returns the store's turns file, opening it at the first call.
func (s *boltStore) turns() (*turnFile, error) {
	if s.closed.Load() {
		return nil, errBoltClosed
	}
	s.turnsMu.Lock()
	defer s.turnsMu.Unlock()
	if s.turnFile != nil {
		return s.turnFile, nil
	}
	f, err := os.OpenFile(s.path+".turns", os.O_RDWR|os.O_CREATE, boltFileMode)
	if err != nil {
		return nil, err
	}
	s.turnFile = &turnFile{path: s.path + ".turns", f: f}
	return s.turnFile, nil
}

// closeTurns closes the store's turns file, if it opened one.
func (s *boltStore) closeTurns() {
	s.turnsMu.Lock()
	tf := s.turnFile
	s.turnsMu.Unlock()
	if tf == nil {
		return
	}
	tf.mu.Lock()
	if tf.f != nil {
		_ = tf.f.Close()
		tf.f = nil
	}
	tf.mu.Unlock()
}

// takeTurn takes a turn of host's bucket shared by the processes of the
// store (see turnTaker and redisTurnScript, whose rule it follows), on
// the machine's clock.
func (s *boltStore) takeTurn(ctx context.Context, host string, interval, maxWait time.Duration) (time.Duration, bool, error) {
	tf, err := s.turns()
	if err != nil {
		return 0, false, fmt.Errorf("hostbreaker: bbolt store %s: turn: %w", s.path, err)
	}
	var (
		wait  int64
		taken bool
	)
	err = tf.with(ctx, host, func(sl *turnSlot, now int64) bool {
		wait, taken = sl.take(interval.Microseconds(), maxWait.Microseconds(), now)
		return taken
	})
	if err != nil {
		return 0, false, fmt.Errorf("hostbreaker: bbolt store %s: turn of %s: %w", s.path, host, err)
	}
	return time.Duration(wait) * time.Microsecond, taken, nil
}

// take takes a turn of the bucket sl holds at now, one per interval, as
// redisTurnScript does, and returns how long from now it is; with false,
// a turn further than maxWait, not taken. Times in µs.
func (sl *turnSlot) take(interval, maxWait, now int64) (int64, bool) {
	at := max(sl.tat, now)
	if wait := at - now; wait > maxWait {
		return min(wait, maxTurnWait), false
	}
	iv := float64(max(interval, 1))
	if sl.slowEnd > now && sl.slow > 0 && sl.slow < 1 {
		iv /= sl.slow
	}
	sl.tat = at + int64(min(iv, float64(maxTurnWait)))
	return at - now, true
}

// slowDown holds the bucket sl holds for hold from now, and slows it by
// factor for d unless it is slowed already, as redisSlowScript does. It
// reports whether it changed sl. Times in µs.
func (sl *turnSlot) slowDown(factor float64, d, hold, now int64) bool {
	changed := false
	if hold = min(hold, maxTurnWait); hold > 0 && sl.hold < now+hold {
		sl.hold, sl.tat, changed = now+hold, max(sl.tat, now+hold), true
	}
	if factor > 0 && factor < 1 && sl.slowEnd <= now {
		sl.slow, sl.slowEnd, changed = factor, now+min(d, maxTurnWait), true
	}
	return changed
}

// turnHold returns how long from now host's shared bucket is held (see
// turnHolder); 0 when it is not.
func (s *boltStore) turnHold(ctx context.Context, host string) (time.Duration, error) {
	tf, err := s.turns()
	var hold int64
	if err == nil {
		err = tf.with(ctx, host, func(sl *turnSlot, now int64) bool {
			hold = min(max(sl.hold-now, 0), maxTurnWait)
			return false
		})
	}
	if err != nil {
		return 0, fmt.Errorf("hostbreaker: bbolt store %s: hold of %s: %w", s.path, host, err)
	}
	return time.Duration(hold) * time.Microsecond, nil
}

// maxTurnWait bounds the waits and intervals of the turns file, in µs,
// whatever its slots hold.
const maxTurnWait = int64(time.Hour / time.Microsecond)

// slowTurns gives no turn of host's shared bucket for hold from now, and
// multiplies its rate by a factor under 1 for d, unless it is slowed
// already (see turnTaker).
func (s *boltStore) slowTurns(ctx context.Context, host string, factor float64, d, hold time.Duration) error {
	tf, err := s.turns()
	if err == nil {
		err = tf.with(ctx, host, func(sl *turnSlot, now int64) bool {
			return sl.slowDown(factor, d.Microseconds(), hold.Microseconds(), now)
		})
	}
	if err != nil {
		return fmt.Errorf("hostbreaker: bbolt store %s: slow turns of %s: %w", s.path, host, err)
	}
	return nil
}

// startTurn runs op on the fleet's start at host (see starter), by the
// rule of redisStartScript, on the machine's clock. The processes that
// take part are counted by each process itself: the first turn it takes
// of a start counts it.
func (s *boltStore) startTurn(ctx context.Context, host, source string, op startOp, arg time.Duration) (startReply, error) {
	tf, err := s.turns()
	if err != nil {
		return startReply{}, fmt.Errorf("hostbreaker: bbolt store %s: start: %w", s.path, err)
	}
	var r startReply
	err = tf.with(ctx, host, func(sl *turnSlot, now int64) bool {
		r = sl.startOp(tf, host, source, op, arg.Microseconds(), now)
		return r.code != startDone
	})
	if err != nil {
		return startReply{}, fmt.Errorf("hostbreaker: bbolt store %s: start at %s: %w", s.path, host, err)
	}
	return r, nil
}

// startOp runs op on the start that sl holds at now, as redisStartScript
// does, and returns its reply; maxWait in µs, for a stop how long ago the
// throttled request was sent.
func (sl *turnSlot) startOp(tf *turnFile, host, source string, op startOp, maxWait, now int64) startReply {
	const r0 = fleetStartRate
	d, length, life := fleetStartDoubling.Microseconds(), fleetStartLength.Microseconds(), fleetStartLife.Microseconds()
	if sl.end <= now || sl.f <= 0 || sl.f > now {
		if op != startTake {
			return startReply{code: startDone}
		}
		// A new start: the bucket's fields, which share the slot, stay.
		*sl = turnSlot{key: sl.key, tat: sl.tat, slow: sl.slow, slowEnd: sl.slowEnd, hold: sl.hold, f: now, end: now + life}
	}
	if op != startStop {
		k := host + "\x00" + source
		if tf.counted[k] != sl.f {
			if tf.counted == nil || len(tf.counted) >= 4096 {
				tf.counted = make(map[string]int64) // a start counts its processes in its first seconds
			}
			tf.counted[k] = sl.f
			sl.np++
		}
	}
	held := math.Max(sl.held, 1)
	far := func(at int64) startReply {
		return startReply{code: startTooFar, wait: time.Duration(min(at-now, maxTurnWait)) * time.Microsecond}
	}
	stopped := func(wait int64) startReply {
		return startReply{code: startHeld, wait: time.Duration(wait) * time.Microsecond, reached: sl.reached, procs: int(max(sl.np, 1))}
	}
	if op == startStop {
		switch {
		case sl.x == 0 && now-sl.f < length:
			sl.reached = r0 * math.Exp2(float64(max(now-maxWait-sl.f, 0))/float64(d))
			sl.x, sl.held, sl.end = now, math.Max(sl.reached/8, 1), now+life
			return stopped(0)
		case sl.x != 0:
			return stopped(0)
		}
		return startReply{code: startDone}
	}
	if sl.x != 0 {
		at := max(sl.h, now)
		if at-now > maxWait {
			return far(at)
		}
		sl.h, sl.end = at+int64(1e6/held), now+life
		return stopped(at - now)
	}
	if now-sl.f >= length {
		return startReply{code: startDone}
	}
	if op == startCheck || sl.np <= 1 {
		return startReply{code: startRamp} // a process alone is not paced
	}
	n := float64(max(sl.n, 0))
	at := sl.f + int64(float64(d)*math.Log2(1+n*math.Ln2*1e6/(r0*float64(d))))
	if at-sl.f >= length {
		return startReply{code: startDone}
	}
	at = max(at, now)
	if at-now > maxWait {
		return far(at)
	}
	sl.n++
	sl.end = now + life
	return startReply{code: startRamp, wait: time.Duration(at-now) * time.Microsecond}
}
