package hostbreaker

// This file holds the Redis Store: records in per-host hashes with
// indexes and a change channel, shared by a fleet. The Store contract and
// merge rules are in store.go.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// Put is an optimistic transaction: it gives up after redisPutAttempts
// lost races, waiting up to redisPutBackoff (times the attempt number,
// with jitter) between two.
const (
	redisPutAttempts = 20
	redisPutBackoff  = time.Millisecond
)

// redisStore is the [Store] that a fleet of processes shares through Redis.
//
// Under its prefix P, which ends in ':', it keeps, for a host H and a
// source S escaped with url.QueryEscape (so that neither holds ':' or a
// glob character):
//   - P+"h:"+H, a hash from slot (see recordSlot) to encodeRecord of the
//     host's cooldowns and shared trips, expiring at the latest Until among
//     its fields;
//   - P+"r:"+H, the encodeRecord of the host's reset marker, expiring at
//     its Until;
//   - P+"s:"+S, the encodeStates of the states S published, expiring with
//     them;
//   - P+"j:events", the journal: a sorted set of events scored by their
//     Time in Unix milliseconds (rounded down), each member a tag that
//     makes it unique (see redisJournalMember) followed by its
//     encodeEvent; it expires limits.Retention after the last
//     AppendEvents that had one;
//   - P+"i:hosts", a sorted set of the hosts (not escaped) that have
//     records or a marker, scored by the latest expiry among them in Unix
//     milliseconds, and P+"i:sources", one of the sources that published
//     states, scored by their expiry. Records and States read these
//     indexes: they never SCAN, so their cost does not grow with the other
//     keys of the database. Writes drop the members that expired;
//   - P+"p:"+S, the encodeConfig of the configuration S published,
//     expiring configRetention after the publication does, and
//     P+"i:configs", a sorted set of the sources that published one,
//     scored by the publication's expiry: PublishConfig drops the members
//     (and keys) kept past configRetention or beyond configKeep;
//   - P+"o:overrides", a hash from a Hosts key, escaped, to encodeOverride
//     of its tuned override. It never expires; Overrides reads it whole,
//     with one HGETALL.
//
// Every key is P, a kind of one letter and ':', then a name without ':'. As
// P ends in ':', the keys of stores with different prefixes never meet,
// even when one prefix extends the other.
//
// Put publishes the host on the channel P+"events" when it changes anything,
// and PutOverride publishes "o:" and the Hosts key.
//
// In a Redis Cluster, every key and the channel start with "{P}" instead of
// P (see redisKeyBase and redisKey): the hash tag puts all of a store's
// keys in one slot, which the transactions need, since each of them touches
// a host's keys and an index together. One store is then served by one
// primary of the cluster; different prefixes spread over it.
type redisStore struct {
	client  redis.UniversalClient // a *redis.Client (one server, or Sentinel's primary) or a *redis.ClusterClient
	prefix  string                // the prefix of the URL
	base    string                // what every key and the channel start with; see redisKey
	channel string                // base + "events"
	changes chan struct{}

	ctx    context.Context // canceled by Close; stops the watch goroutine
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch goroutine returns

	mu     sync.Mutex
	ps     *redis.PubSub // current subscription; replaced by watch, closed by Close
	closed bool

	journalID  uint64        // random; tells this store's journal members from other stores'
	journalSeq atomic.Uint64 // numbers this store's journal members

	isClosed  atomic.Bool // set by Close: a cluster client may still answer after its Close
	closeOnce sync.Once
	closeErr  error

	pollMu sync.Mutex  // serializes polls
	mirror redisMirror // guarded by pollMu
	resync atomic.Bool // the subscription was (re)established: the next poll reads everything

	pubMu     sync.Mutex
	published map[string]string // the states each source last published, encoded without expiry; guarded by pubMu
}

// openRedisStore opens the Redis store that rawURL names:
// redis://[user:pass@]host:port/db or rediss://… (TLS) for one server,
// redis+cluster://[user:pass@]host:port,host:port,…/ for a Redis Cluster,
// and redis+sentinel://[user:pass@]host:port,…/primary[/db] for a primary
// that Redis Sentinels at the hosts watch (rediss+cluster:// and
// rediss+sentinel:// with TLS); see parseRedisStoreURL. The query parameter
// prefix sets the key prefix (default "hostbreaker:"; one that does not end
// in ':' gets one); other query parameters are go-redis options (see
// redis.ParseURL, redis.ParseClusterURL and redis.ParseFailoverURL).
//
// Only the URL is validated: the store opens even when Redis is unreachable,
// and connects when it comes back. Errors name the URL with its password
// redacted.
func openRedisStore(rawURL string) (Store, error) {
	cfg, err := parseRedisStoreURL(rawURL)
	if err != nil {
		return nil, err
	}
	client, err := cfg.newClient()
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: open store %q: %w", redactURL(rawURL), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &redisStore{
		client:  client,
		prefix:  cfg.prefix,
		base:    redisKeyBase(cfg.prefix, cfg.cluster != nil),
		changes: make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		ps:      client.Subscribe(ctx), // no channel yet: does not connect

		journalID: rand.Uint64(),
	}
	s.channel = s.redisKey("events")
	// Warm the pool; an unreachable server is not an error here.
	pctx, pcancel := context.WithTimeout(ctx, redisOpenPingTimeout)
	_ = client.Ping(pctx).Err()
	pcancel()
	go s.watch(s.ps)
	return s, nil
}

// redisStoreConfig is what a Redis store URL says: the key prefix and the
// options of exactly one of the three kinds of client.
type redisStoreConfig struct {
	prefix   string
	single   *redis.Options         // redis://, rediss://
	cluster  *redis.ClusterOptions  // redis+cluster://, rediss+cluster://
	failover *redis.FailoverOptions // redis+sentinel://, rediss+sentinel://
}

// newClient returns the client of c, turning a panic over options go-redis
// cannot use (an absurd pool_size, say) into an error.
func (c redisStoreConfig) newClient() (client redis.UniversalClient, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("create client: %v", p)
		}
	}()
	switch {
	case c.cluster != nil:
		return redis.NewClusterClient(c.cluster), nil
	case c.failover != nil:
		return redis.NewFailoverClient(c.failover), nil
	default:
		return redis.NewClient(c.single), nil
	}
}

