package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// defaultRedisPrefix is the key prefix of a Redis store whose URL has no
// prefix query parameter.
const defaultRedisPrefix = "hostbreaker:"

// Timeouts and retries of a Redis store, applied when the URL does not set
// them. The store is used from background goroutines that must not hang for
// long while Redis is down.
const (
	redisDialTimeout     = 500 * time.Millisecond
	redisIOTimeout       = 500 * time.Millisecond
	redisMaxRetries      = 1
	redisMaxRetryBackoff = 100 * time.Millisecond
	redisOpenPingTimeout = 300 * time.Millisecond
)

// Pacing of the subscription goroutine: how long it waits for a message
// before it pings the server, and how long it backs off, at first and at
// most, after a connection error.
const (
	redisPingInterval = time.Second
	redisMinBackoff   = 50 * time.Millisecond
	redisMaxBackoff   = time.Second
)

// redisScanCount is the COUNT hint of the SCANs that list a store's keys.
const redisScanCount = 500

// redisStore is the [Store] that a fleet of processes shares through Redis.
//
// Under its prefix P it keeps, for a host H and a source S escaped with
// url.QueryEscape (so that neither can contain ':' or a glob character):
//   - P+"h:"+H, a hash from escaped role to encodeRecord of the cooldown,
//     expiring at the latest Until among its fields;
//   - P+"r:"+H, the encodeRecord of the reset marker, expiring at its Until;
//   - P+"s:"+S, the encodeStates of the states S published, expiring with them.
//
// Put publishes the host on the channel P+"events" when it changes anything.
type redisStore struct {
	client  *redis.Client
	prefix  string
	channel string // prefix + "events"
	changes chan struct{}

	ctx    context.Context // canceled by Close; stops the watch goroutine
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch goroutine returns

	mu     sync.Mutex
	ps     *redis.PubSub // current subscription; replaced by watch, closed by Close
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// openRedisStore opens the Redis store that rawURL names:
// redis://[user:pass@]host:port/db or rediss://… (TLS). The query parameter
// prefix sets the key prefix (default "hostbreaker:"); other query
// parameters are go-redis options (see redis.ParseURL).
//
// Only the URL is validated: the store opens even when Redis is unreachable,
// and connects when it comes back. Errors name the URL with its password
// redacted.
func openRedisStore(rawURL string) (Store, error) {
	opt, prefix, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, err
	}
	client, err := newRedisClient(opt)
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: open store %q: %w", redactURL(rawURL), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &redisStore{
		client:  client,
		prefix:  prefix,
		channel: prefix + "events",
		changes: make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		ps:      client.Subscribe(ctx), // no channel yet: does not connect
	}
	// Warm the pool; an unreachable server is not an error here.
	pctx, pcancel := context.WithTimeout(ctx, redisOpenPingTimeout)
	_ = client.Ping(pctx).Err()
	pcancel()
	go s.watch(s.ps)
	return s, nil
}

// parseRedisURL returns the go-redis options and the key prefix that rawURL
// names, with the store's short timeouts filled in where the URL sets none.
func parseRedisURL(rawURL string) (*redis.Options, string, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("hostbreaker: open store %q: %s", redactURL(rawURL), fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// The parser's message may quote part of the password; keep it
		// only when the URL has no user information.
		var ue *url.Error
		if errors.As(err, &ue) && !strings.Contains(rawURL, "@") {
			return nil, "", fail("invalid URL: %v", ue.Err)
		}
		return nil, "", fail("invalid URL")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, "", fail("want a redis:// or rediss:// URL")
	}
	if u.Opaque != "" {
		return nil, "", fail("want redis://[user:pass@]host:port/db")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, "", fail("invalid query: %v", err)
	}
	prefix := defaultRedisPrefix
	if ps, ok := q["prefix"]; ok {
		if len(ps) != 1 || ps[0] == "" {
			return nil, "", fail("query parameter prefix must be given once and not be empty")
		}
		prefix = ps[0]
		delete(q, "prefix")
		u.RawQuery = q.Encode()
	}
	opt, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, "", fail("%v", err)
	}
	if opt.DialTimeout == 0 {
		opt.DialTimeout = redisDialTimeout
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = redisIOTimeout
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = redisIOTimeout
	}
	if opt.MaxRetries == 0 {
		opt.MaxRetries = redisMaxRetries
	}
	if opt.MaxRetryBackoff == 0 {
		opt.MaxRetryBackoff = redisMaxRetryBackoff
	}
	opt.DialerRetries = 1
	opt.ContextTimeoutEnabled = true
	return opt, prefix, nil
}

