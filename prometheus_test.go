package hostbreaker

// The dashboard (docs/dashboard.json) and the alerts (docs/alerts.yml),
// checked against a real Prometheus: Grafana is not packaged here, so every
// panel's query runs through Prometheus's own API, over what the
// OpenTelemetry Prometheus exporter serves.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// promFamilies are the metric families a Transport's instruments become in
// Prometheus through the OpenTelemetry exporter with the underscore
// translation, with their type and labels (beside otel_scope_*, job and
// instance).
var promFamilies = map[string]struct {
	kind   string
	labels []string
}{
	"hostbreaker_requests_total":             {"counter", []string{"server_address", "hostbreaker_role", "hostbreaker_outcome"}},
	"hostbreaker_rejections_total":           {"counter", []string{"server_address", "hostbreaker_role", "hostbreaker_reason"}},
	"hostbreaker_transitions_total":          {"counter", []string{"server_address", "hostbreaker_role", "hostbreaker_state"}},
	"hostbreaker_state":                      {"gauge", []string{"server_address", "hostbreaker_role", "hostbreaker_state", "hostbreaker_reason"}},
	"hostbreaker_breakers":                   {"gauge", []string{"hostbreaker_state"}},
	"hostbreaker_cooldown_remaining_seconds": {"gauge", []string{"server_address", "hostbreaker_reason"}},
	"hostbreaker_retry_after_seconds":        {"histogram", []string{"server_address"}},
	"hostbreaker_rate_per_second":            {"gauge", []string{"server_address"}},
	"hostbreaker_rate_configured_per_second": {"gauge", []string{"server_address"}},
	"hostbreaker_store_errors_total":         {"counter", []string{"hostbreaker_store_operation"}},
	"hostbreaker_untracked_total":            {"counter", nil},
}

// promSeriesNames returns the series names of promFamilies (a histogram's
// _bucket, _sum and _count), and whether each has a server_address label.
func promSeriesNames() map[string]bool {
	names := make(map[string]bool)
	for name, f := range promFamilies {
		host := slices.Contains(f.labels, "server_address")
		if f.kind == "histogram" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = host
			}
			continue
		}
		names[name] = host
	}
	return names
}

// promLabelNames returns the hostbreaker_* label names of promFamilies.
func promLabelNames() map[string]bool {
	labels := make(map[string]bool)
	for _, f := range promFamilies {
		for _, l := range f.labels {
			labels[l] = true
		}
	}
	return labels
}

// requireTool returns the path of the program name. When it is not on PATH
// the test is skipped, unless $CI is set: then it fails, since .ci/run
// installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not on PATH, and CI is set: .ci/run installs it (apt-get install prometheus)", name)
	}
	t.Skipf("%s is not on PATH (apt-get install prometheus; with CI set this fails)", name)
	return ""
}

// TestAlertRules checks docs/alerts.yml with promtool, runs its unit tests
// (testdata/alerts_test.yml), and checks that every hostbreaker_* name in it
// is a metric or label the Transport exports.
func TestAlertRules(t *testing.T) {
	promtool := requireTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "docs/alerts.yml"},
		{"test", "rules", "testdata/alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	rules, err := os.ReadFile("docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	series, labels := promSeriesNames(), promLabelNames()
	for _, name := range hostbreakerName.FindAllString(string(rules), -1) {
		if _, ok := series[name]; !ok && !labels[name] {
			t.Errorf("docs/alerts.yml names %s, which is neither a metric nor a label of hostbreaker", name)
		}
	}
}

var hostbreakerName = regexp.MustCompile(`\bhostbreaker_[a-z_]+\b`)

// alertReasons are the rejection reasons that the alerts about breakers,
// cooldowns and rejections must name in their descriptions, so that an
// operator reading one knows what it does not cover.
var alertReasons = []Reason{ReasonBreakerOpen, ReasonHalfOpenFull, ReasonRetryAfter, ReasonRollingWindow,
	ReasonRateLimited, "concurrency-limited", ReasonManual}

