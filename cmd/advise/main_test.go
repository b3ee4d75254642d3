package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// TestMain runs main when the test binary is re-executed as the command.
func TestMain(m *testing.M) {
	if os.Getenv("ADVISE_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// runBinary runs the command as a separate process: this test binary,
// re-executed to run main.
func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "ADVISE_RUN_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func runInProcess(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

// adviceJSON runs advise (with run) on the store at storeURL with -json
// and args, and returns its advice; a non-zero exit fails the test.
func adviceJSON(t *testing.T, run func(*testing.T, ...string) (string, string, int), storeURL string, args ...string) []hostbreaker.Advice {
	t.Helper()
	out, errOut, code := run(t, append([]string{"-store", storeURL, "-json"}, args...)...)
	if code != 0 {
		t.Fatalf("advise %v: exit %d: %s", args, code, errOut)
	}
	var advice []hostbreaker.Advice
	if err := json.Unmarshal([]byte(out), &advice); err != nil {
		t.Fatalf("advise %v: %v\n%s", args, err, out)
	}
	return advice
}

// redisURL returns a Redis store URL under a fresh prefix, or skips (fails
// under CI) when no Redis answers.
func redisURL(t *testing.T) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:6379", time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no Redis at 127.0.0.1:6379: %v", err)
		}
		t.Skipf("no Redis at 127.0.0.1:6379: %v", err)
	}
	c.Close()
	return fmt.Sprintf("redis://127.0.0.1:6379/0?prefix=advisetest-%d-%d", os.Getpid(), time.Now().UnixNano())
}

// hosts are loopback servers with the behaviours the rules look for.
type hosts struct {
	throttled, flapping, transient, healthy, limited string
}

