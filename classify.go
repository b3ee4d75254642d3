package hostbreaker

// This file holds the classification of a request's outcome (success,
// failure or neutral, from the policy's status lists and the transport
// error) and host-name normalization (NormalizeHost). What an outcome does
// to the breaker is in breaker.go; to the host's cooldown, in cooldown.go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// outcome is how one response or transport error counts for a breaker.
type outcome uint8

const (
	outcomeSuccess outcome = iota
	outcomeFailure
	outcomeNeutral
)

// classify returns the outcome of a base RoundTrip. A transport error is a
// failure, timeouts included (a deadline of the request's context, which
// http.Client.Timeout sets too, or an error whose Timeout() is true), unless
// the caller canceled the request: its context was canceled before any
// deadline passed. That is neutral.
func classify(p *resolved, req *http.Request, resp *http.Response, err error) outcome {
	if err != nil {
		return classifyError(req.Context())
	}
	return p.statuses.classify(resp.StatusCode)
}

// throttleOutcome returns the outcome of a response whose status is one of
// the policy's throttle statuses, given what the status lists made of it
// (listed), whether it carried a usable Retry-After or quota reset that
// cooled the host (cooled), and whether the host's limiter took it as its
// signal to slow down (slowing). A throttle is a rate signal before it is
// a failure: neutral while the host says when to come back or the limiter
// can still slow down. Otherwise (the limiter at min_rate, or not
// adaptive) the status lists decide, except that a throttle is never a
// success: that is a failure.
func throttleOutcome(listed outcome, cooled, slowing bool) outcome {
	switch {
	case cooled || slowing:
		return outcomeNeutral
	case listed == outcomeSuccess:
		return outcomeFailure
	}
	return listed
}

// isTimeout reports whether err, from a request whose context is ctx, is a
// timeout: the context's deadline passed, or the error says so.
func isTimeout(ctx context.Context, err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return true
	}
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// classifyError returns the outcome of a transport error of a request
// whose context is ctx: neutral when the caller canceled ctx before any
// deadline passed, a failure otherwise.
func classifyError(ctx context.Context) outcome {
	if !errors.Is(ctx.Err(), context.Canceled) {
		return outcomeFailure
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return outcomeFailure
	}
	return outcomeNeutral
}

// statusSet classifies the status codes 100–599 in two bitmaps.
type statusSet struct {
	failure, neutral [10]uint64 // bit (code-0) of the 640-bit sets
}

func newStatusSet(failure, neutral []int) statusSet {
	var s statusSet
	for _, c := range failure {
		s.failure[c/64] |= 1 << (c % 64)
	}
	for _, c := range neutral {
		s.neutral[c/64] |= 1 << (c % 64)
	}
	return s
}

func (s *statusSet) classify(code int) outcome {
	if code < 0 || code >= 640 {
		return outcomeSuccess
	}
	bit := uint64(1) << (code % 64)
	switch {
	case s.failure[code/64]&bit != 0:
		return outcomeFailure
	case s.neutral[code/64]&bit != 0:
		return outcomeNeutral
	}
	return outcomeSuccess
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

var errEmptyHost = errors.New("empty host")

// NormalizeHost returns the name under which hostbreaker keys a host, as
// Transports, stores and configuration keys use it: lower case, without a
// trailing dot, IDNA names as A-labels, IPv6 literals in brackets, and the
// port kept only when it is not the default port of the URL's scheme. s may
// be a host name, host:port or a URL ("https://Example.org:443/x" gives
// "example.org"). An empty or unparsable host is an error. It is safe for
// concurrent use.
func NormalizeHost(s string) (string, error) {
	s = strings.TrimSpace(s)
	scheme := ""
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, s = strings.ToLower(s[:i]), s[i+3:]
		if j := strings.IndexAny(s, "/?#"); j >= 0 {
			s = s[:j]
		}
		if at := strings.LastIndexByte(s, '@'); at >= 0 {
			s = s[at+1:] // userinfo
		}
	}
	return normalizeHost(scheme, s)
}

