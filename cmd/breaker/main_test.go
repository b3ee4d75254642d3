package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostbreaker/hostbreaker"
	"github.com/redis/go-redis/v9"
)

var update = flag.Bool("update", false, "rewrite golden files")

// mainArgsEnv makes the test binary run main with the arguments it holds
// (separated by \x1f) instead of the tests, to check exit statuses.
const mainArgsEnv = "BREAKER_TEST_MAIN_ARGS"

func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv(mainArgsEnv); ok {
		os.Args = append([]string{"breaker"}, strings.Split(args, "\x1f")...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fixed is the clock of the golden tests. It is in the future so that the
// stores, which expire records by the real clock, keep what is written.
var fixed = time.Date(2100, 1, 2, 3, 4, 5, 0, time.UTC)

// useFixedClock makes the command's clock and host name deterministic for
// the test. Tests that call it must not run in parallel.
func useFixedClock(t *testing.T) {
	t.Helper()
	oldNow, oldHost := now, hostname
	now = func() time.Time { return fixed }
	hostname = func() (string, error) { return "testhost", nil }
	t.Cleanup(func() { now, hostname = oldNow, oldHost })
}

// runCmd runs the command with args and returns its output.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

// mustRun runs the command and fails the test if it returns an error.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, _, err := runCmd(t, args...)
	if err != nil {
		t.Fatalf("breaker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// boltURL returns the path of a new bbolt store file.
func boltURL(t *testing.T) string {
	return filepath.Join(t.TempDir(), "hostbreaker.db")
}

var (
	redisOnce   sync.Once
	redisErr    error
	redisPrefix atomic.Int64
)

// redisURL returns the URL of a Redis store under a prefix of its own,
// whose keys are deleted when the test ends. It skips the test when Redis
// is unreachable, unless $CI is set.
func redisURL(t *testing.T) string {
	t.Helper()
	const addr = "127.0.0.1:6379"
	redisOnce.Do(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		redisErr = c.Ping(ctx).Err()
		cancel()
		c.Close()
		if redisErr != nil {
			fmt.Fprintf(os.Stderr, "\n*** breaker tests: Redis at %s unreachable (%v): Redis cases SKIPPED ***\n\n", addr, redisErr)
		}
	})
	if redisErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis at %s unreachable and $CI is set: %v", addr, redisErr)
		}
		t.Skipf("SKIPPED: Redis at %s unreachable: %v", addr, redisErr)
	}
	prefix := fmt.Sprintf("hbcli:%d-%d-%d:", os.Getpid(), time.Now().UnixNano(), redisPrefix.Add(1))
	t.Cleanup(func() {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			if err := c.Del(ctx, iter.Val()).Err(); err != nil {
				t.Errorf("redis cleanup: %v", err)
			}
		}
		if err := iter.Err(); err != nil {
			t.Errorf("redis cleanup: %v", err)
		}
	})
	return "redis://" + addr + "/0?prefix=" + prefix
}

// eachStore runs f against a new bbolt store and a new Redis store.
func eachStore(t *testing.T, f func(t *testing.T, store string)) {
	t.Run("bbolt", func(t *testing.T) { f(t, boltURL(t)) })
	t.Run("redis", func(t *testing.T) { f(t, redisURL(t)) })
}

