package hostbreaker

// This file holds the registry: the bounded, lock-free table of host states
// (hostState) and their (host, role) entries, with eviction, and the role
// carried by a request's context. What an entry decides is in breaker.go;
// what a host shares (its cooldown) in cooldown.go, its limiter in
// ratelimit.go.

import (
	"context"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hostState is what a host's roles share: its cooldown and rolling window,
// and the list of its breakers. It embeds the entry of its first role.
//
// A request to the host's first role reads one 128-byte block: the host's
// first line (its cooldown and its name, to match it) and the embedded
// entry's first line (its state and counters). hostState fills the
// 384-byte size class, whose objects are 128-byte aligned, so that the
// block is an aligned pair of cache lines; TestHotFieldsLayout keeps it so.
type hostState struct {
	hash    uint64                  // maphash of name, with the registry's seed
	until   atomic.Int64            // cooldown deadline in ns since the Transport's epoch; 0 for none
	lim     atomic.Pointer[limiter] // the host's rate limiter; nil for an unlimited host
	nameLen int32                   // len(name); -1 for the tombstone
	nameBuf [inlineName]byte        // name, when it fits, so that matching it stays on this line

	// first is the entry of the host's first role, live once flagLive is
	// set in its flags. It is handed out at most once: after its eviction
	// the host's next roles get entries of their own, so that a request
	// still holding it never sees another role's state.
	first entry

	name string
	// The host's entries, read without locks: the first few inline, the rest
	// in a copy-on-write slice. Written under registry.mu.
	roles    [inlineRoles]atomic.Pointer[entry]
	overflow atomic.Pointer[[]*entry] // the entries past the inline ones

	hostCooldown // why and since when it cools down, its rolling window (cooldown.go)

	born       int64                      // when the state was created, ns since the Transport's epoch
	bulk       atomic.Pointer[bulkhead]   // its concurrency limit; nil for a host without one (concurrency.go)
	detached   atomic.Bool                // removed from the registry; set under registry.mu
	firstUsed  bool                       // first has been handed out; guarded by registry.mu
	slowing    atomic.Bool                // a throttle's slow-down of the fleet's shared bucket is on its way (sharedturn.go)
	start      atomic.Int32               // where this process stands in the fleet's start at the host: hostStarting… (sharedturn.go)
	afterStart atomic.Pointer[afterStart] // the fleet's rate after a stopped start, until the processes see each other (sharedturn.go)
	_          [28]byte                   // to 384 bytes: see above
}

const (
	inlineRoles = 2
	inlineName  = 36
)

// tombstone marks a table slot whose host was removed; lookups probe past it.
var tombstone = &hostState{nameLen: -1}

func newHostState(name string, hash uint64) *hostState {
	h := &hostState{hash: hash, name: strings.Clone(name), nameLen: int32(len(name))}
	copy(h.nameBuf[:], name)
	return h
}

// is reports whether h is the state of host, whose hash is hash.
func (h *hostState) is(hash uint64, host string) bool {
	if h.hash != hash || int(h.nameLen) != len(host) {
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
	if rest := h.overflow.Load(); rest != nil {
		for _, e := range *rest {
			if e.role == role {
				return e
			}
		}
	}
	return nil
}

// each calls f for each of the host's entries. It reads them without
// locks, as find does: with registry.mu held it sees them all; without,
// an entry added meanwhile may be missed.
func (h *hostState) each(f func(*entry)) {
	for i := range h.roles {
		if e := h.roles[i].Load(); e != nil {
			f(e)
		}
	}
	if rest := h.overflow.Load(); rest != nil {
		for _, e := range *rest {
			f(e)
		}
	}
}

// entriesLocked returns the host's entries. Callers hold registry.mu.
func (h *hostState) entriesLocked() []*entry {
	var out []*entry
	h.each(func(e *entry) { out = append(out, e) })
	return out
}

// bare reports whether the host has no entry.
func (h *hostState) bare() bool { return h.roles[0].Load() == nil }

// setEntriesLocked replaces the host's entries. Callers hold registry.mu. A
// concurrent reader may miss an entry while this runs; it then takes the
// locked path, which sees the final list.
func (h *hostState) setEntriesLocked(es []*entry) {
	for i := range h.roles {
		var e *entry
		if i < len(es) {
			e = es[i]
		}
		h.roles[i].Store(e)
	}
	if len(es) > inlineRoles {
		rest := slices.Clone(es[inlineRoles:])
		h.overflow.Store(&rest)
	} else {
		h.overflow.Store(nil)
	}
}

// registry is the bounded set of entries: an open-addressing table of hosts
// that is read without locks, each host holding its few roles' entries.
// Inserts and removals happen under mu; a removed host leaves a tombstone,
// and a resize builds a new table and publishes it atomically.
//
// Two bounds hold whatever requests, stores and operators send: at most max
// entries, and at most maxBare hosts that have no entry, only a cooldown.
type registry struct {
	seed maphash.Seed
	tab  atomic.Pointer[hostTable]
	// limit gives a new entry's host its limiter, if its policy wants one
	// (Transport.startLimiter); set before the registry is used.
	limit func(h *hostState, p *resolved)

	mu       sync.Mutex
	nhosts   int                 // hosts in tab; guarded by mu
	ntomb    int                 // tombstones in tab; guarded by mu
	nbare    int                 // hosts in tab without an entry; guarded by mu
	n        int                 // entries; guarded by mu
	max      int                 // bound on n
	maxBare  int                 // bound on nbare
	roles    map[string]*roleRef // interned role names of the entries; guarded by mu
	nextScan int64               // no eviction sweep before this time; guarded by mu
}

// roleRef is an interned role name and the number of entries that use it.
type roleRef struct {
	name string
	n    int
}

// Bounds and pacing of the registry.
const (
	// bareHostsPerEntry and minBareHosts size the bound on hosts that
	// only cool down: max(bareHostsPerEntry × max_hosts, minBareHosts).
	bareHostsPerEntry = 2
	minBareHosts      = 4096
	// sweepBackoff is how long the registry waits after a sweep that could
	// evict nothing before it sweeps again; new (host, role)s meanwhile go
	// untracked at no cost.
	sweepBackoff = time.Second
	// bareSweepInterval is how often a Transport drops the hosts whose
	// cooldown has ended and that have no entry.
	bareSweepInterval = time.Minute
)

type hostTable struct {
	slots []hostSlot
	mask  uint64
}

// hostSlot is a slot of a hostTable. The hash lets a probe skip other hosts
// without touching their state; four slots share a cache line. A slot is
// written under registry.mu: hash, then h; when a host is removed, h
// becomes the tombstone and the slot may later hold another host.
type hostSlot struct {
	hash atomic.Uint64
	h    atomic.Pointer[hostState]
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

// insert adds h, which must be absent, in the first free slot or
// tombstone. The table must have a free slot.
func (t *hostTable) insert(h *hostState) {
	for i := h.hash & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if old := s.h.Load(); old == nil || old == tombstone {
			s.hash.Store(h.hash)
			s.h.Store(h)
			return
		}
	}
}

// each calls f for every host in the table.
func (t *hostTable) each(f func(*hostState)) {
	for i := range t.slots {
		if h := t.slots[i].h.Load(); h != nil && h != tombstone {
			f(h)
		}
	}
}

func newRegistry(maxEntries int) *registry {
	r := &registry{
		seed:    maphash.MakeSeed(),
		max:     maxEntries,
		maxBare: max(bareHostsPerEntry*maxEntries, minBareHosts),
		roles:   make(map[string]*roleRef),
	}
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
	h := s.h.Load()
	// The flags are set after the entry's other fields: loaded first, they
	// make those safe to read.
	if e := &h.first; e.flags.Load()&(flagLive|flagEvicted) == flagLive && e.role == role {
		return e
	}
	return h.find(role)
}

// host returns the state of host, or nil.
func (r *registry) host(host string) *hostState {
	if s := r.tab.Load().find(r.hash(host), host); s != nil {
		return s.h.Load()
	}
	return nil
}

// addHostLocked adds the state of host, which must be absent, growing or
// cleaning the table first when it is three quarters full. Callers hold mu.
func (r *registry) addHostLocked(hash uint64, host string, now int64) *hostState {
	t := r.tab.Load()
	if 4*(r.nhosts+r.ntomb+1) > 3*len(t.slots) {
		size := len(t.slots)
		if 4*(r.nhosts+1) > 3*size/2 { // still over half full without tombstones
			size *= 2
		}
		t = r.rebuildLocked(size)
	}
	h := newHostState(host, hash)
	h.born = now
	t.insert(h)
	r.nhosts++
	return h
}

// removeHostLocked removes h from the table, leaving a tombstone. Callers
// hold mu.
func (r *registry) removeHostLocked(h *hostState) {
	s := r.tab.Load().find(h.hash, h.name)
	if s == nil || s.h.Load() != h {
		return
	}
	s.h.Store(tombstone)
	h.detached.Store(true)
	r.nhosts--
	r.ntomb++
	if h.bare() {
		r.nbare--
	}
}

// rebuildLocked publishes a table of size slots holding the current hosts,
// without tombstones. Callers hold mu.
func (r *registry) rebuildLocked(size int) *hostTable {
	nt := newHostTable(size)
	r.tab.Load().each(nt.insert)
	r.ntomb = 0
	r.tab.Store(nt)
	return nt
}

// bareHostLocked returns the state of host, adding it if absent, for a
// cooldown that ends at until. A new host has no entry, and such hosts are
// bounded by maxBare: past it, expired ones go first, then the cooldown
// that ends soonest, which may be the new one (then h is nil). dropped
// names the host whose cooldown was dropped, "" if none. Callers hold mu.
func (r *registry) bareHostLocked(host string, until, now int64) (h *hostState, dropped string) {
	hash := r.hash(host)
	if s := r.tab.Load().find(hash, host); s != nil {
		return s.h.Load(), ""
	}
	if r.nbare >= r.maxBare {
		r.pruneBareLocked(now)
	}
	if r.nbare >= r.maxBare {
		var soonest *hostState
		r.tab.Load().each(func(h *hostState) {
			if h.bare() && (soonest == nil || h.until.Load() < soonest.until.Load()) {
				soonest = h
			}
		})
		if soonest == nil || soonest.until.Load() >= until {
			return nil, host
		}
		dropped = soonest.name
		r.removeHostLocked(soonest)
	}
	h = r.addHostLocked(hash, host, now)
	r.nbare++
	return h, dropped
}

// pruneBareLocked removes the hosts that have no entry and no cooldown.
// Callers hold mu.
func (r *registry) pruneBareLocked(now int64) {
	r.tab.Load().each(func(h *hostState) {
		if h.bare() && !h.coolingDown(now) {
			r.removeHostLocked(h)
		}
	})
}

// pruneBare removes the hosts that have no entry and no cooldown.
func (r *registry) pruneBare(now int64) {
	r.mu.Lock()
	r.pruneBareLocked(now)
	r.mu.Unlock()
}

// create returns the entry for (host, role), creating it with the policy
// that pol returns when absent. It returns nil when the registry is full of
// entries that must not be evicted (open, half-open, failing recently or
// cooling down). pol is called under mu, so that a policy update, which
// takes mu too, sees every entry.
func (r *registry) create(host, role string, pol func(host, role string) *resolved, now int64) *entry {
	hash := r.hash(host)
	r.mu.Lock()
	defer r.mu.Unlock()
	var h *hostState
	if s := r.tab.Load().find(hash, host); s != nil {
		h = s.h.Load()
		if e := h.find(role); e != nil {
			return e
		}
	}
	if r.n >= r.max && !r.evictLocked(now) {
		return nil
	}
	if h == nil || h.detached.Load() { // the sweep may have removed it
		h = r.addHostLocked(hash, host, now)
	} else if h.bare() {
		r.nbare--
	}
	e := &h.first
	if h.firstUsed {
		e = new(entry)
	}
	h.firstUsed = true
	e.role, e.host = r.internLocked(role), h
	e.pol.Store(pol(h.name, e.role))
	if r.limit != nil && h.lim.Load() == nil {
		r.limit(h, e.pol.Load()) // before any request can reach the host unpaced
	}
	e.flags.Store(flagLive | flagUsed) // publishes the fields above
	h.setEntriesLocked(append(h.entriesLocked(), e))
	r.n++
	return e
}

// internLocked returns the interned copy of role and counts one more use.
func (r *registry) internLocked(role string) string {
	ref, ok := r.roles[role]
	if !ok {
		ref = &roleRef{name: strings.Clone(role)}
		r.roles[ref.name] = ref
	}
	ref.n++
	return ref.name
}

// releaseLocked counts one use less of an interned role.
func (r *registry) releaseLocked(role string) {
	if ref := r.roles[role]; ref != nil {
		if ref.n--; ref.n == 0 {
			delete(r.roles, role)
		}
	}
}

// evictLocked removes idle entries to make room (see entry.idle),
// preferring those not used since the last sweep (a second chance). It
// frees an eighth of the capacity when it can, so that its O(n) cost is
// amortized; after a sweep that frees nothing it does not sweep again for
// sweepBackoff. It removes hosts left with nothing, and reports whether
// there is room for one more entry. It allocates only for hosts it changes.
func (r *registry) evictLocked(now int64) bool {
	if now < r.nextScan {
		return false
	}
	want := max(1, r.max/8)
	freed := 0
	t := r.tab.Load()
	for pass := 0; pass < 2 && freed < want; pass++ {
		t.each(func(h *hostState) {
			var kept []*entry
			changed := false
			i := 0
			h.each(func(e *entry) {
				defer func() { i++ }()
				// In the first pass an entry used since the last sweep
				// is spared, and marked unused: its second chance.
				if freed < want && e.idle(now) && !(pass == 0 && e.flags.And(^uint32(flagUsed))&flagUsed != 0) {
					if !changed {
						kept, changed = h.entriesLocked()[:i], true
					}
					e.flags.Or(flagEvicted)
					r.releaseLocked(e.role)
					freed++
					return
				}
				if changed {
					kept = append(kept, e)
				}
			})
			if !changed {
				return
			}
			h.setEntriesLocked(kept)
			if len(kept) == 0 {
				r.nbare++
				if !h.coolingDown(now) {
					r.removeHostLocked(h)
				}
			}
		})
	}
	r.n -= freed
	if freed == 0 {
		r.nextScan = now + int64(sweepBackoff)
	}
	return r.n < r.max
}

// each calls f, under the registry lock, for every entry with its host,
// and once with a nil entry for every host that has none.
func (r *registry) each(f func(*hostState, *entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tab.Load().each(func(h *hostState) {
		if h.bare() {
			f(h, nil)
			return
		}
		h.each(func(e *entry) { f(h, e) })
	})
}

// eachUnlocked calls f for every entry with its host, and once with a nil
// entry for every host that has none, without the registry lock: it reads
// the table and the entry lists as the request path does, so it may miss
// an entry added or see one removed while it runs. For observers that must
// not wait on the lock the request path takes (metrics collection).
func (r *registry) eachUnlocked(f func(*hostState, *entry)) {
	r.tab.Load().each(func(h *hostState) {
		if h.bare() {
			f(h, nil)
			return
		}
		h.each(func(e *entry) { f(h, e) })
	})
}

// hostEntries returns the state and entries of host (nil if unknown).
func (r *registry) hostEntries(host string) (*hostState, []*entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.tab.Load().find(r.hash(host), host)
	if s == nil {
		return nil, nil
	}
	h := s.h.Load()
	return h, h.entriesLocked()
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