// newRedisClient returns redis.NewClient(opt), turning a panic over options
// it cannot use (an absurd pool_size, say) into an error.
func newRedisClient(opt *redis.Options) (c *redis.Client, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("create client: %v", p)
		}
	}()
	return redis.NewClient(opt), nil
}

// redactURL returns rawURL with its password, if any, replaced by "xxxxx",
// even when rawURL does not parse.
func redactURL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return rawURL
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return rawURL
	}
	user, _, hasPass := strings.Cut(rest[:at], ":")
	if !hasPass {
		return rawURL
	}
	return scheme + "://" + user + ":xxxxx@" + rest[at+1:]
}

// Key kinds, each followed by an escaped host or source.
const (
	redisKindCooldowns = "h:"
	redisKindReset     = "r:"
	redisKindStates    = "s:"
)

// key returns the key of kind for the host or source name.
func (s *redisStore) key(kind, name string) string {
	return s.prefix + kind + url.QueryEscape(name)
}

// unescapeName returns the host, role or source that url.QueryEscape turned
// into esc; ok is false when esc is not exactly such an escape, as for a key
// of another store whose prefix extends this store's.
func unescapeName(esc string) (name string, ok bool) {
	name, err := url.QueryUnescape(esc)
	if err != nil || url.QueryEscape(name) != esc {
		return "", false
	}
	return name, true
}

// globEscape escapes the characters that are special in a Redis MATCH
// pattern, so that s matches itself only.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// redisPutScript merges one record into a host's cooldowns and reset marker
// atomically and publishes a message when it changed anything.
//
// KEYS: 1 the host's cooldown hash, 2 its reset marker.
// ARGV: 1 hash field (escaped role), 2 encodeRecord of the record,
// 3 "reset", "manual" or "auto", 4 now (unix ns), 5 channel, 6 message.
//
// Times are read from the stored JSON as decimal strings and compared as
// (seconds, nanoseconds) pairs: a Lua number cannot hold a unix time in
// nanoseconds exactly. A value whose times cannot be read counts as expired.
// A cooldown written at or before an unexpired reset marker is dropped: the
// reset already deleted it, whatever order the two writes arrive in.
var redisPutScript = redis.NewScript(`
local function ts(s)
  if s == nil or #s == 0 or #s > 19 then return nil end
  s = string.rep('0', 19 - #s) .. s
  return {tonumber(string.sub(s, 1, 10)), tonumber(string.sub(s, 11, 19)), s}
end
local function field(v, name)
  if type(v) ~= 'string' then return nil end
  return ts(string.match(v, '"' .. name .. '":(%d+)'))
end
local function lt(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end
local function pxat(t)
  local ms = tonumber(string.sub(t[3], 1, 13))
  if tonumber(string.sub(t[3], 14, 19)) > 0 then ms = ms + 1 end
  return string.format('%.0f', ms)
end

local hkey, mkey = KEYS[1], KEYS[2]
local f, val, kind = ARGV[1], ARGV[2], ARGV[3]
local now = ts(ARGV[4])
local nu, na = field(val, 'until'), field(val, 'at')
if now == nil or nu == nil or na == nil then
  return redis.error_reply('hostbreaker: bad arguments')
end
local live = lt(now, nu)
local changed = false

-- tidy removes expired fields and sets the key to expire with its last one.
local function tidy()
  local all = redis.call('HGETALL', hkey)
  local last = nil
  for i = 1, #all, 2 do
    local u = field(all[i + 1], 'until')
    if u == nil or not lt(now, u) then
      redis.call('HDEL', hkey, all[i])
    elseif last == nil or lt(last, u) then
      last = u
    end
  end
  if last ~= nil then redis.call('PEXPIREAT', hkey, pxat(last)) end
end

if kind == 'reset' then
  local all = redis.call('HGETALL', hkey)
  for i = 1, #all, 2 do
    local a = field(all[i + 1], 'at')
    if a == nil or not lt(na, a) then
      redis.call('HDEL', hkey, all[i])
      changed = true
    end
  end
  tidy()
  if live then
    local old = redis.call('GET', mkey)
    local oa, ou = field(old, 'at'), field(old, 'until')
    if oa == nil or ou == nil or not lt(now, ou) or not lt(na, oa) then
      redis.call('SET', mkey, val, 'PXAT', pxat(nu))
      changed = true
    end
  end
else
  local m = redis.call('GET', mkey)
  local ma, mu = field(m, 'at'), field(m, 'until')
  if ma ~= nil and mu ~= nil and lt(now, mu) and not lt(ma, na) then
    return 0
  end
  local old = redis.call('HGET', hkey, f)
  local ou = field(old, 'until')
  local oldLive = ou ~= nil and lt(now, ou)
  if kind == 'manual' or not oldLive or lt(ou, nu) then
    if live then
      redis.call('HSET', hkey, f, val)
      changed = true
    elseif old then
      redis.call('HDEL', hkey, f)
      changed = oldLive
    end
  end
  tidy()
end
if changed then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
if changed then return 1 end
return 0
`)

