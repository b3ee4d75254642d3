package hostbreaker

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// retryNow is a Monday.
var retryNow = time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		value string
		want  time.Duration
		ok    bool
	}{
		{"120", 120 * time.Second, true},
		{"1", time.Second, true},
		{"  120  ", 120 * time.Second, true},
		{"\t5\r\n", 5 * time.Second, true},
		{"007", 7 * time.Second, true},
		{"0", 0, false},
		{"000", 0, false},
		{"-5", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"1e3", 0, false},
		{"12 34", 0, false},
		{"9223372036", 9223372036 * time.Second, true}, // largest whole second that fits
		{"9223372037", maxDuration, true},
		{"18446744073709551615", maxDuration, true},                 // max uint64
		{"99999999999999999999", maxDuration, true},                 // overflows uint64
		{"Mon, 01 Jan 2024 00:02:00 GMT", 2 * time.Minute, true},    // IMF-fixdate
		{"  Mon, 01 Jan 2024 00:02:00 GMT ", 2 * time.Minute, true}, // with spaces
		{"Monday, 01-Jan-24 00:02:00 GMT", 2 * time.Minute, true},   // RFC 850
		{"Mon Jan  1 00:02:00 2024", 2 * time.Minute, true},         // asctime
		{"Tue, 02 Jan 2024 00:00:00 GMT", 24 * time.Hour, true},     // a day later
		{"Mon, 01 Jan 2024 00:00:01 GMT", time.Second, true},        // just after now
		{"Mon, 01 Jan 2024 00:00:00 GMT", 0, false},                 // exactly now
		{"Sun, 31 Dec 2023 23:59:00 GMT", 0, false},                 // past
		{"Sunday, 31-Dec-23 23:59:00 GMT", 0, false},                // past, RFC 850
		{"Fri, 31 Dec 9999 23:59:59 GMT", maxDuration, true},        // beyond a Duration
		{"Mon, 01 Jan 2024 00:02:00", 0, false},                     // no zone
		{"2024-01-01T00:02:00Z", 0, false},                          // RFC 3339 is not an HTTP-date
		{"soon", 0, false},
		{"garbage, 01 Jan", 0, false},
		{"", 0, false},
		{"   ", 0, false},
	}
	for _, tc := range tests {
		d, ok := retryAfter(tc.value, retryNow)
		if d != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.value, d, ok, tc.want, tc.ok)
		}
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{
		"120", " 120 ", "0", "-5", "1.5", "9223372036", "9223372037", "99999999999999999999",
		"Mon, 01 Jan 2024 00:02:00 GMT", "Monday, 01-Jan-24 00:02:00 GMT", "Mon Jan  1 00:02:00 2024",
		"Sun, 31 Dec 2023 23:59:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "", "garbage",
	} {
		f.Add(s)
	}
	maxSecs := uint64(maxDuration / time.Second)
	f.Fuzz(func(t *testing.T, value string) {
		d, ok := retryAfter(value, retryNow)
		if ok && d <= 0 {
			t.Fatalf("retryAfter(%q) = %v, true: want > 0", value, d)
		}
		if !ok && d != 0 {
			t.Fatalf("retryAfter(%q) = %v, false: want 0", value, d)
		}
		if isDigits(value) {
			n, err := strconv.ParseUint(value, 10, 64)
			switch {
			case err != nil: // too large for a uint64
				if d != maxDuration || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want maxDuration, true", value, d, ok)
				}
			case n == 0:
				if ok {
					t.Fatalf("retryAfter(%q) = %v, true; want not ok", value, d)
				}
			case n > maxSecs:
				if d != maxDuration || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want maxDuration, true", value, d, ok)
				}
			default:
				if want := time.Duration(n) * time.Second; d != want || !ok {
					t.Fatalf("retryAfter(%q) = %v, %v; want %v, true", value, d, ok, want)
				}
			}
		}
		if tm, err := http.ParseTime(strings.TrimSpace(value)); err == nil && !isDigits(strings.TrimSpace(value)) {
			if want := tm.Sub(retryNow); want > 0 != ok || (ok && d != want) {
				t.Fatalf("retryAfter(%q) = %v, %v; date is %v from now", value, d, ok, want)
			}
		}
	})
}