// parseRedisStoreURL returns what a Redis store URL of any of the three
// forms says (see openRedisStore), with the store's short timeouts filled
// in where the URL sets none.
//
// redis+cluster:// and redis+sentinel:// take a comma-separated list of
// host:port (a bracketed IPv6 address is allowed) where a URL has one; the
// user and password authenticate to the Redis servers (the cluster's nodes,
// or the primary and its replicas), and for Sentinel the query parameters
// sentinel_username and sentinel_password to the Sentinels. A cluster URL
// has no path (a cluster has one database); a Sentinel URL's path is the
// primary's name as the Sentinels know it, then optionally the database.
// The other query parameters are those of redis.ParseClusterURL and
// redis.ParseFailoverURL.
func parseRedisStoreURL(rawURL string) (redisStoreConfig, error) {
	scheme, rest, _ := strings.Cut(rawURL, "://")
	base, topology, _ := strings.Cut(strings.ToLower(scheme), "+")
	if topology == "" {
		opt, prefix, err := parseRedisURL(rawURL)
		return redisStoreConfig{prefix: prefix, single: opt}, err
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("hostbreaker: open store %q: %s", redactURL(rawURL), fmt.Sprintf(format, args...))
	}
	if base != "redis" && base != "rediss" || topology != "cluster" && topology != "sentinel" {
		return redisStoreConfig{}, fail("want redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://")
	}
	// The authority ends at the first '/', '?' or '#'; a password must
	// escape them. Its host list is split here: net/url takes one host.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hostList := "", authority
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		userinfo, hostList = authority[:at+1], authority[at+1:]
	}
	var hosts []string
	for _, h := range strings.Split(hostList, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" || port == "" {
			return redisStoreConfig{}, fail("want host:port, comma-separated, got %q", h)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return redisStoreConfig{}, fail("invalid port in %q", h)
		}
		hosts = append(hosts, net.JoinHostPort(host, port))
	}
	u, err := url.Parse(base + "://" + userinfo + "placeholder" + tail)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && userinfo == "" {
			return redisStoreConfig{}, fail("invalid URL: %v", ue.Err)
		}
		return redisStoreConfig{}, fail("invalid URL")
	}
	if u.Fragment != "" {
		return redisStoreConfig{}, fail("a store URL takes no fragment")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return redisStoreConfig{}, fail("invalid query: %v", err)
	}
	prefix, err := takePrefix(q)
	if err != nil {
		return redisStoreConfig{}, fail("%v", err)
	}
	for _, h := range hosts[1:] {
		q.Add("addr", h)
	}
	user, pass := "", ""
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	cfg := redisStoreConfig{prefix: prefix}
	if topology == "cluster" {
		if u.Path != "" && u.Path != "/" {
			return redisStoreConfig{}, fail("a cluster URL has no path (a cluster has one database): want %s+cluster://host:port,host:port/?prefix=…", base)
		}
		gu := url.URL{Scheme: base, User: u.User, Host: hosts[0], RawQuery: q.Encode()}
		opt, err := redis.ParseClusterURL(gu.String())
		if err != nil {
			return redisStoreConfig{}, fail("%v", err)
		}
		applyRedisDefaults(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.MaxRetryBackoff, &opt.MaxRetries, &opt.DialerRetries, &opt.ContextTimeoutEnabled)
		cfg.cluster = opt
		return cfg, nil
	}
	path := strings.Split(strings.Trim(u.Path, "/"), "/")
	if path[0] == "" || len(path) > 2 {
		return redisStoreConfig{}, fail("want %s+sentinel://host:port,host:port/primary-name[/db]", base)
	}
	sentinelUser, sentinelPass := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	q.Set("master_name", path[0])
	gu := url.URL{Scheme: base, Host: hosts[0], RawQuery: q.Encode()}
	if len(path) == 2 {
		gu.Path = "/" + path[1]
	}
	opt, err := redis.ParseFailoverURL(gu.String())
	if err != nil {
		return redisStoreConfig{}, fail("%v", err)
	}
	if user != "" || pass != "" {
		opt.Username, opt.Password = user, pass
	}
	opt.SentinelUsername, opt.SentinelPassword = sentinelUser, sentinelPass
	applyRedisDefaults(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.MaxRetryBackoff, &opt.MaxRetries, &opt.DialerRetries, &opt.ContextTimeoutEnabled)
	cfg.failover = opt
	return cfg, nil
}

// takePrefix removes the prefix query parameter from q and returns the key
// prefix it sets, defaultRedisPrefix when it is absent.
func takePrefix(q url.Values) (string, error) {
	ps, ok := q["prefix"]
	if !ok {
		return defaultRedisPrefix, nil
	}
	if len(ps) != 1 || ps[0] == "" {
		return "", errors.New("query parameter prefix must be given once and not be empty")
	}
	prefix := ps[0]
	if !strings.HasSuffix(prefix, ":") {
		prefix += ":" // keeps prefixes apart; see redisStore
	}
	delete(q, "prefix")
	return prefix, nil
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
	prefix, err := takePrefix(q)
	if err != nil {
		return nil, "", fail("%v", err)
	}
	u.RawQuery = q.Encode()
	opt, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, "", fail("%v", err)
	}
	applyRedisDefaults(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.MaxRetryBackoff, &opt.MaxRetries, &opt.DialerRetries, &opt.ContextTimeoutEnabled)
	return opt, prefix, nil
}

