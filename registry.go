package hostbreaker

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

// State is the effective state of a (host, role) breaker. The zero value is
// StateClosed.
type State int

// The breaker states.
const (
	StateClosed   State = iota // requests flow; consecutive failures are counted
	StateHalfOpen              // a few trial requests decide whether to close
	StateOpen                  // requests are rejected until a deadline
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText encodes s as its String form.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes the String form of a State.
func (s *State) UnmarshalText(b []byte) error {
	v, ok := parseState(string(b))
	if !ok {
		return fmt.Errorf("hostbreaker: unknown state %q", b)
	}
	*s = v
	return nil
}

func parseState(s string) (State, bool) {
	switch s {
	case "closed":
		return StateClosed, true
	case "half-open":
		return StateHalfOpen, true
	case "open":
		return StateOpen, true
	}
	return 0, false
}

// Breaker phases, packed with a generation number into entry.st.
const (
	phaseClosed   = uint64(StateClosed)
	phaseHalfOpen = uint64(StateHalfOpen)
	phaseOpen     = uint64(StateOpen)
	phaseMask     = 3
)

func phaseOf(st uint64) uint64 { return st & phaseMask }

// next returns the packed state of the next generation in phase.
func next(st, phase uint64) uint64 { return (st>>2+1)<<2 | phase }

// hostState is what a host's roles share: its cooldown and rolling window,
// and the list of its breakers. The fields read on every request come first.
//
// Its first 64 bytes are all that a request reads, so that a lookup costs
// one cache line here. It fits the 192-byte size class, whose objects are
// 64-byte aligned; TestHotFieldsLayout keeps it so.
type hostState struct {
	hash    uint64           // maphash of name, with the registry's seed
	until   atomic.Int64     // cooldown deadline in ns since the Transport's epoch; 0 for none
	nameLen int              // len(name)
	nameBuf [inlineName]byte // name, when it fits, so that matching it stays on this line

	name string
	// The host's entries, read without locks: the first few inline, the rest
	// in a copy-on-write slice. Written under registry.mu.
	roles [inlineRoles]atomic.Pointer[entry]
	more  atomic.Pointer[[]*entry]

	mu     sync.Mutex
	reason Reason  // why until is set; guarded by mu
	note   string  // operator's note for manual cooldowns; guarded by mu
	window []int64 // rolling window: times of recent failures (ring); guarded by mu
	wnext  int     // next slot of window; guarded by mu
	wn     int     // slots in use; guarded by mu
}

const (
	inlineRoles = 2
	inlineName  = 40
)

func newHostState(name string, hash uint64) *hostState {
	h := &hostState{hash: hash, name: strings.Clone(name), nameLen: len(name)}
	copy(h.nameBuf[:], name)
	return h
}

// is reports whether h is the state of host, whose hash is hash.
func (h *hostState) is(hash uint64, host string) bool {
	if h.hash != hash || h.nameLen != len(host) {
		return false
	}
	if len(host) <= inlineName {
		return string(h.nameBuf[:len(host)]) == host
	}
	return h.name == host
}

// find returns the host's entry for role, or nil.
func (h *hostState) find(role string) *entry {
	for i := range h.roles {
		e := h.roles[i].Load()
		if e == nil {
			return nil
		}
		if e.role == role {
			return e
		}
	}
	if more := h.more.Load(); more != nil {
		for _, e := range *more {
			if e.role == role {
				return e
			}
		}
	}
	return nil
}

// entries returns the host's entries. Callers hold registry.mu.
func (h *hostState) entries() []*entry {
	var out []*entry
	for i := range h.roles {
		if e := h.roles[i].Load(); e != nil {
			out = append(out, e)
		}
	}
	if more := h.more.Load(); more != nil {
		out = append(out, *more...)
	}
	return out
}

// setEntries replaces the host's entries. Callers hold registry.mu. A
// concurrent reader may miss an entry while this runs; it then takes the
// locked path, which sees the final list.
func (h *hostState) setEntries(es []*entry) {
	for i := range h.roles {
		var e *entry
		if i < len(es) {
			e = es[i]
		}
		h.roles[i].Store(e)
	}
	if len(es) > inlineRoles {
		more := slices.Clone(es[inlineRoles:])
		h.more.Store(&more)
	} else {
		h.more.Store(nil)
	}
}

func (h *hostState) coolingDown(now int64) bool {
	u := h.until.Load()
	return u != 0 && now < u
}

// entry is the breaker of one (host, role). The closed, healthy path reads
// st and host.until and adds to one counter, without locks or allocation;
// the fields it touches fill the first 64 bytes, and entry fits the
// 128-byte size class, whose objects are 64-byte aligned.
type entry struct {
	st        atomic.Uint64 // generation<<2 | phase; changed only under mu
	successes atomic.Uint64
	fails     atomic.Int32 // failures recorded since the last recorded success, in closed
	used      atomic.Bool  // requested since the last eviction sweep
	pol       atomic.Pointer[resolved]
	host      *hostState
	role      string
	openUntil atomic.Int64 // end of the open phase (ns since epoch); set before st

	failures, neutral, rejected atomic.Uint64

	mu     sync.Mutex
	cb     circuitbreaker.CircuitBreaker[any] // nil until the first failure; guarded by mu
	probes int                                // half-open probes in flight; guarded by mu
}

// breaker returns the entry's failsafe-go breaker, building it on first use.
// Callers hold e.mu.
func (e *entry) breaker() circuitbreaker.CircuitBreaker[any] {
	if e.cb == nil {
		e.cb = newBreaker(e.pol.Load())
	}
	return e.cb
}

// newBreaker builds a count-based breaker: FailMax failures in the last
// FailMax outcomes (that is, FailMax consecutive failures) open it, and in
// half-open SuccessThreshold successes close it and any failure reopens it.
// The Transport never calls TryAcquirePermit: its own gate times the open
// phase (with jitter, cooldowns and restored deadlines) and limits probes to
// TrialCalls, which failsafe-go cannot do on the manual path.
func newBreaker(p *resolved) circuitbreaker.CircuitBreaker[any] {
	return circuitbreaker.NewBuilder[any]().
		WithFailureThreshold(uint(p.FailMax)).
		WithSuccessThreshold(uint(p.SuccessThreshold)).
		WithDelay(p.ResetTimeout).
		Build()
}

// idle reports whether e carries no protection worth keeping.
func (e *entry) idle(now int64) bool {
	return phaseOf(e.st.Load()) == phaseClosed && e.fails.Load() == 0 && !e.host.coolingDown(now)
}

// registry is the bounded set of entries: an open-addressing table of hosts
// that is read without locks, each host holding its few roles' entries.
// Inserts, evictions and resizes happen under mu; a resize or eviction
// builds a new table and publishes it atomically.
type registry struct {
	seed maphash.Seed
	tab  atomic.Pointer[hostTable]

	mu     sync.Mutex
	nhosts int               // hosts in tab; guarded by mu
	n      int               // entries; guarded by mu
	max    int               // bound on n
	roles  map[string]string // interned role names; guarded by mu
}

type hostTable struct {
	slots []hostSlot
	mask  uint64
}

// hostSlot is a slot of a hostTable. The hash lets a probe skip other hosts
// without touching their state, and e0, the host's first entry, lets a
// lookup load the entry and the host state in parallel. A slot is written
// once (hash, then e0 and h) and e0 again when the first entry is added.
type hostSlot struct {
	hash atomic.Uint64
	h    atomic.Pointer[hostState]
	e0   atomic.Pointer[entry]
}

func newHostTable(size int) *hostTable {
	return &hostTable{slots: make([]hostSlot, size), mask: uint64(size - 1)}
}

// find returns the slot of host, or nil.
func (t *hostTable) find(hash uint64, host string) *hostSlot {
	for i := hash & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		h := s.h.Load()
		if h == nil {
			return nil
		}
		if s.hash.Load() == hash && h.is(hash, host) {
			return s
		}
	}
}