// publish publishes breaker states as a running process would.
func publish(t *testing.T, storeURL string) {
	t.Helper()
	s, err := hostbreaker.OpenStore(storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	states := []hostbreaker.PublishedState{
		{Host: "api.example.org", Role: hostbreaker.RoleMetadata, State: hostbreaker.StateOpen,
			Until: fixed.Add(2 * time.Minute), Reason: hostbreaker.ReasonBreakerOpen},
		{Host: "other.example.net", State: hostbreaker.StateHalfOpen},
		{Host: "paced.example.com", State: hostbreaker.StateClosed, Rate: 4.5, LastMax: 6,
			Throttled: fixed.Add(-time.Minute)},
	}
	if err := s.PublishStates(context.Background(), "worker-1:4242:beef", states, time.Hour); err != nil {
		t.Fatal(err)
	}
}

func TestOpenShow(t *testing.T) {
	useFixedClock(t)
	eachStore(t, func(t *testing.T, store string) {
		out := mustRun(t, "open", "-f", "-store", store, "-for", "30m", "-reason", "vendor maintenance", "API.Example.org.")
		if want := "opened api.example.org for 30m0s until 2100-01-02T03:34:05Z\n"; out != want {
			t.Errorf("open printed %q, want %q", out, want)
		}
		out = mustRun(t, "open", "-f", "-store", store, "-for", "90s", "https://Bücher.Example.:443/path")
		if want := "opened xn--bcher-kva.example for 1m30s until 2100-01-02T03:05:35Z\n"; out != want {
			t.Errorf("open printed %q, want %q", out, want)
		}
		publish(t, store)

		golden(t, "show.golden", mustRun(t, "show", "-store", store))
		golden(t, "show_json.golden", mustRun(t, "show", "-store", store, "-json"))
		golden(t, "show_host.golden", mustRun(t, "show", "-store", store, "-host", "http://api.EXAMPLE.org:80/"))
		if got, want := mustRun(t, "show", "api.example.org", "-store", store), mustRun(t, "show", "-host", "api.example.org", "-store", store); got != want {
			t.Errorf("show HOST differs from show -host HOST:\n%s\n%s", got, want)
		}

		var rows []map[string]any
		if err := json.Unmarshal([]byte(mustRun(t, "show", "-store", store, "-json")), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 5 {
			t.Fatalf("show -json: %d rows, want 5", len(rows))
		}
		if r := rows[3]; r["host"] != "paced.example.com" || r["rate"] != 4.5 {
			t.Errorf("the paced host's row: %v, want rate 4.5", r)
		}
		for _, r := range rows {
			for _, k := range []string{"host", "role", "state", "reason", "source"} {
				if _, ok := r[k]; !ok {
					t.Errorf("row %v lacks key %q", r, k)
				}
			}
		}
	})
}

// TestFlagPositions checks that flags may come before, after or around HOST.
func TestFlagPositions(t *testing.T) {
	useFixedClock(t)
	for _, args := range [][]string{
		{"-for", "10m", "-reason", "before", "h.example"},
		{"h.example", "-for", "10m", "-reason", "before"},
		{"-for", "10m", "h.example", "-reason", "before"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			store := boltURL(t)
			mustRun(t, append([]string{"open", "-f", "-store", store}, args...)...)
			var rows []row
			if err := json.Unmarshal([]byte(mustRun(t, "show", "-json", "-store", store)), &rows); err != nil {
				t.Fatal(err)
			}
			want := []row{{Host: "h.example", Role: "*", State: "open", Until: "2100-01-02T03:14:05Z",
				Reason: "manual", Source: "breaker-cli@testhost", Note: "before"}}
			if fmt.Sprint(rows) != fmt.Sprint(want) {
				t.Errorf("show -json = %+v, want %+v", rows, want)
			}
		})
	}
	// The store flag after HOST as well.
	store := boltURL(t)
	mustRun(t, "close", "-f", "h.example", "-store", store)
	if out := mustRun(t, "show", "-json", "-store", store); out != "[]\n" {
		t.Errorf("show -json after close = %q", out)
	}
}

func TestClose(t *testing.T) {
	useFixedClock(t)
	eachStore(t, func(t *testing.T, store string) {
		mustRun(t, "open", "-f", "-store", store, "api.example.org")
		mustRun(t, "open", "-f", "-store", store, "keep.example.org")
		out := mustRun(t, "close", "-store", store, "API.example.org")
		if want := "closed api.example.org: every process sharing the store resets it within its poll interval\n"; out != want {
			t.Errorf("close printed %q, want %q", out, want)
		}
		if out := mustRun(t, "show", "-store", store, "-host", "api.example.org"); !strings.HasSuffix(out, "\nno open breakers or cooldowns\n") ||
			!strings.HasPrefix(out, "HOST ") || strings.Count(out, "\n") != 2 {
			t.Errorf("show after close:\n%s", out)
		}
		if out := mustRun(t, "show", "-store", store, "-host", "api.example.org", "-json"); out != "[]\n" {
			t.Errorf("show -json after close = %q, want []", out)
		}
		if out := mustRun(t, "show", "-store", store); !strings.Contains(out, "keep.example.org") {
			t.Errorf("close removed another host:\n%s", out)
		}
		mustRun(t, "close", "-store", store, "keep.example.org")
		golden(t, "show_empty.golden", mustRun(t, "show", "-store", store))
	})
}

// okTransport answers every request with 200.
type okTransport struct{ calls atomic.Int64 }

func (o *okTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	o.calls.Add(1)
	return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Body: io.NopCloser(strings.NewReader("ok")),
		Header: make(http.Header), Request: req, ProtoMajor: 1, ProtoMinor: 1}, nil
}