// applyRedisDefaults sets the store's timeouts and retries on the fields
// of a go-redis options struct (single node, cluster or failover) that the
// URL left unset, one dial attempt per retry, and context deadlines on.
func applyRedisDefaults(dial, read, write, backoff *time.Duration, retries, dialerRetries *int, ctxTimeout *bool) {
	*dial = cmp.Or(*dial, redisDialTimeout)
	*read = cmp.Or(*read, redisIOTimeout)
	*write = cmp.Or(*write, redisIOTimeout)
	*retries = cmp.Or(*retries, redisMaxRetries)
	*backoff = cmp.Or(*backoff, redisMaxRetryBackoff)
	*dialerRetries = 1
	*ctxTimeout = true
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

// Key kinds, each followed by an escaped host or source, and the indexes.
const (
	redisKindCooldowns = "h:"
	redisKindReset     = "r:"
	redisKindStates    = "s:"
	redisHostsIndex    = "i:hosts"
	redisSourcesIndex  = "i:sources"
	redisJournal       = "j:events"
	redisKindConfig    = "p:" // followed by a source: the configuration it published
	redisConfigsIndex  = "i:configs"
	redisKindOverride  = "o:" // followed by a Hosts key: a PutOverride's message
	redisOverrides     = redisKindOverride + "overrides"
	redisKindTurn      = "t:" // followed by a host: its shared bucket (see takeTurn)
	redisKindStart     = "a:" // followed by a host: the fleet's start at it (see startTurn)
	redisKindSlow      = "w:" // followed by a host: its shared bucket's slow-down (see slowTurns)
)

// key returns the key of kind for the host or source name.
func (s *redisStore) key(kind, name string) string {
	return s.redisKey(kind + url.QueryEscape(name))
}

// redisKey returns the key (or channel) named name in the store. Every key
// and the change channel are built here, so that in a cluster they all
// carry the store's hash tag and live in one slot: a MULTI/EXEC may only
// touch the keys of one slot.
func (s *redisStore) redisKey(name string) string {
	return s.base + name
}

// redisKeyBase returns what the keys of a store with prefix start with: the
// prefix itself, or, in a cluster, the prefix as a hash tag, "{prefix}",
// with '{', '}' and '%' in it escaped as in a URL, so that the tag is the
// whole prefix, never empty, and two prefixes never give one tag. The
// store's keys then all hash to one slot, so one store lives on one
// primary of the cluster (and its replicas); stores with different
// prefixes spread over the cluster.
func redisKeyBase(prefix string, cluster bool) string {
	if !cluster {
		return prefix
	}
	r := strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D")
	return "{" + r.Replace(prefix) + "}"
}

// ceilMilli returns t in Unix milliseconds, rounded up, so that a key set to
// expire then does not vanish before t.
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// liveRange is the score range of the index members that have not expired
// at now.
func liveRange(now time.Time) *redis.ZRangeBy {
	return &redis.ZRangeBy{Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf"}
}

// expiredMax is the highest score of an index member that has expired at now.
func expiredMax(now time.Time) string {
	return strconv.FormatInt(now.UnixMilli(), 10)
}

// Records returns the unexpired cooldowns, shared trips and reset markers
// under the store's prefix. It reads the hosts index, then each live host's
// hash and marker in one pipeline, and reads each host as Put does (see
// appendStored). Values that do not decode, or that name another host than
// the key that holds them, are skipped.
func (s *redisStore) Records(ctx context.Context) ([]Record, error) {
	if s.isClosed.Load() {
		return nil, fmt.Errorf("hostbreaker: redis store: records: %w", redis.ErrClosed)
	}
	hosts, err := s.client.ZRangeByScore(ctx, s.redisKey(redisHostsIndex), liveRange(time.Now())).Result()
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: redis store: records: %w", err)
	}
	type hostCmds struct {
		host   string
		hash   *redis.MapStringStringCmd
		marker *redis.StringCmd
	}
	cmds := make([]hostCmds, 0, len(hosts))
	pipe := s.client.Pipeline()
	for _, host := range hosts {
		if h, err := normalizeHost("", host); err != nil || h != host {
			continue // not a member this package writes
		}
		cmds = append(cmds, hostCmds{host,
			pipe.HGetAll(ctx, s.key(redisKindCooldowns, host)),
			pipe.Get(ctx, s.key(redisKindReset, host))})
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return nil, fmt.Errorf("hostbreaker: redis store: records: %w", err)
	}
	now := time.Now()
	var out []Record
	for _, c := range cmds {
		fields, err := c.hash.Result()
		if err != nil {
			fields = nil // a key of another type
		}
		marker, err := c.marker.Bytes()
		if err != nil {
			marker = nil // none, or a key of another type
		}
		values := make([][]byte, 0, len(fields))
		for _, v := range fields {
			values = append(values, []byte(v))
		}
		out = appendStored(out, c.host, values, marker, now)
	}
	return out, nil
}

// redisEntries returns the fields of a host's hash as loadStored wants them.
func redisEntries(fields map[string]string) map[string][]byte {
	entries := make(map[string][]byte, len(fields))
	for f, v := range fields {
		entries[f] = []byte(v)
	}
	return entries
}

// isRedisReply reports whether err is an error reply of the server or
// redis.Nil, which concern one command of a pipeline, rather than a failure
// to talk to the server.
func isRedisReply(err error) bool {
	var re redis.Error
	return errors.Is(err, redis.Nil) || errors.As(err, &re) && !errors.Is(err, redis.ErrClosed)
}

// Put merges r into the store atomically, with the rules of [Store.Put],
// and signals the other stores when that changed anything. r must have a
// normalized host, a known reason and both times set.
//
// It is an optimistic transaction: it WATCHes the host's hash and marker,
// reads them, merges r in Go (putStored, as the bbolt store does), and
// writes the difference, the keys' expiry, the hosts index and the change
// message in one MULTI/EXEC, which fails if another client wrote either key
// meanwhile; then it starts again, at most redisPutAttempts times. A Put
// that changes nothing writes nothing.
func (s *redisStore) Put(ctx context.Context, r Record) error {
	if s.isClosed.Load() {
		return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, redis.ErrClosed)
	}
	if h, err := normalizeHost("", r.Host); err != nil || h != r.Host {
		return fmt.Errorf("hostbreaker: redis store: put %q: host is not normalized", r.Host)
	}
	if !exactUnixNano(r.Until) || !exactUnixNano(r.At) {
		return fmt.Errorf("hostbreaker: redis store: put %s: Until and At must be set (and after 1970)", r.Host)
	}
	if _, err := decodeRecord(encodeRecord(r)); err != nil {
		return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, err)
	}
	hkey, mkey := s.key(redisKindCooldowns, r.Host), s.key(redisKindReset, r.Host)
	var err error
	for attempt := 1; attempt <= redisPutAttempts; attempt++ {
		err = s.client.Watch(ctx, func(tx *redis.Tx) error {
			return s.putTx(ctx, tx, r, hkey, mkey)
		}, hkey, mkey)
		if !errors.Is(err, redis.TxFailedErr) || attempt == redisPutAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, ctx.Err())
		case <-time.After(rand.N(time.Duration(attempt) * redisPutBackoff)):
		}
	}
	if errors.Is(err, redis.TxFailedErr) {
		return fmt.Errorf("hostbreaker: redis store: put %s: lost %d races with concurrent writes: %w", r.Host, redisPutAttempts, err)
	}
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: put %s: %w", r.Host, err)
	}
	return nil
}

// putTx runs one attempt of Put on tx, which watches hkey and mkey.
func (s *redisStore) putTx(ctx context.Context, tx *redis.Tx, r Record, hkey, mkey string) error {
	var hash *redis.MapStringStringCmd
	var marker *redis.StringCmd
	if _, err := tx.Pipelined(ctx, func(p redis.Pipeliner) error {
		hash = p.HGetAll(ctx, hkey)
		marker = p.Get(ctx, mkey)
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	fields, err := hash.Result()
	if err != nil {
		return err
	}
	mv, err := marker.Bytes()
	if errors.Is(err, redis.Nil) {
		mv = nil
	} else if err != nil {
		return err
	}
	now := time.Now()
	w := putStored(redisEntries(fields), mv, r, now)
	if w.none() {
		return nil
	}
	index := s.redisKey(redisHostsIndex)
	_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if len(w.del) > 0 {
			p.HDel(ctx, hkey, w.del...)
		}
		if len(w.put) > 0 {
			args := make([]any, 0, 2*len(w.put))
			for _, name := range slices.Sorted(maps.Keys(w.put)) {
				args = append(args, name, w.put[name])
			}
			p.HSet(ctx, hkey, args...)
		}
		if (len(w.put) > 0 || len(w.del) > 0) && !w.entriesUntil.IsZero() {
			p.PExpireAt(ctx, hkey, time.UnixMilli(ceilMilli(w.entriesUntil)))
		}
		if w.marker != nil {
			p.Set(ctx, mkey, w.marker, 0)
			p.PExpireAt(ctx, mkey, time.UnixMilli(ceilMilli(w.markerUntil)))
		} else if w.delMarker {
			p.Del(ctx, mkey)
		}
		if w.until.IsZero() {
			p.ZRem(ctx, index, r.Host)
		} else {
			p.ZAdd(ctx, index, redis.Z{Score: float64(ceilMilli(w.until)), Member: r.Host})
		}
		p.ZRemRangeByScore(ctx, index, "-inf", expiredMax(now))
		if w.changed {
			s.logChange(ctx, p, redisKindCooldowns+r.Host)
			p.Publish(ctx, s.channel, r.Host)
		}
		return nil
	})
	return err
}