func startHosts(t *testing.T) hosts {
	t.Helper()
	serve := func(h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	var nThrottled, nTransient, nLimited atomic.Int64
	return hosts{
		// Asks for pauses with Retry-After three times, then fails
		// (opening the breaker).
		throttled: serve(func(w http.ResponseWriter, r *http.Request) {
			if nThrottled.Add(1) <= 3 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			w.WriteHeader(http.StatusInternalServerError)
		}),
		// Down for good: every probe fails, the breaker flaps.
		flapping: serve(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }),
		// Short bursts of failures, healthy in between: mostly too short
		// to trip (2 with fail_max 3), now and then one that trips.
		transient: serve(func(w http.ResponseWriter, r *http.Request) {
			switch nTransient.Add(1) % 20 {
			case 1, 2, 11, 12, 13:
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}),
		healthy: serve(func(w http.ResponseWriter, r *http.Request) {}),
		// Answers one request in ten with a 429 (no Retry-After): too
		// fast, never down.
		limited: serve(func(w http.ResponseWriter, r *http.Request) {
			if nLimited.Add(1)%10 == 0 {
				w.WriteHeader(http.StatusTooManyRequests)
			}
		}),
	}
}

func hostOf(url string) string { return strings.TrimPrefix(url, "http://") }

// drive sends traffic to every host through a Transport on the store for
// about d, then closes it, which flushes its journal.
// testConfig is the policy file of the test's Transports and of advise:
// short open phases, so that a few seconds of traffic show every pattern,
// and a role whose breakers stay open for long. The adaptive limiter is
// off: it would pace the throttled host (at min_rate, every request 429)
// so that its breaker never opens, and rule 2 needs one that did.
const testConfig = `
[defaults]
fail_max = 3
reset_timeout = "300ms"
half_open_jitter = "0s"
adaptive = false
[defaults.roles.landing]
reset_timeout = "1h"
`

// writeConfig writes testConfig to a file and returns its path and the
// Config for a Transport on storeURL.
func writeConfig(t *testing.T, storeURL string) (string, hostbreaker.Config) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hostbreaker.toml")
	if err := os.WriteFile(path, []byte(testConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := hostbreaker.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = hostbreaker.StoreConfig{URL: storeURL, PollInterval: 100 * time.Millisecond}
	return path, cfg
}

func drive(t *testing.T, storeURL string, h hosts, d time.Duration) {
	t.Helper()
	_, cfg := writeConfig(t, storeURL)
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		for _, u := range []string{h.throttled, h.flapping, h.transient, h.healthy, h.limited} {
			req, _ := http.NewRequestWithContext(hostbreaker.WithRole(context.Background(), hostbreaker.RoleMetadata), http.MethodGet, u+"/x", nil)
			if resp, err := c.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}

// eachDrivenStore runs f once per kind of store, bbolt and Redis, with a
// fresh store URL and hosts that a Transport on that store has driven
// for 5 s.
func eachDrivenStore(t *testing.T, f func(t *testing.T, storeURL string, h hosts)) {
	for _, kind := range []string{"bbolt", "redis"} {
		t.Run(kind, func(t *testing.T) {
			storeURL := filepath.Join(t.TempDir(), "hb.db")
			if kind == "redis" {
				storeURL = redisURL(t)
			}
			h := startHosts(t)
			drive(t, storeURL, h, 5*time.Second)
			f(t, storeURL, h)
		})
	}
}

// runningTransport returns a Transport on cfg that runs in this process
// until the test ends, as another process sharing the store would, after
// three requests of role to url (the flapping host: its breaker opens).
func runningTransport(t *testing.T, cfg hostbreaker.Config, url, role string) *hostbreaker.Transport {
	t.Helper()
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := &http.Client{Transport: tr}
	for range 3 {
		req, _ := http.NewRequestWithContext(hostbreaker.WithRole(context.Background(), role), http.MethodGet, url, nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	return tr
}

func TestAdviseEnforceHistoryRevert(t *testing.T) {
	eachDrivenStore(t, func(t *testing.T, storeURL string, h hosts) {
		configFile, cfg := writeConfig(t, storeURL)

		out, errOut, code := runBinary(t, "-store", storeURL, "-config", configFile, "-json")
		if code != 0 {
			t.Fatalf("advise -json: exit %d: %s", code, errOut)
		}
		var advice []hostbreaker.Advice
		if err := json.Unmarshal([]byte(out), &advice); err != nil {
			t.Fatalf("stdout is not a JSON array of advice: %v\n%s", err, out)
		}
		byHost := map[string][]hostbreaker.Advice{}
		for _, a := range advice {
			byHost[a.Host] = append(byHost[a.Host], a)
		}
		t.Logf("advice: %s", out)
		// The right keys, for the right reasons.
		for _, want := range []struct{ url, key, why string }{
			{h.throttled, "reset_timeout", "Retry-After"},
			{h.flapping, "reset_timeout", "by a failed probe"},
			{h.transient, "fail_max", "closed by the first probe"},
			{h.limited, "rate", "answered 429"},
		} {
			found := false
			for _, a := range byHost[hostOf(want.url)] {
				// A replay for the breaker keys, none for rate.
				found = found || a.Key == want.key && strings.Contains(a.Reason, want.why) && (a.Replay != nil) == (a.Key != "rate")
			}
			if !found {
				t.Errorf("%s: no %s advice that says %q: %+v", hostOf(want.url), want.key, want.why, byHost[hostOf(want.url)])
			}
		}
		for _, u := range []string{h.throttled, h.flapping, h.transient, h.limited} {
			if len(byHost[hostOf(u)]) == 0 {
				t.Errorf("no advice for %s; its journal:", hostOf(u))
				s, _ := hostbreaker.OpenStore(storeURL)
				evs, _ := hostbreaker.ReadJournal(context.Background(), s, time.Time{})
				s.Close()
				for _, ev := range evs {
					if ev.Host == hostOf(u) && ev.Name != hostbreaker.EventSummary {
						t.Logf("%s %s %s->%s %s ra=%v", ev.Name, ev.Role, ev.PreviousState, ev.State, ev.Reason, ev.RetryAfter)
					} else if ev.Host == hostOf(u) {
						t.Logf("summary %+v", *ev.Summary)
					}
				}
			}
		}
		if a := byHost[hostOf(h.healthy)]; len(a) != 0 {
			t.Errorf("advice for the healthy host: %+v", a)
		}
		// A Transport that runs now, in this process, with the same
		// store: -enforce (another process) changes its policy live.
		// An open breaker that the tune must leave open.
		tr := runningTransport(t, cfg, h.flapping, hostbreaker.RoleLanding)
		landingOpen := func() bool {
			for _, st := range tr.Snapshot() {
				if st.Host == hostOf(h.flapping) && st.Role == hostbreaker.RoleLanding {
					return st.State == hostbreaker.StateOpen
				}
			}
			return false
		}
		if !landingOpen() {
			t.Fatalf("the landing breaker did not open: %+v", tr.Snapshot())
		}
		// The first advice, and the limited host's rate.
		targets := []hostbreaker.Advice{advice[0]}
		for _, a := range byHost[hostOf(h.limited)] {
			if a.Key == "rate" && a != advice[0] {
				targets = append(targets, a)
			}
		}
		before := make([]hostbreaker.Policy, len(targets))
		for i, target := range targets {
			before[i], _ = tr.Policy(target.Host, target.Role)
		}
		if _, errOut, code := runBinary(t, "-store", storeURL, "-config", configFile, "-enforce"); code != 0 {
			t.Fatalf("advise -enforce: exit %d: %s", code, errOut)
		}
		bound := 100*time.Millisecond + 2*time.Second // poll + 1 s, generous
		if strings.HasPrefix(storeURL, "redis") {
			bound = 2 * time.Second
		}
		deadline := time.Now().Add(10 * bound)
		for i, target := range targets {
			for {
				p, _ := tr.Policy(target.Host, target.Role)
				if policyValue(p, target.Key) == target.Proposed {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s %s: %s = %s, want %s after -enforce (before: %+v)", target.Host, target.Role, target.Key,
						policyValue(p, target.Key), target.Proposed, before[i])
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		if !landingOpen() {
			t.Errorf("the tune closed an open breaker: %+v", tr.Snapshot())
		}
		out, _, code = runBinary(t, "-store", storeURL, "-history")
		for _, target := range targets {
			if code != 0 || !strings.Contains(out, target.Host) || !strings.Contains(out, target.Key) ||
				!strings.Contains(out, "advise -enforce") {
				t.Fatalf("advise -history (exit %d), no %s %s:\n%s", code, target.Host, target.Key, out)
			}
		}
		if _, errOut, code := runBinary(t, "-store", storeURL, "-revert", "all"); code != 0 {
			t.Fatalf("advise -revert all: exit %d: %s", code, errOut)
		}
		deadline = time.Now().Add(10 * bound)
		for i, target := range targets {
			for ; ; time.Sleep(10 * time.Millisecond) {
				p, _ := tr.Policy(target.Host, target.Role)
				if policyValue(p, target.Key) == policyValue(before[i], target.Key) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after -revert: %s = %s, want %s", target.Key, policyValue(p, target.Key), policyValue(before[i], target.Key))
				}
			}
		}
	})
}

// policyValue returns the TOML value of key in p.
func policyValue(p hostbreaker.Policy, key string) string {
	switch key {
	case "fail_max":
		return fmt.Sprint(p.FailMax)
	case "reset_timeout":
		return p.ResetTimeout.String()
	case "success_threshold":
		return fmt.Sprint(p.SuccessThreshold)
	case "trial_calls":
		return fmt.Sprint(p.TrialCalls)
	case "rate":
		return strconv.FormatFloat(p.Rate, 'g', -1, 64) // 0: unlimited, as in TOML
	}
	return "?"
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.db")
	if _, errOut, code := runInProcess(t, "-store", missing); code != 1 || !strings.Contains(errOut, "no store at "+missing) {
		t.Errorf("missing store: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("a missing store was created")
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[defaults]\nfail_max = 0\n"), 0o600)
	if _, errOut, code := runInProcess(t, "-store", missing, "-config", bad); code != 1 || !strings.Contains(errOut, "line 2") {
		t.Errorf("bad config: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runInProcess(t, "-store", "redis://127.0.0.1:1/0"); code != 1 || strings.Count(errOut, "\n") != 1 {
		t.Errorf("unreachable store: exit %d, %q", code, errOut)
	}
	if _, _, code := runInProcess(t, "-enforce", "-history"); code != 2 {
		t.Errorf("exclusive flags: exit %d", code)
	}
	if _, _, code := runInProcess(t, "-nosuch"); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
}

func TestNoAdvice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	s, err := hostbreaker.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	out, _, code := runInProcess(t, "-store", path)
	if code != 0 || out != "no advice: 0 hosts, 0 requests in the window\n" {
		t.Errorf("exit %d, %q", code, out)
	}
	out, _, code = runInProcess(t, "-store", path, "-json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("-json: exit %d, %q", code, out)
	}
}

// TestOperatorSafety: the newcomer's cases of issue 16 against a running
// Transport. Without -config, the values in force are those the process
// published (fail_max 3 and reset_timeout 300ms of its file, not the
// built-in 5 and 1m0s); advice on a (host, role) nobody published is marked
// assumed and -enforce refuses it; -host and -key select; without -enforce
// the output says nothing was written; -history -json is JSON; processes
// with different configurations are reported; -revert of a typo fails.
func TestOperatorSafety(t *testing.T) {
	storeURL := filepath.Join(t.TempDir(), "hb.db")
	h := startHosts(t)
	drive(t, storeURL, h, 4*time.Second)
	_, cfg := writeConfig(t, storeURL)
	// A process that runs on: its flapping host's breaker never closes, so
	// it publishes that (host, role) with its policy.
	tr := runningTransport(t, cfg, h.flapping, hostbreaker.RoleMetadata)
	flapping := hostOf(h.flapping)
	s, err := hostbreaker.OpenStore(storeURL)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, _ := s.States(context.Background())
		if len(st) > 0 && st[0].ConfigHash != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no published policy: %+v", st)
		}
	}

	adviceOf := func(args ...string) []hostbreaker.Advice {
		t.Helper()
		return adviceJSON(t, runInProcess, storeURL, args...)
	}
	// The real CURRENT, from the published state.
	got := adviceOf("-host", h.flapping)
	if len(got) == 0 {
		t.Fatal("no advice for the flapping host")
	}
	for _, a := range got {
		if a.Host != flapping {
			t.Errorf("-host %s: advice for %s", flapping, a.Host)
		}
		if a.Role == "metadata" && a.From != hostbreaker.FromPublished {
			t.Errorf("%+v: want From published", a)
		}
		if a.Role == "metadata" && a.Key == "reset_timeout" && a.Current != "300ms" {
			t.Errorf("reset_timeout Current %s, want 300ms (the file's, as published; built-in 1m0s)", a.Current)
		}
		if a.Role == "metadata" && a.Key == "fail_max" && a.Current != "3" {
			t.Errorf("fail_max Current %s, want 3", a.Current)
		}
	}
	// -key selects.
	for _, a := range adviceOf("-key", "reset_timeout") {
		if a.Key != "reset_timeout" {
			t.Errorf("-key reset_timeout: %+v", a)
		}
	}
	if _, _, code := runInProcess(t, "-store", storeURL, "-key", "fail_maks"); code != 2 {
		t.Errorf("-key fail_maks: exit %d, want 2", code)
	}
	// -json alone writes nothing; the table says it wrote nothing.
	out, _, _ := runInProcess(t, "-store", storeURL)
	if !strings.Contains(out, "dry run: nothing written") {
		t.Errorf("no dry-run note:\n%s", out)
	}
	if ov, _ := s.Overrides(context.Background()); len(ov) != 0 {
		t.Errorf("advise without -enforce wrote %v", ov)
	}
	// -enforce on what is known: the published host.
	if _, errOut, code := runInProcess(t, "-store", storeURL, "-enforce", "-host", flapping, "-key", "reset_timeout"); code != 0 {
		t.Fatalf("-enforce -host: exit %d: %s", code, errOut)
	}
	ov, _ := s.Overrides(context.Background())
	if len(ov) != 1 || ov[flapping].Roles["metadata"].ResetTimeout == 0 {
		t.Errorf("overrides after -enforce -host -key: %+v", ov)
	}
	// -history -json.
	out, errOut, code := runInProcess(t, "-store", storeURL, "-history", "-json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil || len(rows) == 0 {
		t.Fatalf("-history -json: exit %d, %v, %q %q", code, err, out, errOut)
	}
	if r := rows[0]; r["host"] != flapping || r["role"] != "metadata" || r["key"] != "reset_timeout" || r["before"] != "300ms" {
		t.Errorf("-history -json row %v", r)
	}
	// Two configurations.
	if err := s.PublishStates(context.Background(), "other:1#1", []hostbreaker.PublishedState{{Host: flapping, Role: "metadata",
		State: hostbreaker.StateOpen, ConfigHash: "0123abcd", Policy: hostbreaker.Policy{FailMax: 9, ResetTimeout: time.Minute,
			SuccessThreshold: 1, TrialCalls: 1}}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runInProcess(t, "-store", storeURL)
	if !strings.Contains(out, "the processes run 2 different configurations") || !strings.Contains(out, "0123abcd (other:1#1)") {
		t.Errorf("no warning about two configurations:\n%s", out)
	}
	// Once no process runs (the Transport closed withdraws its
	// configuration), a host nobody published: assumed, and -enforce refuses.
	tr.Close()
	assumed := false
	all := adviceOf()
	for _, a := range all {
		assumed = assumed || a.From == hostbreaker.FromAssumed
	}
	if !assumed {
		t.Errorf("no assumed advice (on a host no process published): %+v", all)
	}
	ovBefore, _ := s.Overrides(context.Background())
	_, errOut, code = runInProcess(t, "-store", storeURL, "-enforce")
	if code != 1 || !strings.Contains(errOut, "is not known") || !strings.Contains(errOut, "nothing written") {
		t.Errorf("-enforce with assumed values: exit %d, %q", code, errOut)
	}
	if ov, _ := s.Overrides(context.Background()); len(ov) != len(ovBefore) {
		t.Errorf("a refused -enforce wrote %v", ov)
	}
	s.Close()
	// -revert of a typo.
	typo := strings.Replace(flapping, "127.0.0.1", "127.0.0.11", 1)
	_, errOut, code = runInProcess(t, "-store", storeURL, "-revert", typo)
	if code != 1 || !strings.Contains(errOut, "no tuned override of "+typo) || !strings.Contains(errOut, "did you mean "+flapping+"?") {
		t.Errorf("-revert typo: exit %d, %q", code, errOut)
	}
	if _, errOut, code = runInProcess(t, "-store", storeURL, "-revert", typo, "-f"); code != 0 {
		t.Errorf("-revert -f: exit %d, %q", code, errOut)
	}
	if _, errOut, code = runInProcess(t, "-store", storeURL, "-revert", flapping); code != 0 {
		t.Errorf("-revert: exit %d, %q", code, errOut)
	}
}

// A running process's configuration gives advise the value in force of a
// host whose breaker is closed, which no published state shows: CURRENT is
// the real one, from "published", with no -config. Processes whose
// configurations differ are reported; -enforce refuses once no process
// runs.
func TestCurrentOfAClosedHost(t *testing.T) {
	eachDrivenStore(t, func(t *testing.T, storeURL string, h hosts) {
		_, cfg := writeConfig(t, storeURL)
		tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		transient := hostOf(h.transient)
		req, _ := http.NewRequestWithContext(hostbreaker.WithRole(context.Background(), hostbreaker.RoleMetadata), http.MethodGet, h.transient, nil)
		if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
			resp.Body.Close()
		}
		s, err := hostbreaker.OpenStore(storeURL)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		running := func(n int) {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				cs, _ := s.Configs(context.Background())
				k := 0
				for _, c := range cs {
					if c.Running(time.Now()) {
						k++
					}
				}
				if k == n {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d configurations running, want %d: %+v", k, n, cs)
				}
			}
		}
		running(1)
		for _, st := range tr.Snapshot() {
			if st.Host == transient && st.State != hostbreaker.StateClosed {
				t.Fatalf("the transient host is not closed: %+v", st)
			}
		}
		// The rows that drive's Transport published expire (5 s):
		// then no row shows the closed host.
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			states, _ := s.States(context.Background())
			if !slices.ContainsFunc(states, func(st hostbreaker.PublishedState) bool { return st.Host == transient }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the closed host has a published state: %+v", states)
			}
		}
		adviceOf := func(args ...string) []hostbreaker.Advice {
			t.Helper()
			return adviceJSON(t, runBinary, storeURL, args...)
		}
		found := false
		for _, a := range adviceOf("-host", transient) {
			if a.Key == "fail_max" {
				found = true
				if a.From != hostbreaker.FromPublished || a.Current != "3" {
					t.Errorf("fail_max of the closed host: CURRENT %s from %s, want 3 (the file's; built-in 5) from published", a.Current, a.From)
				}
			}
		}
		if !found {
			t.Fatalf("no fail_max advice for %s", transient)
		}

		// Another process, with another configuration (the landing
		// role's reset_timeout): reported.
		cfg2 := cfg
		cfg2.Defaults.Roles = map[string]hostbreaker.Policy{hostbreaker.RoleLanding: {ResetTimeout: 2 * time.Hour}}
		tr2, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg2))
		if err != nil {
			t.Fatal(err)
		}
		defer tr2.Close()
		running(2)
		out, _, _ := runBinary(t, "-store", storeURL)
		if !strings.Contains(out, "the processes run 2 different configurations") {
			t.Errorf("no warning about two configurations:\n%s", out)
		}
		// Their values agree on the closed host's fail_max: -enforce may
		// write it.
		if _, errOut, code := runBinary(t, "-store", storeURL, "-enforce", "-host", transient, "-key", "fail_max"); code != 0 {
			t.Fatalf("-enforce -host %s -key fail_max: exit %d: %s", transient, code, errOut)
		}
		if ov, _ := s.Overrides(context.Background()); ov[transient].FailMax == 0 && ov[transient].Roles["metadata"].FailMax == 0 {
			t.Errorf("overrides after -enforce: %+v", ov)
		}
		// No process runs: nothing known, -enforce refuses.
		tr.Close()
		tr2.Close()
		running(0)
		_, errOut, code := runBinary(t, "-store", storeURL, "-enforce")
		if code != 1 || !strings.Contains(errOut, "is not known") {
			t.Errorf("-enforce with no process running: exit %d, %q", code, errOut)
		}
	})
}

// throttledStore returns a bbolt store whose journal has one summary a
// minute ago for each host, 20 of whose 100 requests sent answered 429:
// rate advice (rule 1) for each.
func throttledStore(t *testing.T, hostNames ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hb.db")
	s, err := hostbreaker.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var events []hostbreaker.Event
	for _, h := range hostNames {
		events = append(events, hostbreaker.Event{Name: hostbreaker.EventSummary, Time: time.Now().Add(-time.Minute),
			Process: "crawler#1", Host: h, Interval: time.Minute,
			Summary: &hostbreaker.Summary{Requests: 100, Successes: 80, Failures: 20, Status429: 20}})
	}
	if _, err := s.AppendEvents(context.Background(), events, hostbreaker.JournalLimits{}); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHostSelects: -host H keeps the advice on the hosts that H names as
// a [hosts] key names them: the host, the host on any port, or, for a
// wildcard, every host under it. Before, the advice's host had to equal H:
// -host '*.example.org', which the usage offers, kept nothing.
func TestHostSelects(t *testing.T) {
	storeURL := throttledStore(t, "a.example.org", "b.example.org:8443", "c.example.net", "example.org")
	for _, c := range []struct {
		host string
		want []string
	}{
		{"*.example.org", []string{"a.example.org", "b.example.org:8443"}},
		{"*.EXAMPLE.org", []string{"a.example.org", "b.example.org:8443"}},
		{"b.example.org", []string{"b.example.org:8443"}},
		{"b.example.org:8443", []string{"b.example.org:8443"}},
		{"b.example.org:9000", nil},
		{"https://C.example.net/x", []string{"c.example.net"}},
		{"example.org", []string{"example.org"}},
	} {
		var got []string
		for _, a := range adviceJSON(t, runInProcess, storeURL, "-host", c.host) {
			got = append(got, a.Host)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("-host %s: advice on %v, want %v", c.host, got, c.want)
		}
	}
}

// TestDryRunSaid: without -enforce the output says that nothing was
// written, with -json too (on standard error, standard output holding the
// JSON alone); with -enforce it does not.
func TestDryRunSaid(t *testing.T) {
	storeURL := throttledStore(t, "a.example.org")
	const note = "dry run: nothing written"
	if out, _, code := runInProcess(t, "-store", storeURL); code != 0 || !strings.Contains(out, note) {
		t.Errorf("table: exit %d, no %q:\n%s", code, note, out)
	}
	out, errOut, code := runInProcess(t, "-store", storeURL, "-json")
	var advice []hostbreaker.Advice
	if err := json.Unmarshal([]byte(out), &advice); code != 0 || err != nil || len(advice) != 1 {
		t.Fatalf("-json: exit %d, %v, %q", code, err, out)
	}
	if !strings.Contains(errOut, note) {
		t.Errorf("-json: standard error %q, want %q", errOut, note)
	}
	cfg := filepath.Join(t.TempDir(), "hb.toml")
	if err := os.WriteFile(cfg, []byte("[defaults]\nfail_max = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runInProcess(t, "-store", storeURL, "-config", cfg, "-json", "-enforce")
	if code != 0 || strings.Contains(out+errOut, note) {
		t.Errorf("-json -enforce: exit %d, %q %q", code, out, errOut)
	}
}

// TestHistoryRowShape: -history gives one row shape to every policy
// change: a key of a role is its role and key whether the event names the
// role (Tune) or the key does (roles.NAME.key: a revert, UpdateHostPolicy);
// the AFTER of a revert is "(config)"; the echoes of the processes that
// applied a change are left out; -host and -key select. (The rows of one
// event come in the order of its TOML lines.)
func TestHistoryRowShape(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	events := []hostbreaker.Event{
		{Name: hostbreaker.EventPolicyChange, Time: t0, Process: "tune:ops:1", Host: "h.example", Role: "landing",
			PreviousPolicy: "fail_max = 5", Policy: "fail_max = 7", Note: "advise -enforce"},
		{Name: hostbreaker.EventPolicyChange, Time: t0.Add(time.Second), Process: "crawler#1", Host: "h.example", Remote: true,
			PreviousPolicy: "roles.landing.fail_max = 5", Policy: "roles.landing.fail_max = 7", Note: "tuned (read from the store)"},
		{Name: hostbreaker.EventPolicyChange, Time: t0.Add(time.Minute), Process: "tune:ops:2", Host: "h.example",
			PreviousPolicy: "roles.landing.fail_max = 7\nreset_timeout = \"30s\"", Note: "advise -revert: tuning reverted"},
		{Name: hostbreaker.EventPolicyChange, Time: t0.Add(2 * time.Minute), Process: "tune:ops:3", Host: "other.example",
			PreviousPolicy: "rate = 0", Policy: "rate = 2", Note: "advise -enforce"},
	}
	want := []historyRow{
		{Time: t0, Host: "h.example", Role: "landing", Key: "fail_max", Before: "5", After: "7", Who: "tune:ops:1", Why: "advise -enforce"},
		{Time: t0.Add(time.Minute), Host: "h.example", Role: "", Key: "reset_timeout", Before: "30s", After: "(config)", Who: "tune:ops:2", Why: "advise -revert: tuning reverted"},
		{Time: t0.Add(time.Minute), Host: "h.example", Role: "landing", Key: "fail_max", Before: "7", After: "(config)", Who: "tune:ops:2", Why: "advise -revert: tuning reverted"},
		{Time: t0.Add(2 * time.Minute), Host: "other.example", Role: "", Key: "rate", Before: "0", After: "2", Who: "tune:ops:3", Why: "advise -enforce"},
	}
	if got := historyRows(events, "", ""); !slices.Equal(got, want) {
		t.Errorf("rows:\n%+v\nwant\n%+v", got, want)
	}
	if got, w := historyRows(events, "h.example", "fail_max"), []historyRow{want[0], want[2]}; !slices.Equal(got, w) {
		t.Errorf("-host h.example -key fail_max:\n%+v\nwant\n%+v", got, w)
	}
}