// insert adds h, which must be absent. The table must have a free slot.
func (t *hostTable) insert(h *hostState) {
	for i := h.hash & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if s.h.Load() == nil {
			s.hash.Store(h.hash)
			s.e0.Store(h.roles[0].Load())
			s.h.Store(h)
			return
		}
	}
}

// each calls f for every host in the table.
func (t *hostTable) each(f func(*hostState)) {
	for i := range t.slots {
		if h := t.slots[i].h.Load(); h != nil {
			f(h)
		}
	}
}

func newRegistry(max int) *registry {
	r := &registry{seed: maphash.MakeSeed(), max: max, roles: make(map[string]string)}
	r.tab.Store(newHostTable(64))
	return r
}

func (r *registry) hash(host string) uint64 { return maphash.String(r.seed, host) }

// lookup returns the entry for (host, role), or nil.
func (r *registry) lookup(host, role string) *entry {
	s := r.tab.Load().find(r.hash(host), host)
	if s == nil {
		return nil
	}
	if e := s.e0.Load(); e != nil && e.role == role {
		return e
	}
	return s.h.Load().find(role)
}

// host returns the state of host, or nil.
func (r *registry) host(host string) *hostState {
	if s := r.tab.Load().find(r.hash(host), host); s != nil {
		return s.h.Load()
	}
	return nil
}