// exactUnixNano reports whether t is after the Unix epoch and its
// UnixNano is exact, so that the stored form means t.
func exactUnixNano(t time.Time) bool {
	ns := t.UnixNano()
	return ns > 0 && time.Unix(0, ns).Equal(t)
}

// PublishStates replaces the states that source published with states,
// until ttl from now, and indexes the source. A ttl that is not positive
// deletes them.
func (s *redisStore) PublishStates(ctx context.Context, source string, states []PublishedState, ttl time.Duration) error {
	if s.isClosed.Load() {
		return fmt.Errorf("hostbreaker: redis store: publish states of %q: %w", source, redis.ErrClosed)
	}
	key := s.key(redisKindStates, source)
	index := s.redisKey(redisSourcesIndex)
	now := time.Now()
	// A publication of the same states only extends them: it is not a
	// change for the log (readers take the expiry from the index).
	content := string(encodeStates(source, states, time.Unix(0, 1)))
	s.pubMu.Lock()
	same := s.published[source] == content && ttl > 0
	s.pubMu.Unlock()
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if !same {
			s.logChange(ctx, p, redisKindStates+source)
		}
		if ttl <= 0 {
			p.Del(ctx, key)
			p.ZRem(ctx, index, source)
		} else {
			expires := now.Add(ttl)
			// Round up to the millisecond PX counts in, so the key does not
			// vanish before the value says it expires.
			px := (ttl + time.Millisecond - 1).Truncate(time.Millisecond)
			p.Set(ctx, key, encodeStates(source, states, expires), px)
			p.ZAdd(ctx, index, redis.Z{Score: float64(ceilMilli(expires)), Member: source})
		}
		p.ZRemRangeByScore(ctx, index, "-inf", expiredMax(now))
		return nil
	})
	s.pubMu.Lock()
	if s.published == nil {
		s.published = make(map[string]string)
	}
	if err != nil || ttl <= 0 {
		delete(s.published, source)
	} else {
		s.published[source] = content
	}
	s.pubMu.Unlock()
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: publish states of %q: %w", source, err)
	}
	return nil
}

// States returns the unexpired states that every source published under
// the store's prefix. It reads the sources index, then each live source's
// states in one pipeline.
func (s *redisStore) States(ctx context.Context) ([]PublishedState, error) {
	if s.isClosed.Load() {
		return nil, fmt.Errorf("hostbreaker: redis store: states: %w", redis.ErrClosed)
	}
	sources, _, err := s.readStates(ctx)
	if err != nil {
		return nil, err
	}
	var out []PublishedState
	for _, src := range slices.Sorted(maps.Keys(sources)) {
		out = append(out, sources[src]...)
	}
	return out, nil
}

// readStates reads the sources index and each live source's states in one
// pipeline, and returns the states by source and the sources' expiry, as
// the index scores it.
func (s *redisStore) readStates(ctx context.Context) (map[string][]PublishedState, map[string]time.Time, error) {
	live, err := s.client.ZRangeByScoreWithScores(ctx, s.redisKey(redisSourcesIndex), liveRange(time.Now())).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("hostbreaker: redis store: states: %w", err)
	}
	out := make(map[string][]PublishedState, len(live))
	expires := make(map[string]time.Time, len(live))
	if len(live) == 0 {
		return out, expires, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(live))
	sources := make([]string, len(live))
	for i, z := range live {
		sources[i], _ = z.Member.(string)
		expires[sources[i]] = time.UnixMilli(int64(z.Score))
		cmds[i] = pipe.Get(ctx, s.key(redisKindStates, sources[i]))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return nil, nil, fmt.Errorf("hostbreaker: redis store: states: %w", err)
	}
	now := time.Now()
	for i, cmd := range cmds {
		v, err := cmd.Bytes()
		if err != nil {
			continue
		}
		src, states, exp, err := decodeStates(v)
		if err != nil || src != sources[i] || !exp.After(now) {
			continue
		}
		out[src] = states
	}
	return out, expires, nil
}

// redisJournalTagLen is the length of the tag that starts every member of
// the journal: the event's nanoseconds within its millisecond (6 decimal
// digits), then the appending store's journalID and its number of the
// event (16 hexadecimal digits each).
const redisJournalTagLen = 6 + 16 + 16

// redisJournalPage is the most members that Events reads in one command,
// so that no reply of Redis is so large that it blocks the server, or
// takes longer than the read timeout, however large the journal.
const redisJournalPage = 10000

// redisJournalMember returns the journal member of the event whose Time is
// ns Unix nanoseconds and stored form is v, appended by the store id as its
// event number seq. The tag makes members unique, so that equal events are
// never one member; and as members of one score (one millisecond) sort by
// their bytes, it sorts them by their nanoseconds.
func redisJournalMember(ns int64, id, seq uint64, v []byte) string {
	b := make([]byte, 0, redisJournalTagLen+len(v))
	b = fmt.Appendf(b, "%06d%016x%016x", redisSubMilli(ns), id, seq)
	return string(append(b, v...))
}

// redisFloorMilli returns ns Unix nanoseconds in Unix milliseconds, rounded
// down (toward the past, before 1970 too).
func redisFloorMilli(ns int64) int64 {
	ms := ns / 1e6
	if ns%1e6 < 0 {
		ms--
	}
	return ms
}

// redisSubMilli returns the nanoseconds of ns past redisFloorMilli(ns).
func redisSubMilli(ns int64) int64 {
	return ns - redisFloorMilli(ns)*1e6
}

// AppendEvents adds events to the journal and enforces limits, as [Store]
// documents, in one MULTI/EXEC: ZADD of the events, ZREMRANGEBYSCORE of
// the events older than limits.Retention, ZREMRANGEBYRANK of the oldest
// beyond limits.MaxEvents, and the key's expiry, limits.Retention from now.
// Retention is enforced to the millisecond: events in the millisecond
// that limits.Retention ago falls in are kept. Members that do not decode
// are dropped like the others, by their score and rank.
func (s *redisStore) AppendEvents(ctx context.Context, events []Event, limits JournalLimits) (int, error) {
	if s.isClosed.Load() {
		return 0, fmt.Errorf("hostbreaker: redis store: append events: %w", redis.ErrClosed)
	}
	if err := checkJournalEvents(events); err != nil {
		return 0, fmt.Errorf("hostbreaker: redis store: append events: %w", err)
	}
	key := s.redisKey(redisJournal)
	members := make([]redis.Z, len(events))
	seq := s.journalSeq.Add(uint64(len(events))) - uint64(len(events))
	for i, ev := range events {
		ns := ev.Time.UnixNano()
		members[i] = redis.Z{
			Score:  float64(redisFloorMilli(ns)),
			Member: redisJournalMember(ns, s.journalID, seq+uint64(i), encodeEvent(ev)),
		}
	}
	var byAge, byRank *redis.IntCmd
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if len(members) > 0 {
			p.ZAdd(ctx, key, members...)
		}
		if limits.Retention > 0 {
			oldest := redisFloorMilli(time.Now().Add(-limits.Retention).UnixNano())
			byAge = p.ZRemRangeByScore(ctx, key, "-inf", "("+strconv.FormatInt(oldest, 10))
		}
		if limits.MaxEvents > 0 {
			byRank = p.ZRemRangeByRank(ctx, key, 0, -int64(limits.MaxEvents)-1)
		}
		if limits.Retention > 0 && len(members) > 0 {
			p.PExpire(ctx, key, (limits.Retention + time.Millisecond - 1).Truncate(time.Millisecond))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("hostbreaker: redis store: append events: %w", err)
	}
	dropped := 0
	for _, cmd := range []*redis.IntCmd{byAge, byRank} {
		if cmd != nil {
			dropped += int(cmd.Val())
		}
	}
	return dropped, nil
}