func TestNormalizeHost(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	tests := []struct {
		scheme, in string
		want       string // "" means an error
	}{
		{"https", "example.com", "example.com"},
		{"https", "EXAMPLE.com", "example.com"},
		{"https", "example.com.", "example.com"},
		{"https", "Example.COM.", "example.com"},
		{"https", "example.com:443", "example.com"},
		{"http", "example.com:80", "example.com"},
		{"http", "example.com:443", "example.com:443"},
		{"https", "example.com:80", "example.com:80"},
		{"wss", "example.com:443", "example.com"},
		{"ws", "example.com:80", "example.com"},
		{"", "example.com:443", "example.com:443"},
		{"https", "example.com:8443", "example.com:8443"},
		{"https", "EXAMPLE.com.:8443", "example.com:8443"},
		{"https", "example.com:08443", "example.com:8443"},
		{"https", "example.com:0443", "example.com"},
		{"https", "example.com:", "example.com"},
		{"https", "192.0.2.1", "192.0.2.1"},
		{"https", "192.0.2.1:443", "192.0.2.1"},
		{"http", "[::1]:8080", "[::1]:8080"},
		{"https", "[::1]:443", "[::1]"},
		{"https", "[::1]", "[::1]"},
		{"https", "::1", "[::1]"},
		{"https", "[2001:DB8::1]", "[2001:db8::1]"},
		{"http", "[FE80::1%eth0]:8080", "[fe80::1%eth0]:8080"},
		{"https", "[fe80::1%Eth0]:443", "[fe80::1%Eth0]"},
		{"https", "2001:DB8::1", "[2001:db8::1]"},
		{"https", "bücher.example", "xn--bcher-kva.example"},
		{"https", "BÜCHER.example.", "xn--bcher-kva.example"},
		{"https", "bücher.example:8443", "xn--bcher-kva.example:8443"},
		{"https", long63 + ".com", long63 + ".com"},
		{"https", "", ""},
		{"https", ":8443", ""}, // port without a host
		{"https", ".", ""},
		{"https", "a..b", ""},
		{"https", ".example.com", ""},
		{"https", "example.com..", ""},
		{"https", "exa mple.com", ""},
		{"https", "exa/mple.com", ""},
		{"https", "example.com:99999", ""},
		{"https", "example.com:65536", ""},
		{"https", "example.com:abc", ""},
		{"https", "example.com:-1", ""},
		{"https", "example.com:+1", ""},
		{"https", long64 + ".com", ""},
		{"https", long64, ""},
		{"https", strings.Repeat("a.", 127) + "ab", ""}, // 256 bytes
		{"https", "[::1", ""},
		{"https", "[::1]x", ""},
		{"https", "[::1]%eth0", ""},
		{"https", "[]", ""},
		{"https", "[g::1]", ""},
	}
	for _, tc := range tests {
		got, err := normalizeHost(tc.scheme, tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("normalizeHost(%q, %q) = %q, want an error", tc.scheme, tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("normalizeHost(%q, %q) = %q, %v; want %q", tc.scheme, tc.in, got, err, tc.want)
		}
	}
}

func TestNormalizeHostCanonicalNoAlloc(t *testing.T) {
	for _, in := range []string{"example.com", "api.crossref.org", "a-b_c.d9.example", "192.0.2.1", "xn--bcher-kva.example"} {
		var out string
		var err error
		allocs := testing.AllocsPerRun(100, func() { out, err = normalizeHost("https", in) })
		if err != nil || out != in {
			t.Errorf("normalizeHost(%q) = %q, %v", in, out, err)
		}
		if allocs != 0 {
			t.Errorf("normalizeHost(%q): %v allocations, want 0", in, allocs)
		}
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range [][2]string{
		{"https", "example.com"}, {"https", "EXAMPLE.com"}, {"https", "example.com."},
		{"https", "example.com:443"}, {"http", "example.com:80"}, {"http", "example.com:443"},
		{"https", ":8443"}, {"http", "[::1]:8080"}, {"https", "[::1]:443"}, {"", "::1"},
		{"https", "bücher.example"}, {"", ""}, {"https", "a..b"}, {"https", "exa mple.com"},
		{"https", "example.com:99999"}, {"https", "example.com:abc"}, {"ws", "A.B.C.:0080"},
		{"https", "bücher.example。"}, {"https", "[2001:DB8::1]:00443"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, scheme, hostport string) {
		out, err := normalizeHost(scheme, hostport)
		if err != nil {
			if out != "" {
				t.Fatalf("normalizeHost(%q, %q) = %q with error %v", scheme, hostport, out, err)
			}
			return
		}
		if out == "" {
			t.Fatalf("normalizeHost(%q, %q) = \"\", nil", scheme, hostport)
		}
		if strings.HasSuffix(out, ".") {
			t.Fatalf("normalizeHost(%q, %q) = %q: trailing dot", scheme, hostport, out)
		}
		if strings.IndexFunc(out, func(r rune) bool { return r >= 'A' && r <= 'Z' }) >= 0 {
			t.Fatalf("normalizeHost(%q, %q) = %q: upper case", scheme, hostport, out)
		}
		again, err := normalizeHost(scheme, out)
		if err != nil || again != out {
			t.Fatalf("normalizeHost(%q, %q) = %q, but normalizeHost(%q, %q) = %q, %v", scheme, hostport, out, scheme, out, again, err)
		}
	})
}

func TestStatusSetClassify(t *testing.T) {
	s := newStatusSet([]int{100, 127, 128, 500, 503, 599}, []int{191, 192, 404})
	tests := []struct {
		code int
		want outcome
	}{
		{100, outcomeFailure}, {127, outcomeFailure}, {128, outcomeFailure},
		{500, outcomeFailure}, {503, outcomeFailure}, {599, outcomeFailure},
		{191, outcomeNeutral}, {192, outcomeNeutral}, {404, outcomeNeutral},
		{200, outcomeSuccess}, {126, outcomeSuccess}, {129, outcomeSuccess}, {501, outcomeSuccess},
		{0, outcomeSuccess}, {63, outcomeSuccess}, {64, outcomeSuccess}, {99, outcomeSuccess},
		{600, outcomeSuccess}, {639, outcomeSuccess}, {640, outcomeSuccess}, {703, outcomeSuccess},
		{1000, outcomeSuccess}, {-1, outcomeSuccess}, {-64, outcomeSuccess}, {-500, outcomeSuccess},
		{1 << 40, outcomeSuccess}, {math.MaxInt, outcomeSuccess}, {math.MinInt, outcomeSuccess},
	}
	for _, tc := range tests {
		if got := s.classify(tc.code); got != tc.want {
			t.Errorf("classify(%d) = %v, want %v", tc.code, got, tc.want)
		}
	}
	var empty statusSet
	for _, c := range []int{-1, 0, 100, 404, 503, 639, 640} {
		if got := empty.classify(c); got != outcomeSuccess {
			t.Errorf("empty.classify(%d) = %v", c, got)
		}
	}
	// The built-in lists, through a compiled policy.
	pt, err := compilePolicies(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := pt.resolve("example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	for c := 0; c < 700; c++ {
		want := outcomeSuccess
		switch {
		case containsInt(wantFailure, c):
			want = outcomeFailure
		case containsInt(wantNeutral, c):
			want = outcomeNeutral
		}
		if got := r.statuses.classify(c); got != want {
			t.Errorf("default classify(%d) = %v, want %v", c, got, want)
		}
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// The stored encodings of store.go.

func FuzzDecodeRecord(f *testing.F) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []Record{
		{Host: "example.com", Reason: ReasonRetryAfter, Until: at.Add(time.Minute), At: at},
		{Host: "api.crossref.org:8443", Role: "metadata", Reason: ReasonManual, Until: at.Add(time.Hour), At: at, Note: "maintenance ☃", Source: "host-1/42"},
		{Host: "[::1]:8080", Reason: ReasonReset, Until: at.Add(time.Second), At: at.Add(time.Nanosecond)},
		{Host: "xn--bcher-kva.example", Reason: ReasonRollingWindow, Until: at, At: at},
		{Host: "example.com", Reason: ReasonBreakerOpen, Role: "artifact", Until: at, At: at},
	} {
		f.Add(encodeRecord(r))
	}
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `{"v":2,"host":"example.com","reason":"manual","until":1,"at":1}`,
		`{"v":1,"host":"EXAMPLE.com","reason":"manual","until":1,"at":1}`,
		`{"v":1,"host":"example.com","reason":"bogus","until":1,"at":1}`,
		`{"v":1,"host":"example.com","reason":"manual","until":0,"at":1}`,
		`{"v":1,"host":"example.com","reason":"manual","until":1,"at":1,"note":"\ud800\u0000"}`,
		`{"v":1,"host":"example.com","reason":"manual","until":9223372036854775807,"at":1,"extra":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			return
		}
		enc := encodeRecord(r)
		r2, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("decodeRecord(encodeRecord(%+v)) = %v (encoded %s)", r, err, enc)
		}
		if !recordsEqual(r, r2) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, r2)
		}
		if r.Until.IsZero() || r.At.IsZero() {
			t.Fatalf("decoded zero times: %+v", r)
		}
	})
}

func recordsEqual(a, b Record) bool {
	return a.Host == b.Host && a.Role == b.Role && a.Reason == b.Reason && a.Until.Equal(b.Until) &&
		a.At.Equal(b.At) && a.Note == b.Note && a.Source == b.Source
}

func FuzzDecodeStates(f *testing.F) {
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Add(encodeStates("host-1/42", nil, at))
	f.Add(encodeStates("host-1/42", []PublishedState{
		{Host: "example.com", State: StateClosed},
		{Host: "api.crossref.org", Role: "metadata", State: StateOpen, Until: at.Add(time.Minute), Reason: ReasonBreakerOpen},
		{Host: "[::1]:8080", State: StateHalfOpen, Reason: ReasonHalfOpenFull},
	}, at.Add(time.Minute)))
	for _, s := range []string{
		``, `null`, `{}`, `{"v":1,"source":"s","expires":1,"states":null}`,
		`{"v":1,"source":"s","expires":1,"states":[{"host":"h","state":"bogus"}]}`,
		`{"v":1,"source":"s","expires":1,"states":[{"host":"h","state":"open","until":-5}]}`,
		`{"v":1,"source":"s","expires":0,"states":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src, states, exp, err := decodeStates(data)
		if err != nil {
			return
		}
		if exp.IsZero() || states == nil {
			t.Fatalf("decodeStates(%q) = %q, %v, %v", data, src, states, exp)
		}
		enc := encodeStates(src, states, exp)
		src2, states2, exp2, err := decodeStates(enc)
		if err != nil {
			t.Fatalf("decodeStates(encodeStates(...)) = %v (encoded %s)", err, enc)
		}
		if src2 != src || !exp2.Equal(exp) || len(states2) != len(states) {
			t.Fatalf("round trip changed the states: %q %v %d -> %q %v %d", src, exp, len(states), src2, exp2, len(states2))
		}
		for i, s := range states {
			s2 := states2[i]
			if s.Source != src || s2.Source != src2 || s.Host != s2.Host || s.Role != s2.Role ||
				s.State != s2.State || s.Reason != s2.Reason || !s.Until.Equal(s2.Until) {
				t.Fatalf("round trip changed state %d: %+v -> %+v", i, s, s2)
			}
		}
	})
}