// hostLocked returns the state of host, adding it if absent. Callers hold mu.
func (r *registry) hostLocked(hash uint64, host string) *hostState {
	t := r.tab.Load()
	if s := t.find(hash, host); s != nil {
		return s.h.Load()
	}
	if 4*(r.nhosts+1) > 3*len(t.slots) {
		t = r.rebuildLocked(2*len(t.slots), nil)
	}
	h := newHostState(host, hash)
	t.insert(h)
	r.nhosts++
	return h
}

// rebuildLocked publishes a table of size slots holding the hosts for
// which keep returns true (all when keep is nil). Callers hold mu.
func (r *registry) rebuildLocked(size int, keep func(*hostState) bool) *hostTable {
	nt := newHostTable(size)
	n := 0
	r.tab.Load().each(func(h *hostState) {
		if keep == nil || keep(h) {
			nt.insert(h)
			n++
		}
	})
	r.nhosts = n
	r.tab.Store(nt)
	return nt
}

// create returns the entry for (host, role), creating it with the policy
// that pol returns when absent. It returns nil when the registry is full of
// entries that must not be evicted (open, failing or cooling down).
func (r *registry) create(host, role string, pol func(host, role string) *resolved, now int64) *entry {
	hash := r.hash(host)
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.tab.Load().find(hash, host); s != nil {
		if e := s.h.Load().find(role); e != nil {
			return e
		}
	}
	if r.n >= r.max && !r.evictLocked(now) {
		return nil
	}
	h := r.hostLocked(hash, host)
	if interned, ok := r.roles[role]; ok {
		role = interned
	} else {
		role = strings.Clone(role)
		r.roles[role] = role
	}
	e := &entry{role: role, host: h}
	e.pol.Store(pol(h.name, role))
	e.used.Store(true)
	h.setEntries(append(h.entries(), e))
	if s := r.tab.Load().find(hash, host); s.e0.Load() == nil {
		s.e0.Store(e)
	}
	r.n++
	return e
}

// evictLocked removes idle entries to make room: closed, with no failures
// pending, on hosts not cooling down, preferring those not used since the
// last sweep (a second chance). It frees an eighth of the capacity when it
// can, so that its O(n) cost is amortized, drops hosts left with nothing,
// and reports whether there is room for one more entry.
func (r *registry) evictLocked(now int64) bool {
	want := max(1, r.max/8)
	freed := 0
	t := r.tab.Load()
	for pass := 0; pass < 2 && freed < want; pass++ {
		t.each(func(h *hostState) {
			es := h.entries()
			kept := es[:0:0]
			for _, e := range es {
				switch {
				case freed >= want || !e.idle(now):
					kept = append(kept, e)
				case pass == 0 && e.used.Load():
					e.used.Store(false)
					kept = append(kept, e)
				default:
					freed++
				}
			}
			if len(kept) != len(es) {
				h.setEntries(kept)
			}
		})
	}
	r.n -= freed
	r.rebuildLocked(len(t.slots), func(h *hostState) bool {
		return h.roles[0].Load() != nil || h.coolingDown(now)
	})
	return r.n < r.max
}

// each calls f, under the registry lock, for every entry with its host,
// and once with a nil entry for every host that has none.
func (r *registry) each(f func(*hostState, *entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tab.Load().each(func(h *hostState) {
		if h.roles[0].Load() == nil {
			f(h, nil)
			return
		}
		for i := range h.roles {
			if e := h.roles[i].Load(); e != nil {
				f(h, e)
			}
		}
		if more := h.more.Load(); more != nil {
			for _, e := range *more {
				f(h, e)
			}
		}
	})
}

// hostEntries returns the state and entries of host (nil if unknown).
func (r *registry) hostEntries(host string) (*hostState, []*entry) {
	h := r.host(host)
	if h == nil {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return h, h.entries()
}

// Roles commonly used by harvesters. Any string is a valid role.
const (
	RoleMetadata = "metadata" // API calls for metadata (Crossref, OpenAlex, …)
	RoleLanding  = "landing"  // landing pages
	RoleArtifact = "artifact" // PDFs and other downloads
)

type roleKey struct{}

// WithRole returns a copy of ctx that carries role. Requests made with it
// use the (host, role) breaker and the role's policy.
func WithRole(ctx context.Context, role string) context.Context {
	return context.WithValue(ctx, roleKey{}, role)
}

// RoleFromContext returns the role set by WithRole, or "" when there is none.
func RoleFromContext(ctx context.Context) string {
	role, _ := ctx.Value(roleKey{}).(string)
	return role
}