// Events returns the journal's events whose Time is at or after since, in
// time order. It reads the members scored from since's millisecond on,
// redisJournalPage at a time, and keeps those that decode and whose Time
// is at or after since (see decodeJournal). The pages are not one snapshot: an event appended
// or dropped while Events reads may or may not be returned.
func (s *redisStore) Events(ctx context.Context, since time.Time) ([]Event, error) {
	if s.isClosed.Load() {
		return nil, fmt.Errorf("hostbreaker: redis store: events: %w", redis.ErrClosed)
	}
	key := s.redisKey(redisJournal)
	minScore := "-inf"
	if !since.Before(time.Unix(0, math.MinInt64)) {
		if since.After(time.Unix(0, math.MaxInt64)) {
			return nil, nil
		}
		minScore = strconv.FormatInt(redisFloorMilli(since.UnixNano()), 10)
	}
	var values [][]byte
	add := func(members []redis.Z) {
		for _, m := range members {
			if v, _ := m.Member.(string); len(v) > redisJournalTagLen {
				values = append(values, []byte(v[redisJournalTagLen:]))
			}
		}
	}
	for {
		page, err := s.client.ZRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{
			Min: minScore, Max: "+inf", Count: redisJournalPage,
		}).Result()
		if err != nil {
			return nil, fmt.Errorf("hostbreaker: redis store: events: %w", err)
		}
		if len(page) < redisJournalPage {
			add(page)
			break
		}
		// The page may end inside a millisecond: keep the members of the
		// earlier ones, read the whole last one, and go on after it.
		last := page[len(page)-1].Score
		i := len(page)
		for i > 0 && page[i-1].Score == last {
			i--
		}
		add(page[:i])
		lastScore := strconv.FormatFloat(last, 'f', -1, 64)
		rest, err := s.client.ZRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{
			Min: lastScore, Max: lastScore,
		}).Result()
		if err != nil {
			return nil, fmt.Errorf("hostbreaker: redis store: events: %w", err)
		}
		add(rest)
		minScore = "(" + lastScore
	}
	// Members of one millisecond sort by their tag, which starts with the
	// nanoseconds: values are in time order, but for members written
	// otherwise, which decodeJournal puts in place.
	return decodeJournal(values, since), nil
}

// Overrides returns the tuned overrides under the store's prefix: the
// fields of one hash, read with one HGETALL. Fields that do not unescape
// to a key, and values that do not decode as the override of that key, are
// skipped; so is a key of another type.
func (s *redisStore) Overrides(ctx context.Context) (map[string]Policy, error) {
	if s.isClosed.Load() {
		return nil, fmt.Errorf("hostbreaker: redis store: overrides: %w", redis.ErrClosed)
	}
	fields, err := s.client.HGetAll(ctx, s.redisKey(redisOverrides)).Result()
	if err != nil && !isRedisReply(err) {
		return nil, fmt.Errorf("hostbreaker: redis store: overrides: %w", err)
	}
	return decodeRedisOverrides(fields), nil
}

// decodeRedisOverrides decodes the fields of the overrides hash, as
// Overrides documents.
func decodeRedisOverrides(fields map[string]string) map[string]Policy {
	out := make(map[string]Policy, len(fields))
	for field, v := range fields {
		// Only the exact escape of its key: a field written otherwise
		// (by hand, say) could shadow the real one, in map order.
		name, err := url.QueryUnescape(field)
		if err != nil || url.QueryEscape(name) != field {
			continue
		}
		if key, p, err := decodeOverride([]byte(v)); err == nil && key == name {
			out[key] = p
		}
	}
	return out
}

// PutOverride replaces the override of key with p, or deletes it when p
// sets no tunable field, as [Store] documents, and publishes "o:"+key on
// the change channel when that changed the hash. Like Put, it is an
// optimistic transaction: it WATCHes the hash, compares the stored value
// with the new one, and writes and publishes in one MULTI/EXEC, starting
// again at most redisPutAttempts times when another client wrote the hash
// meanwhile.
func (s *redisStore) PutOverride(ctx context.Context, key string, p Policy) error {
	if s.isClosed.Load() {
		return fmt.Errorf("hostbreaker: redis store: put override of %s: %w", key, redis.ErrClosed)
	}
	if err := checkOverrideKey(key); err != nil {
		return fmt.Errorf("hostbreaker: redis store: put override: %w", err)
	}
	p, err := tunedPolicy(p)
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: put override of %s: %w", key, err)
	}
	var v []byte // nil: delete
	if !emptyTuned(p) {
		v = encodeOverride(key, p)
	}
	hkey, field := s.redisKey(redisOverrides), url.QueryEscape(key)
	try := func(tx *redis.Tx) error {
		old, err := tx.HGet(ctx, hkey, field).Bytes()
		switch {
		case errors.Is(err, redis.Nil):
			old = nil
		case err != nil:
			return err
		}
		if v == nil && old == nil || v != nil && string(old) == string(v) {
			return nil
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			if v == nil {
				p.HDel(ctx, hkey, field)
			} else {
				p.HSet(ctx, hkey, field, v)
			}
			s.logChange(ctx, p, redisKindOverride)
			p.Publish(ctx, s.channel, redisKindOverride+key)
			return nil
		})
		return err
	}
	for attempt := 1; attempt <= redisPutAttempts; attempt++ {
		err = s.client.Watch(ctx, try, hkey)
		if !errors.Is(err, redis.TxFailedErr) || attempt == redisPutAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hostbreaker: redis store: put override of %s: %w", key, ctx.Err())
		case <-time.After(rand.N(time.Duration(attempt) * redisPutBackoff)):
		}
	}
	if errors.Is(err, redis.TxFailedErr) {
		return fmt.Errorf("hostbreaker: redis store: put override of %s: lost %d races with concurrent writes: %w", key, redisPutAttempts, err)
	}
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: put override of %s: %w", key, err)
	}
	return nil
}