// TestAlertDescriptionsNameEveryReason: the descriptions of the alerts on
// hostbreaker_state, hostbreaker_cooldown_remaining_seconds and
// hostbreaker_rejections_total name every reason.
func TestAlertDescriptionsNameEveryReason(t *testing.T) {
	data, err := os.ReadFile("docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, rule := range strings.Split(string(data), "- alert: ")[1:] {
		name, _, _ := strings.Cut(rule, "\n")
		if !strings.Contains(rule, "hostbreaker_state") && !strings.Contains(rule, "hostbreaker_cooldown_remaining_seconds") &&
			!strings.Contains(rule, "hostbreaker_rejections_total") {
			continue
		}
		_, desc, ok := strings.Cut(rule, "description: >-")
		if !ok {
			t.Errorf("%s: no description", name)
			continue
		}
		desc = strings.Join(strings.Fields(desc), " ")
		for _, r := range alertReasons {
			if !strings.Contains(desc, string(r)) {
				t.Errorf("%s: the description does not name reason %s", name, r)
			}
		}
		checked++
	}
	if checked != 3 {
		t.Errorf("checked %d alerts, want 3 (BreakerOpen, HostCoolingDown, RejectionsHigh)", checked)
	}
}

// The parts of Grafana's classic dashboard JSON model that the tests read.
type (
	grafanaDashboard struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Templating    struct {
			List []grafanaVariable `json:"list"`
		} `json:"templating"`
		Panels []grafanaPanel `json:"panels"`
	}
	grafanaDatasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	grafanaVariable struct {
		Name       string             `json:"name"`
		Type       string             `json:"type"`
		Query      json.RawMessage    `json:"query"` // a string, or an object with a query
		Definition string             `json:"definition"`
		Datasource *grafanaDatasource `json:"datasource"`
		Multi      bool               `json:"multi"`
		IncludeAll bool               `json:"includeAll"`
		AllValue   string             `json:"allValue"`
	}
	grafanaPanel struct {
		ID         int                `json:"id"`
		Type       string             `json:"type"`
		Title      string             `json:"title"`
		Datasource *grafanaDatasource `json:"datasource"`
		GridPos    struct{ X, Y, W, H int }
		Targets    []grafanaTarget `json:"targets"`
		Panels     []grafanaPanel  `json:"panels"` // a collapsed row's
	}
	grafanaTarget struct {
		RefID      string             `json:"refId"`
		Expr       string             `json:"expr"`
		Datasource *grafanaDatasource `json:"datasource"`
	}
)

// query returns a variable's query, whichever form it has.
func (v grafanaVariable) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	json.Unmarshal(v.Query, &o)
	return o.Query
}