// Records returns the unexpired cooldowns and reset markers under the
// store's prefix. Values that do not decode, or do not match the key that
// holds them, are skipped.
func (s *redisStore) Records(ctx context.Context) ([]Record, error) {
	keys, err := s.scan(ctx, globEscape(s.prefix)+"[hr]:*")
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: redis store: records: %w", err)
	}
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	hashes := make(map[string]*redis.MapStringStringCmd)
	markers := make(map[string]*redis.StringCmd)
	for _, k := range keys {
		rest := k[len(s.prefix):]
		host, ok := unescapeName(rest[2:])
		if !ok {
			continue
		}
		switch rest[:2] {
		case redisKindCooldowns:
			hashes[host] = pipe.HGetAll(ctx, k)
		case redisKindReset:
			markers[host] = pipe.Get(ctx, k)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return nil, fmt.Errorf("hostbreaker: redis store: records: %w", err)
	}
	now := time.Now()
	var out []Record
	for host, cmd := range hashes {
		fields, err := cmd.Result()
		if err != nil {
			continue // a key of another type, or gone
		}
		for f, v := range fields {
			role, ok := unescapeName(f)
			if !ok {
				continue
			}
			r, err := decodeRecord([]byte(v))
			if err != nil || r.Host != host || r.Role != role || r.Reason == ReasonReset || !r.Until.After(now) {
				continue
			}
			out = append(out, r)
		}
	}
	for host, cmd := range markers {
		v, err := cmd.Bytes()
		if err != nil {
			continue
		}
		r, err := decodeRecord(v)
		if err != nil || r.Host != host || r.Reason != ReasonReset || !r.Until.After(now) {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// isRedisReply reports whether err is an error reply of the server or
// redis.Nil, which concern one command of a pipeline, rather than a failure
// to talk to the server.
func isRedisReply(err error) bool {
	var re redis.Error
	return errors.Is(err, redis.Nil) || errors.As(err, &re) && !errors.Is(err, redis.ErrClosed)
}

// scan returns the keys that match the MATCH pattern, without duplicates.
func (s *redisStore) scan(ctx context.Context, pattern string) ([]string, error) {
	seen := make(map[string]struct{})
	var keys []string
	var cursor uint64
	for {
		page, next, err := s.client.Scan(ctx, cursor, pattern, redisScanCount).Result()
		if err != nil {
			return nil, err
		}
		for _, k := range page {
			if _, dup := seen[k]; !dup && strings.HasPrefix(k, s.prefix) && len(k) >= len(s.prefix)+2 {
				seen[k] = struct{}{}
				keys = append(keys, k)
			}
		}
		if next == 0 {
			return keys, nil
		}
		cursor = next
	}
}

// Put merges r into the store atomically, with the rules of [Store.Put],
// and signals the other stores when that changed anything. r must have a
// normalized host, a known reason and both times set.
func (s *redisStore) Put(ctx context.Context, r Record) error {
	if h, err := normalizeHost("", r.Host); err != nil || h != r.Host {
		return fmt.Errorf("hostbreaker: redis store: put %q: host is not normalized", r.Host)
	}
	if !exactUnixNano(r.Until) || !exactUnixNano(r.At) {
		return fmt.Errorf("hostbreaker: redis store: put %s: Until and At must be set (and after 1970)", r.Host)
	}
	val := encodeRecord(r)
	if _, err := decodeRecord(val); err != nil {
		return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, err)
	}
	kind := "auto"
	switch r.Reason {
	case ReasonReset:
		kind = "reset"
	case ReasonManual:
		kind = "manual"
	}
	keys := []string{s.key(redisKindCooldowns, r.Host), s.key(redisKindReset, r.Host)}
	err := redisPutScript.Run(ctx, s.client, keys,
		url.QueryEscape(r.Role), val, kind, time.Now().UnixNano(), s.channel, r.Host).Err()
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, err)
	}
	return nil
}