// normalizeHost returns the canonical form of a URL host for scheme: lower
// case, trailing dot removed, IDNA mapped to ASCII, and the port kept only
// when it is not the scheme's default. When hostport is already canonical
// it is returned as is, without allocating.
func normalizeHost(scheme, hostport string) (string, error) {
	if hostport == "" {
		return "", errEmptyHost
	}
	if isCanonicalName(hostport) {
		return hostport, nil
	}
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("host %q: %w", hostport, err)
	}
	if port == defaultPort(scheme) {
		port = ""
	}
	if strings.HasPrefix(host, "[") { // IPv6 literal, brackets kept
		// An address may carry a zone, as in net/http: [fe80::1%eth0]. The
		// address is folded to lower case, the zone is kept as written.
		addr, zone, hasZone := strings.Cut(host[1:len(host)-1], "%")
		if strings.IndexFunc(addr, func(r rune) bool {
			return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F' || r == ':' || r == '.')
		}) >= 0 || len(addr) < 2 || !strings.Contains(addr, ":") {
			return "", fmt.Errorf("host %q: invalid IPv6 literal", hostport)
		}
		if hasZone && (zone == "" || strings.ContainsAny(zone, "%[]/ ") || !isASCII(zone)) {
			return "", fmt.Errorf("host %q: invalid IPv6 zone", hostport)
		}
		host = "[" + strings.ToLower(addr) + host[1+len(addr):]
	} else {
		host = strings.TrimSuffix(host, ".")
		if host == "" {
			return "", fmt.Errorf("host %q: %w", hostport, errEmptyHost)
		}
		if !isASCII(host) {
			host, err = idna.Lookup.ToASCII(host)
			if err != nil {
				return "", fmt.Errorf("host %q: %w", hostport, err)
			}
		} else {
			host = strings.ToLower(host)
		}
		if !validName(host) {
			return "", fmt.Errorf("host %q: invalid name", hostport)
		}
	}
	if port != "" {
		return host + ":" + port, nil
	}
	return host, nil
}

// isCanonicalName reports whether s is a lower-case DNS name or IPv4
// address without a port: the common case, kept free of allocation.
func isCanonicalName(s string) bool {
	if s[len(s)-1] == '.' {
		return false
	}
	return validName(s)
}

// validName reports whether s is a plausible lower-case ASCII host name:
// labels of 1–63 bytes of [a-z0-9_-] separated by single dots, 253 bytes at
// most in all. It is on the request path, hence the table.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch nameChar[s[i]] {
		case charLabel:
			label++
		case charDot:
			if label == 0 || label > 63 {
				return false
			}
			label = 0
		default:
			return false
		}
	}
	return label > 0 && label <= 63
}

const (
	charInvalid = iota
	charLabel
	charDot
)

// nameChar classifies the bytes of a canonical host name.
var nameChar = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = charLabel
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = charLabel
	}
	t['-'], t['_'], t['.'] = charLabel, charLabel, charDot
	return t
}()

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// splitHostPort splits host[:port]; a bracketed IPv6 literal keeps its
// brackets and a bare IPv6 literal gets them. An empty port is dropped.
func splitHostPort(hp string) (host, port string, err error) {
	switch {
	case strings.HasPrefix(hp, "["):
		end := strings.IndexByte(hp, ']')
		if end < 0 {
			return "", "", errors.New("missing ']'")
		}
		rest := hp[end+1:]
		host = hp[:end+1]
		if rest == "" {
			return host, "", nil
		}
		if rest[0] != ':' {
			return "", "", errors.New("junk after ']'")
		}
		port = rest[1:]
	case strings.Count(hp, ":") > 1:
		return "[" + hp + "]", "", nil
	default:
		host, port, _ = strings.Cut(hp, ":")
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || !isDigits(port) {
			return "", "", fmt.Errorf("invalid port %q", port)
		}
		port = strconv.FormatUint(n, 10)
	}
	return host, port, nil
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// callersDeadline reports whether a failed request, whose base returned
// err after waiting waited ns, was ended by its caller's deadline rather
// than by its host: its context's deadline (which was set before the
// request began: a context does not change) has passed, the wait was
// shorter than the host's slow_call (deadlineGrace when unset), so the
// host was not given the time a healthy host may take, and the deadline is
// not http.Client.Timeout's. A per-request timeout stays the host's
// failure: http.Client.Timeout (recognized by req.Cancel, which
// http.Client sets when a Timeout applies to a transport other than its
// own), and an error of the base's own (ResponseHeaderTimeout, a dial
// timeout) while the context is still live.
func callersDeadline(req *http.Request, err error, waited int64, slowCall time.Duration) bool {
	//lint:ignore SA1019 read, never set: http.Client sets it when its Timeout applies
	if err == nil || req.Cancel != nil {
		return false
	}
	ctx := req.Context()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return false
	}
	grace := slowCall
	if grace <= 0 {
		grace = deadlineGrace
	}
	return waited < int64(grace)
}