// loadDashboard reads docs/dashboard.json and returns it with its panels,
// those of rows included, flattened.
func loadDashboard(t *testing.T) (grafanaDashboard, []grafanaPanel) {
	t.Helper()
	data, err := os.ReadFile("docs/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("docs/dashboard.json: %v", err)
	}
	var panels []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" {
				panels = append(panels, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, panels
}

// dashboardPanels are the panels the dashboard must have, by title.
var dashboardPanels = []string{
	"Request outcomes per host",
	"Rejections by reason",
	"Hosts not closed now",
	"Breakers by state",
	"Rejected share per host",
	"Cooldowns remaining",
	"Transitions",
	"Retry-After distribution",
	"Store errors",
	"Untracked requests",
	"Rate limits per host: in force (learnt) and configured",
}

var (
	// grouping matches a PromQL grouping clause, whose names are labels.
	grouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	// selector matches a hostbreaker metric name and its label matchers.
	selector = regexp.MustCompile(`\b(hostbreaker_[a-z_]+)\b\s*(\{[^}]*\})?`)
)

// TestDashboardModel checks the dashboard's JSON without Prometheus: the
// schema version, the variables, the panels, that every panel and target
// uses the $datasource variable, that every hostbreaker_* name in a query is
// one the Transport exports, and that every selector of a metric with a
// host label filters on $host.
func TestDashboardModel(t *testing.T) {
	d, panels := loadDashboard(t)
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion = %d, want ≥ 39", d.SchemaVersion)
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid")
	}
	vars := make(map[string]grafanaVariable)
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if v, ok := vars["datasource"]; !ok || v.Type != "datasource" || v.query() != "prometheus" {
		t.Errorf("variable datasource = %+v, want type datasource, query prometheus", v)
	}
	const hostQuery = "label_values(hostbreaker_requests_total, server_address)"
	if v, ok := vars["host"]; !ok || v.Type != "query" || v.query() != hostQuery || !v.Multi || !v.IncludeAll ||
		v.Datasource == nil || v.Datasource.UID != "${datasource}" {
		t.Errorf("variable host = %+v (query %q), want a multi-value query %q with All, on ${datasource}", v, v.query(), hostQuery)
	}

	series, labels := promSeriesNames(), promLabelNames()
	ids := make(map[int]bool)
	titles := make(map[string]bool)
	for _, p := range panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d is used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		titles[p.Title] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if ds := p.Datasource; ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, ds)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		refs := make(map[string]bool)
		for _, tg := range p.Targets {
			if ds := tg.Datasource; ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
				t.Errorf("panel %q, target %s: datasource %+v, want prometheus ${datasource}", p.Title, tg.RefID, ds)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q is empty or used twice", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q, target %s: no expr", p.Title, tg.RefID)
			}
			expr := grouping.ReplaceAllStringFunc(tg.Expr, func(g string) string {
				for _, l := range strings.Split(grouping.FindStringSubmatch(g)[1], ",") {
					if l = strings.TrimSpace(l); strings.HasPrefix(l, "hostbreaker_") && !labels[l] {
						t.Errorf("panel %q, target %s: groups by %s, not a label of hostbreaker", p.Title, tg.RefID, l)
					}
				}
				return ""
			})
			for _, m := range selector.FindAllStringSubmatch(expr, -1) {
				host, ok := series[m[1]]
				switch {
				case !ok:
					t.Errorf("panel %q, target %s: %s is not a metric of hostbreaker", p.Title, tg.RefID, m[1])
				case host && !strings.Contains(m[2], `server_address=~"$host"`):
					t.Errorf("panel %q, target %s: %s%s does not filter on server_address=~\"$host\"", p.Title, tg.RefID, m[1], m[2])
				}
			}
		}
	}
	for _, title := range dashboardPanels {
		if !titles[title] {
			t.Errorf("no panel %q", title)
		}
	}
}

// The values that panelQuery gives Grafana's variables. $__rate_interval is
// what Grafana would choose for a 1 s scrape interval and then some, so that
// a rate always has two samples on a loaded machine.
var dashboardVariables = strings.NewReplacer(
	"${__rate_interval}", "10s", "$__rate_interval", "10s",
	"${__interval_ms}", "1000", "$__interval_ms", "1000",
	"${__interval}", "1s", "$__interval", "1s",
	"${__range}", "1m", "$__range", "1m",
	"${host:regex}", ".*", "${host}", ".*", "$host", ".*",
)

// panelQuery returns a target's expr as Grafana would send it with every
// host selected.
func panelQuery(expr string) (string, error) {
	q := dashboardVariables.Replace(expr)
	if strings.Contains(q, "$") {
		return "", fmt.Errorf("a variable is left in %q", q)
	}
	return q, nil
}

func TestPanelQuery(t *testing.T) {
	q, err := panelQuery(`sum(rate(x{server_address=~"$host"}[$__rate_interval])) / sum(rate(y{server_address=~"${host}"}[$__interval]))`)
	if want := `sum(rate(x{server_address=~".*"}[10s])) / sum(rate(y{server_address=~".*"}[1s]))`; err != nil || q != want {
		t.Errorf("panelQuery = (%q, %v), want %q", q, err, want)
	}
	if _, err := panelQuery(`rate(x[$unknown])`); err == nil {
		t.Error("panelQuery left $unknown in place without an error")
	}
}