// PublishConfig replaces the configuration of c.Source with c, as [Store]
// documents: one MULTI/EXEC writes it and indexes it, and drops from the
// index the sources kept past configRetention (their keys expire by
// themselves); when more than configKeep stopped sources remain, a second
// round trip drops the oldest, keys and members.
func (s *redisStore) PublishConfig(ctx context.Context, c PublishedConfig, ttl time.Duration) error {
	if s.isClosed.Load() {
		return fmt.Errorf("hostbreaker: redis store: publish config of %q: %w", c.Source, redis.ErrClosed)
	}
	now := time.Now()
	v, err := checkPublishedConfig(c, ttl, now)
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: publish config of %q: %w", c.Source, err)
	}
	index := s.redisKey(redisConfigsIndex)
	expires := now.Add(ttl)
	var stopped *redis.IntCmd
	_, err = s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		px := (ttl + configRetention + time.Millisecond - 1).Truncate(time.Millisecond)
		p.Set(ctx, s.key(redisKindConfig, c.Source), v, px)
		p.ZAdd(ctx, index, redis.Z{Score: float64(ceilMilli(expires)), Member: c.Source})
		p.ZRemRangeByScore(ctx, index, "-inf", "("+strconv.FormatInt(now.Add(-configRetention).UnixMilli(), 10))
		stopped = p.ZCount(ctx, index, "-inf", expiredMax(now))
		return nil
	})
	if err == nil && stopped.Val() > configKeep {
		var old []string
		old, err = s.client.ZRangeByScore(ctx, index, &redis.ZRangeBy{Min: "-inf", Max: expiredMax(now),
			Count: stopped.Val() - configKeep}).Result()
		if err == nil && len(old) > 0 {
			_, err = s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for _, src := range old {
					p.Del(ctx, s.key(redisKindConfig, src))
					p.ZRem(ctx, index, src)
				}
				return nil
			})
		}
	}
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: publish config of %q: %w", c.Source, err)
	}
	return nil
}

// Configs returns the configurations kept, running or stopped: it reads
// the index, then every indexed source's configuration in one pipeline.
func (s *redisStore) Configs(ctx context.Context) ([]PublishedConfig, error) {
	if s.isClosed.Load() {
		return nil, fmt.Errorf("hostbreaker: redis store: configs: %w", redis.ErrClosed)
	}
	sources, err := s.client.ZRange(ctx, s.redisKey(redisConfigsIndex), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("hostbreaker: redis store: configs: %w", err)
	}
	if len(sources) == 0 {
		return []PublishedConfig{}, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(sources))
	for i, src := range sources {
		cmds[i] = pipe.Get(ctx, s.key(redisKindConfig, src))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return nil, fmt.Errorf("hostbreaker: redis store: configs: %w", err)
	}
	values := make([][]byte, len(sources))
	for i, cmd := range cmds {
		values[i], _ = cmd.Bytes()
	}
	return decodeConfigs(sources, values, time.Now()), nil
}

// Changes returns a channel that receives a value when a Put or a
// PutOverride of any store sharing the prefix changed the records or the
// overrides, and whenever the subscription to
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
				s.resync.Store(true) // changes may have gone unannounced meanwhile
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
		s.isClosed.Store(true)
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

// The change log, which lets a poll read only what changed (see poll).
// Under the prefix, s.key(redisKindChange, ...) names:
//   - "seq", a counter that every change increments;
//   - "log", a sorted set of what changed ("h:" and a host, "s:" and a
//     source, "o:" for the overrides), each scored by the counter's value
//     at its latest change, keeping the newest redisChangeLogMax members;
//   - "trimmed", the highest score dropped from the log; the member
//     redisChangeTrim is scored by the change that dropped it, so that a
//     reader behind it reads everything again.
const (
	redisKindChange    = "c:"
	redisChangeSeq     = "seq"
	redisChangeLog     = "log"
	redisChangeTrimmed = "trimmed"
	redisChangeTrim    = "t:"
	redisChangeLogMax  = 1 << 16

	// redisResyncInterval is how often a poll reads everything again,
	// whatever the log says: what no change announced (an entry written
	// by hand, a lost log) is seen within it.
	redisResyncInterval = 5 * time.Minute
)

// redisChangeScript records one change: it increments the counter, scores
// the member by it, and trims the log to its newest ARGV[2] members. KEYS:
// seq, log, trimmed; ARGV: the member, the log's bound.
var redisChangeScript = redis.NewScript(`
local s = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], s, ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('SET', KEYS[3], old[#old])
  redis.call('ZADD', KEYS[2], s, '` + redisChangeTrim + `')
end
return s
`)

// logChange queues, on p, the record of a change of member in the change
// log (see redisChangeScript).
func (s *redisStore) logChange(ctx context.Context, p redis.Pipeliner, member string) {
	redisChangeScript.Eval(ctx, p, []string{s.key(redisKindChange, redisChangeSeq), s.key(redisKindChange, redisChangeLog),
		s.key(redisKindChange, redisChangeTrimmed)}, member, redisChangeLogMax)
}

// redisMirror is what a Redis store's polls have read: the store as of
// the change numbered cursor, decoded. Guarded by redisStore.pollMu.
type redisMirror struct {
	cursor    int64                       // the newest change read; the log is read past it
	full      time.Time                   // the last full read; zero: none yet
	hosts     map[string][]Record         // the records and marker of each host, as appendStored reads them
	sources   map[string][]PublishedState // the states of each source, as it last changed them
	expires   map[string]time.Time        // the sources' expiry, from their index, at each poll
	overrides map[string]Policy
}