// exactUnixNano reports whether t is after the Unix epoch and its
// UnixNano is exact, so that the stored form means t.
func exactUnixNano(t time.Time) bool {
	ns := t.UnixNano()
	return ns > 0 && time.Unix(0, ns).Equal(t)
}

// PublishStates replaces the states that source published with states,
// until ttl from now. A ttl that is not positive deletes them.
func (s *redisStore) PublishStates(ctx context.Context, source string, states []PublishedState, ttl time.Duration) error {
	key := s.key(redisKindStates, source)
	var err error
	if ttl <= 0 {
		err = s.client.Del(ctx, key).Err()
	} else {
		expires := time.Now().Add(ttl)
		// Round up to the millisecond PX counts in, so the key does not
		// vanish before the value says it expires.
		px := (ttl + time.Millisecond - 1).Truncate(time.Millisecond)
		err = s.client.Set(ctx, key, encodeStates(source, states, expires), px).Err()
	}
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: publish states of %q: %w", source, err)
	}
	return nil
}

// States returns the unexpired states that every source published under
// the store's prefix.
func (s *redisStore) States(ctx context.Context) ([]PublishedState, error) {
	keys, err := s.scan(ctx, globEscape(s.prefix+redisKindStates)+"*")
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: redis store: states: %w", err)
	}
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	cmds := make(map[string]*redis.StringCmd, len(keys))
	for _, k := range keys {
		source, ok := unescapeName(k[len(s.prefix)+len(redisKindStates):])
		if ok {
			cmds[source] = pipe.Get(ctx, k)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return nil, fmt.Errorf("hostbreaker: redis store: states: %w", err)
	}
	now := time.Now()
	var out []PublishedState
	for source, cmd := range cmds {
		v, err := cmd.Bytes()
		if err != nil {
			continue
		}
		src, states, expires, err := decodeStates(v)
		if err != nil || src != source || !expires.After(now) {
			continue
		}
		out = append(out, states...)
	}
	return out, nil
}

// Changes returns a channel that receives a value when a Put of any store
// sharing the prefix changed the records, and whenever the subscription to
// those changes is (re)established, since messages sent while it was down
// are lost. Values coalesce: the channel holds one at most.
func (s *redisStore) Changes() <-chan struct{} { return s.changes }

// signal sends on the changes channel without blocking.
func (s *redisStore) signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// watch receives from the subscription ps until Close, signalling changes.
// go-redis reconnects and resubscribes after a connection error; watch backs
// off between failed attempts, pings an idle connection, and replaces the
// subscription when a ping goes unanswered (a dead peer that sent no reset).
func (s *redisStore) watch(ps *redis.PubSub) {
	defer close(s.done)
	_ = ps.Subscribe(s.ctx, s.channel) // records the channel even if it fails
	backoff := redisMinBackoff
	pingPending := false
	for s.ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(s.ctx, redisPingInterval)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, redis.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pingPending {
					pingPending = true
					_ = ps.Ping(s.ctx)
					continue
				}
				if ps = s.resubscribe(ps); ps == nil {
					return
				}
				pingPending = false
				continue
			}
			pingPending = false
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, redisMaxBackoff)
			continue
		}
		backoff, pingPending = redisMinBackoff, false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				s.signal()
			}
		case *redis.Message:
			s.signal()
		}
	}
}

// resubscribe replaces ps with a new subscription, or returns nil when the
// store is closed.
func (s *redisStore) resubscribe(ps *redis.PubSub) *redis.PubSub {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	nps := s.client.Subscribe(s.ctx)
	s.ps = nps
	s.mu.Unlock()
	_ = ps.Close()
	_ = nps.Subscribe(s.ctx, s.channel)
	return nps
}

// Close stops the subscription goroutine and closes the connections. It
// is safe to call more than once; later calls return the first result.
func (s *redisStore) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		psErr := s.ps.Close()
		s.mu.Unlock()
		<-s.done
		if errors.Is(psErr, redis.ErrClosed) {
			psErr = nil
		}
		if err := errors.Join(psErr, s.client.Close()); err != nil {
			s.closeErr = fmt.Errorf("hostbreaker: redis store: close: %w", err)
		}
	})
	return s.closeErr
}