// TestTransport checks that a running Transport sharing the store obeys
// open and close, however the operator spells the host.
func TestTransport(t *testing.T) {
	for _, spelling := range []string{
		"api.example.org",
		"API.Example.org.",
		"https://api.example.org:0443/works?rows=1", // the scheme's default port, with a leading zero
	} {
		t.Run(spelling, func(t *testing.T) {
			eachStore(t, func(t *testing.T, store string) { testTransport(t, store, spelling) })
		})
	}
}

// testTransport runs "open" and "close" with host as the operator spelled
// it and checks that a Transport requesting https://api.example.org obeys
// them.
func testTransport(t *testing.T, store, host string) {
	base := &okTransport{}
	tr, err := hostbreaker.NewTransport(base, hostbreaker.WithConfig(hostbreaker.Config{
		Store: hostbreaker.StoreConfig{URL: store, PollInterval: 50 * time.Millisecond},
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	get := func() error {
		resp, err := client.Get("https://api.example.org/works")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	// await polls until the transport's answer satisfies ok.
	await := func(what string, ok func(error) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := get()
			if ok(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 5s, %s: last error %v", what, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := get(); err != nil {
		t.Fatalf("before open: %v", err)
	}

	out := mustRun(t, "open", "-f", "-store", store, "-for", "5m", "-reason", "test", host)
	if !strings.HasPrefix(out, "opened api.example.org ") {
		t.Errorf("open printed %q", out)
	}
	await("the transport still accepts the opened host", func(err error) bool {
		var oe *hostbreaker.OpenError
		return errors.As(err, &oe) && oe.Reason == hostbreaker.ReasonManual && oe.Host == "api.example.org"
	})
	calls := base.calls.Load()
	if err := get(); !errors.Is(err, hostbreaker.ErrOpen) {
		t.Fatalf("open host: %v", err)
	}
	if base.calls.Load() != calls {
		t.Error("a rejected request reached the base transport")
	}

	mustRun(t, "close", "-store", store, host)
	await("the transport still rejects the closed host", func(err error) bool { return err == nil })
}

func TestErrors(t *testing.T) {
	store := boltURL(t)
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{nil, true, "missing command"},
		{[]string{"bogus"}, true, `unknown command "bogus"`},
		{[]string{"open", "-f", "-store", store}, true, "open: missing HOST"},
		{[]string{"close", "-store", store}, true, "close: missing HOST"},
		{[]string{"open", "-f", "-store", store, "h.example", "-for", "0s"}, true, "-for must be positive"},
		{[]string{"open", "-f", "-store", store, "h.example", "-for", "-5m"}, true, "-for must be positive"},
		{[]string{"open", "-f", "-store", store, "h.example", "-for", "banana"}, true, `invalid value "banana" for flag -for`},
		{[]string{"open", "-f", "-store", store, "h.example", "-for", "100000h"}, true, "longer than"},
		{[]string{"open", "-f", "-store", store, "h.example", "extra"}, true, `unexpected argument "extra"`},
		{[]string{"show", "-nope"}, true, "flag provided but not defined: -nope"},
		{[]string{"show", "-store", store, "-host", "a.example", "b.example"}, true, "give the host once"},
		{[]string{"open", "-f", "-store", "", "h.example"}, true, "-store is empty"},
		{[]string{"open", "-f", "-store", "nosuch://x", "h.example"}, false, `"nosuch://x"`},
		{[]string{"show", "-store", "nosuch://x"}, false, `"nosuch://x"`},
		{[]string{"close", "-store", "nosuch://x", "h.example"}, false, `"nosuch://x"`},
		{[]string{"show", "-store", filepath.Join(t.TempDir(), "no", "dir", "x.db")}, false, filepath.Join("no", "dir", "x.db")},
		{[]string{"open", "-f", "-store", store, "bad host!"}, false, `"bad host!"`},
		{[]string{"close", "-store", store, "bad host!"}, false, `"bad host!"`},
		{[]string{"open", "-f", "-store", store, "https:///nohost"}, false, `open: invalid host "https:///nohost"`},
		{[]string{"show", "-store", store, "-host", "bad host!"}, false, `show: invalid host "bad host!"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, _, err := runCmd(t, tc.args...)
			if err == nil {
				t.Fatalf("no error; output %q", out)
			}
			var ue *usageError
			if isUsage := errors.As(err, &ue); isUsage != tc.usage {
				t.Errorf("usage error = %v, want %v (%v)", isUsage, tc.usage, err)
			} else if isUsage && !strings.Contains(ue.usage, "Usage: breaker") {
				t.Errorf("usage error without usage text: %q", ue.usage)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	t.Run("redis bad host", func(t *testing.T) {
		_, _, err := runCmd(t, "open", "-f", "-store", redisURL(t), "bad host!")
		if err == nil || !strings.Contains(err.Error(), `"bad host!"`) {
			t.Errorf("error %v does not name the host", err)
		}
	})
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"show", "-h"}, {"open", "-help"}, {"close", "-h"}} {
		out, _, err := runCmd(t, args...)
		if err != nil || !strings.Contains(out, "Usage: breaker") {
			t.Errorf("breaker %v: %v, %q", args, err, out)
		}
		if len(args) > 1 && !strings.Contains(out, "-store") {
			t.Errorf("breaker %v does not list -store:\n%s", args, out)
		}
	}
}

// runMain runs main with args in a child process (the test binary, see
// TestMain) and returns its exit status and stderr.
func runMain(t *testing.T, args ...string) (status int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mainArgsEnv+"="+strings.Join(args, "\x1f"))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), errb.String()
	} else if err != nil {
		t.Fatalf("breaker %v: %v (stderr %q)", args, err, errb.String())
	}
	return 0, errb.String()
}

// TestDeadRedis checks that a Redis store nobody listens on gives one
// clear error line, not go-redis's own log of every failed dial.
func TestDeadRedis(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens on addr now
	store := "redis://" + addr + "/0?prefix=hbcli-dead:"
	for _, args := range [][]string{
		{"show", "-store", store},
		{"open", "-f", "-store", store, "h.example"},
		{"close", "-store", store, "h.example"},
	} {
		status, stderr := runMain(t, args...)
		if status != 1 || !strings.HasPrefix(stderr, "breaker: ") || strings.Count(stderr, "\n") != 1 ||
			!strings.HasSuffix(stderr, "\n") || !strings.Contains(stderr, addr) {
			t.Errorf("breaker %v: status %d, stderr:\n%s\nwant status 1 and one line \"breaker: …%s…\"", args, status, stderr, addr)
		}
	}
}

// TestExitStatus runs main in a child process.
func TestExitStatus(t *testing.T) {
	store := boltURL(t)
	missing := filepath.Join(t.TempDir(), "missing.db")
	for _, tc := range []struct {
		args   []string
		status int
		stderr string
	}{
		{[]string{"open", "-f", "-store", store, "h.example"}, 0, ""},
		{[]string{"bogus"}, 2, "breaker: unknown command \"bogus\"\n\nUsage: breaker <command>"},
		{[]string{"open", "-f", "-store", store}, 2, "breaker: open: missing HOST\n\nUsage: breaker open"},
		{[]string{"show", "-store", "nosuch://x"}, 1, "breaker: open store \"nosuch://x\": unknown scheme"},
		{[]string{"show", "-store", missing}, 1, "breaker: no store at " + missing + "\n"},
	} {
		status, stderr := runMain(t, tc.args...)
		if status != tc.status || !strings.HasPrefix(stderr, tc.stderr) {
			t.Errorf("breaker %v: status %d, stderr %q; want %d, %q…", tc.args, status, stderr, tc.status, tc.stderr)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("breaker show -store %s left a file behind (stat: %v)", missing, err)
	}
}

// TestHostSpellings checks that open, show -host and close take HOST in
// any spelling that hostbreaker.NormalizeHost accepts, and agree on the
// host it names.
func TestHostSpellings(t *testing.T) {
	store := boltURL(t)
	for _, tc := range []struct{ in, want string }{
		{"Example.ORG", "example.org"},
		{"example.org.", "example.org"},
		{"example.org:8443", "example.org:8443"},
		{"example.org:443", "example.org:443"}, // no scheme, no default port: kept, as the usage says
		{"example.org.:08080", "example.org:8080"},
		{"Bücher.example", "xn--bcher-kva.example"},
		{"https://Example.org:443/x?y=1", "example.org"},
		{"https://Example.org:0443/", "example.org"},
		{"HTTP://user:pass@example.org:80", "example.org"},
		{"https://example.org:80/", "example.org:80"},
		{"http://example.org:8080/", "example.org:8080"},
		{"[2001:DB8::1]:443", "[2001:db8::1]:443"},
		{"2001:db8::1", "[2001:db8::1]"},
		{"https://[::1]:443/", "[::1]"},
	} {
		out := mustRun(t, "open", "-f", "-store", store, tc.in)
		if !strings.HasPrefix(out, "opened "+tc.want+" for ") {
			t.Errorf("open %q printed %q, want host %q", tc.in, out, tc.want)
			continue
		}
		var rows []row
		if err := json.Unmarshal([]byte(mustRun(t, "show", "-json", "-store", store, "-host", tc.in)), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].Host != tc.want {
			t.Errorf("show -host %q = %+v, want the cooldown of %q", tc.in, rows, tc.want)
		}
		mustRun(t, "close", "-store", store, tc.in)
		if out := mustRun(t, "show", "-json", "-store", store); out != "[]\n" {
			t.Errorf("show after close %q = %q, want []", tc.in, out)
		}
	}
}

// TestMissingStore checks that show refuses a bbolt file that does not
// exist, without creating it, and that open and close create it and say so.
func TestMissingStore(t *testing.T) {
	useFixedClock(t)
	dir := t.TempDir()
	t.Chdir(dir) // a relative -store is named by its absolute path
	abs := func(name string) string { return filepath.Join(dir, name) }
	exists := func(path string) bool {
		_, err := os.Stat(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return err == nil
	}

	for _, store := range []string{"show.db", abs("show.db"), "bolt://" + abs("show.db")} {
		out, stderr, err := runCmd(t, "show", "-store", store)
		if want := "no store at " + abs("show.db"); err == nil || err.Error() != want {
			t.Errorf("show -store %s: error %v, want %q", store, err, want)
		}
		var ue *usageError
		if errors.As(err, &ue) {
			t.Errorf("show -store %s: a usage error (exit status 2), want 1", store)
		}
		if out != "" || stderr != "" {
			t.Errorf("show -store %s printed %q, %q", store, out, stderr)
		}
		if exists(abs("show.db")) {
			t.Fatalf("show -store %s created the file", store)
		}
	}

	for _, cmd := range []string{"open", "close"} {
		name := cmd + ".db"
		for _, want := range []string{"breaker: created store " + abs(name) + "\n", ""} {
			_, stderr, err := runCmd(t, cmd, "-f", "-store", name, "h.example")
			if err != nil {
				t.Fatalf("%s -store %s: %v", cmd, name, err)
			}
			if stderr != want {
				t.Errorf("%s -store %s: stderr %q, want %q", cmd, name, stderr, want)
			}
			if !exists(abs(name)) {
				t.Fatalf("%s -store %s: no file", cmd, name)
			}
		}
		if _, _, err := runCmd(t, "show", "-store", name); err != nil {
			t.Errorf("show -store %s after %s: %v", name, cmd, err)
		}
	}

	// A directory that does not exist: open fails, and does not claim to
	// have created anything.
	_, stderr, err := runCmd(t, "open", "-f", "-store", abs("no/dir/x.db"), "h.example")
	if err == nil || stderr != "" {
		t.Errorf("open in a missing directory: error %v, stderr %q", err, stderr)
	}
}

// TestUnknownHost: close and open refuse a host the store knows nothing of
// (a typo), with exit status 1 and nothing written, and name the known
// hosts that are near; -f forces it; a host known from a record, a
// published state or the journal is accepted.
func TestUnknownHost(t *testing.T) {
	useFixedClock(t)
	eachStore(t, func(t *testing.T, store string) {
		mustRun(t, "open", "-f", "-store", store, "-for", "1m", "pdf.slowpub.test")
		for _, cmd := range []string{"close", "open"} {
			_, _, err := runCmd(t, cmd, "-store", store, "pdf.slowpub.tset")
			var ue *usageError
			if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "the store knows nothing of pdf.slowpub.tset") ||
				!strings.Contains(err.Error(), "did you mean pdf.slowpub.test?") {
				t.Errorf("%s of a typo: %v, want an error (status 1) naming the near host", cmd, err)
			}
			if _, _, err := runCmd(t, cmd, "-store", store, "nonexistent.example"); err == nil || strings.Contains(err.Error(), "did you mean") {
				t.Errorf("%s nonexistent.example: %v", cmd, err)
			}
		}
		if out := mustRun(t, "show", "-store", store, "-json"); strings.Contains(out, "tset") || strings.Contains(out, "nonexistent") {
			t.Errorf("refused commands wrote: %s", out)
		}
		// Known: the record of the open above.
		mustRun(t, "close", "-store", store, "pdf.slowpub.test")
		// Forced.
		if out := mustRun(t, "open", "-f", "-store", store, "new.example"); !strings.HasPrefix(out, "opened new.example") {
			t.Errorf("open -f printed %q", out)
		}
		// Known from the journal only.
		s, err := hostbreaker.OpenStore(store)
		if err != nil {
			t.Fatal(err)
		}
		ev := hostbreaker.Event{Name: hostbreaker.EventSummary, Time: time.Now(), Process: "p", Host: "journal.example",
			Summary: &hostbreaker.Summary{Requests: 1, Successes: 1}}
		if _, err := s.AppendEvents(context.Background(), []hostbreaker.Event{ev}, hostbreaker.JournalLimits{}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		useRealClock := now
		now = time.Now
		mustRun(t, "close", "-store", store, "journal.example")
		now = useRealClock
	})
	store := boltURL(t)
	mustRun(t, "open", "-f", "-store", store, "h.example")
	if status, stderr := runMain(t, "close", "-store", store, "nonexistent.example"); status != 1 ||
		!strings.HasPrefix(stderr, "breaker: the store knows nothing of nonexistent.example") {
		t.Errorf("exit status %d, stderr %q; want 1", status, stderr)
	}
	// Without -f, a store that does not exist is not created: it knows nothing.
	missing := filepath.Join(t.TempDir(), "missing.db")
	if status, stderr := runMain(t, "close", "-store", missing, "h.example"); status != 1 || stderr != "breaker: no store at "+missing+"\n" {
		t.Errorf("close on a missing store: status %d, stderr %q", status, stderr)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"pdf.slowpub.tset", "pdf.slowpub.test", 1}, {"abc", "abd", 1}, {"kitten", "sitting", 3}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}