// TestDashboardQueriesAgainstPrometheus serves the metrics of metricsSource
// through the OpenTelemetry Prometheus exporter, lets a real Prometheus
// scrape them (with docs/alerts.yml loaded), and runs every panel's query:
// none may fail, and each must return data.
func TestDashboardQueriesAgainstPrometheus(t *testing.T) {
	requireTool(t, "prometheus")
	_, panels := loadDashboard(t)
	start := time.Now()

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		// Pinned: the exporter's default is due to change.
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	metricsSource(t, mp)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	t.Cleanup(srv.Close)
	checkExposition(t, srv.URL)

	rules, err := filepath.Abs("docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, srv.Listener.Addr().String(), rules)
	ready := time.Since(start)
	prom.waitScraped(t, 30*time.Second)
	scraped := time.Since(start)

	// The host variable: label_values(hostbreaker_requests_total, server_address).
	if hosts := prom.labelValues(t, "server_address", "hostbreaker_requests_total"); len(hosts) == 0 {
		t.Error("label_values(hostbreaker_requests_total, server_address) is empty")
	}

	// Every panel's queries. A query that fails is an error at once; one
	// that returns nothing yet is asked again until the deadline, since
	// a rate needs two samples in its window.
	type panelTarget struct{ panel, ref, query string }
	var pending []panelTarget
	for _, p := range panels {
		for _, tg := range p.Targets {
			q, err := panelQuery(tg.Expr)
			if err != nil {
				t.Errorf("panel %q, target %s: %v", p.Title, tg.RefID, err)
				continue
			}
			if why, ok := quietPanels[p.Title]; ok {
				samples, err := prom.query(q)
				if err != nil {
					t.Errorf("panel %q, target %s: %v", p.Title, tg.RefID, err)
				}
				t.Logf("panel %q, target %s: %d samples (may be empty: %s)", p.Title, tg.RefID, len(samples), why)
				continue
			}
			pending = append(pending, panelTarget{p.Title, tg.RefID, q})
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(pending) > 0 {
		var empty []panelTarget
		why := make(map[panelTarget]string)
		for _, pt := range pending {
			samples, err := prom.query(pt.query)
			if err != nil {
				t.Errorf("panel %q, target %s: %v", pt.panel, pt.ref, err)
				continue
			}
			if !slices.ContainsFunc(samples, func(s promSample) bool { return !math.IsNaN(s.value) && !math.IsInf(s.value, 0) }) {
				empty = append(empty, pt)
				why[pt] = fmt.Sprintf("%d samples, none a finite number: %v", len(samples), samples)
			}
		}
		if pending = empty; len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, pt := range pending {
				t.Errorf("panel %q, target %s: no data after 30 s (%s)\nquery: %s", pt.panel, pt.ref, why[pt], pt.query)
			}
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	panelsDone := time.Since(start)

	prom.checkRules(t)
	t.Logf("prometheus ready after %v, scraped twice after %v, panels checked after %v, rules after %v",
		ready.Round(time.Millisecond), scraped.Round(time.Millisecond), panelsDone.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
}

// quietPanels are the panels, by title, that metricsSource may leave
// without data, with why. Their queries must still run without an error.
var quietPanels = map[string]string{"Untracked requests": "needs a registry full of open, cooling or failing entries"}

// metricsSource makes mp report hostbreaker's metrics, changing while the
// test runs, until the test's cleanup. For now it is a hand-made meter with
// the instruments the Transport is getting (the same names, kinds, units and
// attributes; the histogram on the SDK's default buckets) over three hosts:
// ok.test answers, sick.test fails and its breaker is open, busy.test
// answers 429 with Retry-After and cools down. Replace it with a Transport
// (WithMeterProvider(mp)) driven by traffic against loopback servers once
// the Transport has its instruments; list in quietPanels what that traffic
// cannot show.
func metricsSource(t *testing.T, mp metric.MeterProvider) {
	serve := func(h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv.URL
	}
	var n atomic.Int64
	healthy := serve(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%10 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	failing := serve(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	throttled := serve(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	// A host with a configured rate that answers 429 without Retry-After
	// one time in four: its limiter learns a rate under the configured one.
	var np atomic.Int64
	paced := serve(func(w http.ResponseWriter, r *http.Request) {
		if np.Add(1)%4 == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	cfg := quick(3, 2*time.Second)
	cfg.Hosts = map[string]Policy{strings.TrimPrefix(paced, "http://"): {Rate: 50}}
	cfg.Store = StoreConfig{URL: "redis://127.0.0.1:1/0?prefix=dead", PollInterval: 200 * time.Millisecond} // store errors
	tr, err := NewTransport(nil, WithConfig(cfg), WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	targets := []struct{ role, url string }{{RoleMetadata, healthy}, {RoleLanding, failing}, {RoleArtifact, throttled}, {RoleMetadata, paced}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, tg := range targets {
				req, _ := http.NewRequestWithContext(WithRole(ctx, tg.role), http.MethodGet, tg.url, nil)
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; tr.Close() })
}

// checkExposition reads the exporter's /metrics as text until every family
// of promFamilies is there (a histogram appears with its first value), and
// checks their types and labels.
func checkExposition(t *testing.T, base string) {
	t.Helper()
	var text string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics: %d, %v\n%s", resp.StatusCode, err, body)
		}
		text = string(body)
		all := true
		for name := range promFamilies {
			all = all && strings.Contains(text, "\n# TYPE "+name+" ")
		}
		if all || time.Now().After(deadline) {
			break
		}
	}
	labelName := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	for name, f := range promFamilies {
		if !strings.Contains(text, "\n# TYPE "+name+" "+f.kind+"\n") {
			t.Errorf("/metrics has no %q: the exporter names or types the instrument otherwise", "# TYPE "+name+" "+f.kind)
			continue
		}
		sample := name
		if f.kind == "histogram" {
			sample += "_count"
		}
		var found bool
		for line := range strings.SplitSeq(text, "\n") {
			if !strings.HasPrefix(line, sample+"{") {
				continue
			}
			found = true
			have := make(map[string]bool)
			for _, m := range labelName.FindAllStringSubmatch(line[:strings.LastIndexByte(line, '}')], -1) {
				have[m[1]] = true
			}
			for _, l := range f.labels {
				if !have[l] {
					t.Errorf("/metrics: %s has no label %s", line, l)
				}
			}
		}
		if !found {
			t.Errorf("/metrics has no sample of %s", sample)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
}

// promServer is a Prometheus process started by startPrometheus.
type promServer struct {
	url string // http://127.0.0.1:port
	log string // the file its output goes to
}

// startPrometheus starts the prometheus binary on a free loopback port,
// scraping target (host:port) every second as job "hostbreaker", with the
// given rule files and its storage in a temporary directory. It returns
// when Prometheus is ready, and stops it at the test's cleanup.
func startPrometheus(t *testing.T, target string, ruleFiles ...string) *promServer {
	t.Helper()
	bin := requireTool(t, "prometheus")
	dir := t.TempDir()
	var rules strings.Builder
	for _, f := range ruleFiles {
		fmt.Fprintf(&rules, "\n  - %q", f)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:%s
scrape_configs:
  - job_name: hostbreaker
    static_configs:
      - targets: [%q]
`, rules.String(), target)
	if len(ruleFiles) == 0 {
		config = strings.Replace(config, "rule_files:\n", "", 1)
	}
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// The port is free when asked, but another process may take it before
	// Prometheus binds it: try again then.
	for attempt := 1; ; attempt++ {
		p, err := launchPrometheus(t, bin, configFile, filepath.Join(dir, fmt.Sprintf("run%d", attempt)))
		if err == nil {
			return p
		}
		if attempt == 3 || !errors.Is(err, errAddrInUse) {
			t.Fatal(err)
		}
		t.Logf("prometheus: %v; again", err)
	}
}

var errAddrInUse = errors.New("address already in use")

func launchPrometheus(t *testing.T, bin, configFile, dir string) (*promServer, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &promServer{url: "http://" + addr, log: filepath.Join(dir, "prometheus.log")}
	logFile, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin,
		"--config.file="+configFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			out := p.output()
			if strings.Contains(out, "address already in use") {
				return nil, fmt.Errorf("%s: %w", addr, errAddrInUse)
			}
			return nil, fmt.Errorf("prometheus exited before it was ready: %v\n%s", err, out)
		default:
		}
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("prometheus on %s not ready after 30 s\n%s", addr, p.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", p.output())
		}
	})
	return p, nil
}

// output returns the end of Prometheus's output.
func (p *promServer) output() string {
	b, _ := os.ReadFile(p.log)
	const max = 8 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// promSample is one sample of a query's result.
type promSample struct {
	labels map[string]string
	value  float64
}

func (s promSample) String() string { return fmt.Sprintf("%v=%g", s.labels, s.value) }

// get calls the HTTP API at path and decodes the data of a successful
// answer into data. An error answer (a query that does not parse, say) is
// an error.
func (p *promServer) get(path string, params url.Values, data any) error {
	resp, err := http.Get(p.url + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Warnings  []string        `json:"warnings"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("%s: HTTP %d: %w", path, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, r.ErrorType, r.Error)
	}
	if len(r.Warnings) > 0 {
		return fmt.Errorf("%s: warnings: %v", path, r.Warnings)
	}
	return json.Unmarshal(r.Data, data)
}

// query runs an instant query and returns its samples.
func (p *promServer) query(q string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	parse := func(v [2]json.RawMessage) (float64, error) {
		var s string
		if err := json.Unmarshal(v[1], &s); err != nil {
			return 0, err
		}
		return strconv.ParseFloat(s, 64)
	}
	switch data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string  `json:"metric"`
			Value  [2]json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &vec); err != nil {
			return nil, err
		}
		samples := make([]promSample, 0, len(vec))
		for _, s := range vec {
			v, err := parse(s.Value)
			if err != nil {
				return nil, fmt.Errorf("value of %v: %w", s.Metric, err)
			}
			samples = append(samples, promSample{s.Metric, v})
		}
		return samples, nil
	case "scalar":
		var sc [2]json.RawMessage
		if err := json.Unmarshal(data.Result, &sc); err != nil {
			return nil, err
		}
		v, err := parse(sc)
		return []promSample{{nil, v}}, err
	default:
		return nil, fmt.Errorf("result type %q, want an instant vector or a scalar", data.ResultType)
	}
}

// value runs q and returns the value of its first sample, or NaN when it
// has none.
func (p *promServer) value(t *testing.T, q string) float64 {
	t.Helper()
	samples, err := p.query(q)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) == 0 {
		return math.NaN()
	}
	return samples[0].value
}

// waitScraped waits until Prometheus has scraped the target up, twice, with
// hostbreaker's metrics in it.
func (p *promServer) waitScraped(t *testing.T, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		up := p.value(t, `max(up{job="hostbreaker"})`)
		scrapes := p.value(t, `max(count_over_time(up{job="hostbreaker"}[1m]))`)
		counted := p.value(t, `max(count_over_time(hostbreaker_requests_total{job="hostbreaker"}[1m]))`)
		if up == 1 && scrapes >= 2 && counted >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: up = %v, %v scrapes, %v of hostbreaker_requests_total (want 1, 2, 2)", limit, up, scrapes, counted)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// labelValues returns the values of label on the series of metric, as
// Grafana's label_values(metric, label) asks them.
func (p *promServer) labelValues(t *testing.T, label, metric string) []string {
	t.Helper()
	var values []string
	if err := p.get("/api/v1/label/"+label+"/values", url.Values{"match[]": {metric}}, &values); err != nil {
		t.Fatal(err)
	}
	return values
}

// checkRules waits until Prometheus has evaluated every loaded rule, and
// checks that none failed.
func (p *promServer) checkRules(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name      string `json:"name"`
					Query     string `json:"query"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.get("/api/v1/rules", nil, &data); err != nil {
			t.Fatal(err)
		}
		var n int
		var waiting []string
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				n++
				switch r.Health {
				case "ok":
				case "unknown":
					waiting = append(waiting, r.Name)
				default:
					t.Errorf("rule %s: %s: %s\nquery: %s", r.Name, r.Health, r.LastError, r.Query)
				}
			}
		}
		if n == 0 {
			t.Fatal("Prometheus has loaded no rules")
		}
		if len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules not evaluated after 30 s: %v", waiting)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