// poll returns what Records, States and Overrides would (see storePoller),
// reading only what changed since the last poll: one round trip of two
// commands (the change log past the cursor, the sources index) when
// nothing changed, whatever the number of hosts; then, in a second round
// trip, two commands per host and one per source that changed, and one
// for the overrides if they did. It reads everything (Records, States,
// Overrides) at the first poll, every redisResyncInterval, after the
// subscription was (re)established (changes may have gone unannounced
// while it was down), when the log was trimmed past the cursor, and after
// a failed poll.
func (s *redisStore) poll(ctx context.Context) (storePoll, error) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	m := &s.mirror
	now := time.Now()
	resync := s.resync.Swap(false)
	if m.full.IsZero() || resync || now.Sub(m.full) >= redisResyncInterval || now.Before(m.full) {
		return s.pollFull(ctx, now)
	}
	logKey := s.key(redisKindChange, redisChangeLog)
	pipe := s.client.Pipeline()
	changes := pipe.ZRangeByScoreWithScores(ctx, logKey, &redis.ZRangeBy{Min: "(" + strconv.FormatInt(m.cursor, 10), Max: "+inf"})
	sources := pipe.ZRangeByScoreWithScores(ctx, s.redisKey(redisSourcesIndex), liveRange(now))
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		m.full = time.Time{}
		return storePoll{}, fmt.Errorf("hostbreaker: redis store: poll: %w", err)
	}
	log, err1 := changes.Result()
	live, err2 := sources.Result()
	if err1 != nil || err2 != nil {
		m.full = time.Time{}
		return storePoll{}, fmt.Errorf("hostbreaker: redis store: poll: %w", errors.Join(err1, err2))
	}
	cursor := m.cursor
	var hosts, srcs []string
	overrides := false
	for _, z := range log {
		member, _ := z.Member.(string)
		cursor = max(cursor, int64(z.Score))
		switch {
		case member == redisChangeTrim:
			trimmed, err := s.client.Get(ctx, s.key(redisKindChange, redisChangeTrimmed)).Int64()
			if err != nil || trimmed > m.cursor {
				return s.pollFull(ctx, now) // changes this store never read were dropped
			}
		case strings.HasPrefix(member, redisKindCooldowns):
			hosts = append(hosts, member[len(redisKindCooldowns):])
		case strings.HasPrefix(member, redisKindStates):
			srcs = append(srcs, member[len(redisKindStates):])
		case member == redisKindOverride:
			overrides = true
		}
	}
	clear(m.expires)
	for _, z := range live {
		src, _ := z.Member.(string)
		m.expires[src] = time.UnixMilli(int64(z.Score))
		if _, ok := m.sources[src]; !ok && !slices.Contains(srcs, src) {
			srcs = append(srcs, src) // live, never read: refreshed while this store was not looking
		}
	}
	if len(hosts)+len(srcs) > 0 || overrides {
		if err := s.readChanged(ctx, hosts, srcs, overrides, now); err != nil {
			m.full = time.Time{}
			return storePoll{}, err
		}
	}
	m.cursor = cursor
	return m.result(now), nil
}

// readChanged reads, in one pipeline, the hosts and sources that changed
// and the overrides if they did, into the mirror.
func (s *redisStore) readChanged(ctx context.Context, hosts, srcs []string, overrides bool, now time.Time) error {
	m := &s.mirror
	type hostCmds struct {
		hash   *redis.MapStringStringCmd
		marker *redis.StringCmd
	}
	pipe := s.client.Pipeline()
	hc := make([]hostCmds, len(hosts))
	for i, host := range hosts {
		hc[i] = hostCmds{pipe.HGetAll(ctx, s.key(redisKindCooldowns, host)), pipe.Get(ctx, s.key(redisKindReset, host))}
	}
	sc := make([]*redis.StringCmd, len(srcs))
	for i, src := range srcs {
		sc[i] = pipe.Get(ctx, s.key(redisKindStates, src))
	}
	var oc *redis.MapStringStringCmd
	if overrides {
		oc = pipe.HGetAll(ctx, s.redisKey(redisOverrides))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isRedisReply(err) {
		return fmt.Errorf("hostbreaker: redis store: poll: %w", err)
	}
	for i, host := range hosts {
		if h, err := normalizeHost("", host); err != nil || h != host {
			continue
		}
		fields, err := hc[i].hash.Result()
		if err != nil {
			fields = nil
		}
		marker, err := hc[i].marker.Bytes()
		if err != nil {
			marker = nil
		}
		values := make([][]byte, 0, len(fields))
		for _, v := range fields {
			values = append(values, []byte(v))
		}
		if recs := appendStored(nil, host, values, marker, now); len(recs) > 0 {
			m.hosts[host] = recs
		} else {
			delete(m.hosts, host)
		}
	}
	for i, src := range srcs {
		v, err := sc[i].Bytes()
		if err != nil {
			delete(m.sources, src)
			continue
		}
		if got, states, _, err := decodeStates(v); err == nil && got == src {
			m.sources[src] = states
		} else {
			delete(m.sources, src)
		}
	}
	if oc != nil {
		fields, err := oc.Result()
		if err != nil && !isRedisReply(err) {
			return fmt.Errorf("hostbreaker: redis store: poll: %w", err)
		}
		m.overrides = decodeRedisOverrides(fields)
	}
	return nil
}

// pollFull reads everything into the mirror: the cursor first, so that a
// change made while it reads is read again by the next poll.
func (s *redisStore) pollFull(ctx context.Context, now time.Time) (storePoll, error) {
	m := &s.mirror
	m.full = time.Time{}
	cursor, err := s.client.Get(ctx, s.key(redisKindChange, redisChangeSeq)).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return storePoll{}, fmt.Errorf("hostbreaker: redis store: poll: %w", err)
	}
	recs, err := s.Records(ctx)
	if err != nil {
		return storePoll{}, err
	}
	ov, err := s.Overrides(ctx)
	if err != nil {
		return storePoll{}, err
	}
	sources, expires, err := s.readStates(ctx)
	if err != nil {
		return storePoll{}, err
	}
	m.hosts = make(map[string][]Record)
	for _, r := range recs {
		m.hosts[r.Host] = append(m.hosts[r.Host], r)
	}
	m.sources, m.expires, m.overrides = sources, expires, ov
	m.cursor, m.full = cursor, now
	return m.result(now), nil
}

// result returns the mirror's content that has not expired at now, as
// the caller's.
func (m *redisMirror) result(now time.Time) storePoll {
	var out storePoll
	for _, recs := range m.hosts {
		for _, r := range recs {
			if r.Until.After(now) {
				out.records = append(out.records, r)
			}
		}
	}
	for src, states := range m.sources {
		if exp, ok := m.expires[src]; ok && exp.After(now) {
			out.states = append(out.states, states...)
		}
	}
	out.overrides = make(map[string]Policy, len(m.overrides))
	for k, p := range m.overrides {
		out.overrides[k] = cloneTuned(p)
	}
	return out
}

// redisTurnScript gives a turn of a host's shared bucket: GCRA with a
// bucket of one, as github.com/go-redis/redis_rate paces, but reserving
// (a turn later than now is a wait, not a refusal) and on Redis's clock,
// so that the clocks of the processes need not agree. KEYS: the host's
// turn key and its slow key; ARGV: the interval and the longest wait, in
// µs. While the slow key lives (see slowTurns), the interval is divided by
// the factor it holds. It returns {1, wait} for a turn taken wait µs from
// now, or {0, wait} for one that would be further than the longest wait,
// not taken. The turn key holds the next free turn (µs since the epoch)
// and expires a second after it.
var redisTurnScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local at = math.max(tat, now)
local wait = at - now
if wait > tonumber(ARGV[2]) then
  return {0, wait}
end
local interval = tonumber(ARGV[1])
local slow = tonumber(redis.call('GET', KEYS[2]) or '')
if slow and slow > 0 and slow < 1 then
  interval = interval / slow
end
local next = at + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1000)
return {1, wait}
`)

// takeTurn takes a turn of host's bucket shared by every process of the
// store (see turnTaker) and returns how long from now the request waits
// for it; with false, a turn further than maxWait from now, not taken.
func (s *redisStore) takeTurn(ctx context.Context, host string, interval, maxWait time.Duration) (time.Duration, bool, error) {
	if s.isClosed.Load() {
		return 0, false, fmt.Errorf("hostbreaker: redis store: turn: %w", redis.ErrClosed)
	}
	res, err := redisTurnScript.Run(ctx, s.client, []string{s.key(redisKindTurn, host), s.key(redisKindSlow, host)},
		max(interval.Microseconds(), 1), max(maxWait.Microseconds(), 0)).Int64Slice()
	if err != nil {
		return 0, false, fmt.Errorf("hostbreaker: redis store: turn of %s: %w", host, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("hostbreaker: redis store: turn of %s: reply %v", host, res)
	}
	return time.Duration(res[1]) * time.Microsecond, res[0] == 1, nil
}

// redisSlowScript holds and slows a host's shared bucket (see slowTurns),
// on Redis's clock. KEYS: the host's turn key and its slow key; ARGV: the
// factor, how long it lasts (ms), and the hold (µs). With a hold, the
// next free turn is at least that far from now; with a factor under 1,
// the slow key holds it for its time unless it is set already.
var redisSlowScript = redis.NewScript(`
redis.replicate_commands()
local hold = tonumber(ARGV[3])
if hold > 0 then
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000000 + tonumber(t[2]) + hold
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if tat < at then
    redis.call('SET', KEYS[1], string.format('%.0f', at), 'PX', math.ceil(hold / 1000) + 1000)
  end
end
local f = tonumber(ARGV[1])
if f > 0 and f < 1 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX')
end
return 0
`)

// slowTurns gives no turn of host's shared bucket for hold from now, and
// multiplies its rate by a factor under 1 for d, unless it is slowed
// already (see turnTaker).
func (s *redisStore) slowTurns(ctx context.Context, host string, factor float64, d, hold time.Duration) error {
	if s.isClosed.Load() {
		return fmt.Errorf("hostbreaker: redis store: slow turns: %w", redis.ErrClosed)
	}
	err := redisSlowScript.Run(ctx, s.client, []string{s.key(redisKindTurn, host), s.key(redisKindSlow, host)},
		strconv.FormatFloat(factor, 'g', -1, 64), max(d.Milliseconds(), 1), max(hold.Microseconds(), 0)).Err()
	if err != nil {
		return fmt.Errorf("hostbreaker: redis store: slow turns of %s: %w", host, err)
	}
	return nil
}

// redisStartScript gives a turn of the fleet's start at a host (see
// Transport.fleetStart), on Redis's clock. KEYS: the host's start key, a
// hash of f (the first turn, µs since the epoch), n (the turns given),
// x (when a throttle stopped the start), R (the rate it had reached then,
// r/s), r (the rate it holds since, r/s), h (the next free turn at that
// rate), np and p:<process> (the processes that took part). ARGV: the
// operation (take, check or stop), the longest wait in µs (for a stop, how
// long ago the throttled request was sent, in µs: the rate reached is the
// start's rate then), the rate the
// start begins at (r/s), its doubling time and its length in µs, the
// key's life in ms, the process (a take or check counts it in np). The
// start's n-th turn is due when the turns of a rate r0·2^(t/d) add up to
// n; a stop holds an eighth of the rate reached (at least 1 r/s), so
// that a limiter that counts a burst drains what the start sent. It
// replies {code, wait µs}: startRamp for a start turn taken wait from
// now; startHeld for a turn at the held rate; startTooFar for a turn
// further than the longest wait, not taken; startDone when the start is
// over (its length passed, or nothing to stop). check takes no start
// turn: it reports whether a throttle stopped the start meanwhile, and
// then takes a held turn, replying as a take does. A held turn's reply
// adds the rate the start had reached when stopped, in mr/s, and np. A
// take by the only process that took part yet is given at once and not
// counted in the schedule: a process alone is not paced. stop
// replies {startHeld, 0, that rate, np} when the start is stopped, by it
// or before, and not over.
var redisStartScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, maxWait = ARGV[1], tonumber(ARGV[2])
local r0, d, len, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local v = redis.call('HMGET', KEYS[1], 'f', 'n', 'x', 'r', 'h', 'R', 'np')
local f = tonumber(v[1])
if not f then
  if op ~= 'take' then
    return {3, 0}
  end
  f = now
  redis.call('HSET', KEYS[1], 'f', string.format('%.0f', f))
end
local np = tonumber(v[7]) or 0
if op ~= 'stop' and redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[7], 1) == 1 then
  np = redis.call('HINCRBY', KEYS[1], 'np', 1)
end
local x, reached = tonumber(v[3]), tonumber(v[6])
local function stopped(wait)
  return {2, wait, math.floor(reached * 1000), math.max(np, 1)}
end
if op == 'stop' then
  if not x and now - f < len then
    reached = r0 * 2 ^ (math.max(now - maxWait - f, 0) / d)
    redis.call('HSET', KEYS[1], 'x', string.format('%.0f', now), 'r', tostring(math.max(reached / 8, 1)), 'R', tostring(reached))
    redis.call('PEXPIRE', KEYS[1], ttl)
    return stopped(0)
  end
  if x then
    return stopped(0)
  end
  return {3, 0}
end
if x then
  local at = math.max(tonumber(v[5]) or 0, now)
  if at - now > maxWait then
    return {0, at - now}
  end
  redis.call('HSET', KEYS[1], 'h', string.format('%.0f', at + 1000000 / tonumber(v[4])))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return stopped(at - now)
end
if now - f >= len then
  return {3, 0}
end
if op == 'check' or np <= 1 then
  return {1, 0}
end
local n = tonumber(v[2]) or 0
local at = f + d * math.log(1 + n * math.log(2) * 1000000 / (r0 * d)) / math.log(2)
if at - f >= len then
  return {3, 0}
end
at = math.max(at, now)
if at - now > maxWait then
  return {0, at - now}
end
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, at - now}
`)

// startTurn runs op (startTake, startCheck or startStop) on the fleet's
// start at host (see starter and redisStartScript).
func (s *redisStore) startTurn(ctx context.Context, host, source string, op startOp, arg time.Duration) (startReply, error) {
	if s.isClosed.Load() {
		return startReply{}, fmt.Errorf("hostbreaker: redis store: start: %w", redis.ErrClosed)
	}
	res, err := redisStartScript.Run(ctx, s.client, []string{s.key(redisKindStart, host)},
		startOps[op], max(arg.Microseconds(), 0), fleetStartRate,
		fleetStartDoubling.Microseconds(), fleetStartLength.Microseconds(), fleetStartLife.Milliseconds(), source).Int64Slice()
	if err != nil {
		return startReply{}, fmt.Errorf("hostbreaker: redis store: start at %s: %w", host, err)
	}
	if len(res) < 2 || len(res) > 4 || res[0] < 0 || res[0] > int64(startDone) {
		return startReply{}, fmt.Errorf("hostbreaker: redis store: start at %s: reply %v", host, res)
	}
	r := startReply{code: startCode(res[0]), wait: time.Duration(res[1]) * time.Microsecond}
	if len(res) == 4 {
		r.reached, r.procs = float64(res[2])/1000, int(res[3])
	}
	return r, nil
}
