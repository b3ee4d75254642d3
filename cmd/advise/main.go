// Command advise reads the journal that hostbreaker Transports keep in their
// shared store, suggests policy changes with their reasons and a replay of
// what they would have done, and applies them to every process within the
// tune bounds.
//
//	go run ./cmd/advise [-store URL] [-config FILE] [-window 1h] [-host H] [-key K] [-json]
//	go run ./cmd/advise -enforce   ...   tune what it advises
//	go run ./cmd/advise -revert HOST [-f] ... remove HOST's tuned overrides (HOST "all": every one)
//	go run ./cmd/advise -history   ...   the policy changes in the window
//
// -store defaults to $HOSTBREAKER_STORE, else ./hostbreaker.db; a bbolt file
// that does not exist is an error ("no store at PATH"). The values in force
// are those the running processes published in the store (their
// configurations, and the states of their breakers); for a (host,
// role) none of them published, -config's (the policy file, with the
// tuned overrides in the store laid over it), and without -config the
// built-in defaults, marked as assumed: -enforce then refuses to write.
// The replay's failure_rate and max_reset_timeout are those the processes
// published in their configurations, else -config's; an advice whose
// journal shows trips by failure_rate that the replay ran without says so.
// -host selects hosts as a [hosts] key names them (a host on any port,
// a wildcard's hosts). Without -enforce nothing is written, and the output
// says so. With -json, standard output holds a JSON array and nothing
// else; diagnostics (that note among them) go to standard error. The exit
// status is 0 with or without advice, 1 for errors (a missing store, a bad
// config, a store it cannot read, -enforce without the values in force,
// -revert of a host with no tuned override) and 2 for usage errors.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hostbreaker/hostbreaker"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

// now is the clock of the command: the window ends now. Tests replace it.
var now = time.Now

// storeTimeout bounds the command's store operations.
const storeTimeout = 30 * time.Second

func main() {
	// go-redis logs failed dials through a process-wide logger; the error
	// this command returns says it once.
	redis.SetLogger(&logging.VoidLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `Usage: advise [-store URL] [-config FILE] [-window 1h] [-host H] [-key K] [-json] [-enforce | -revert HOST [-f] | -history]

Suggests policy changes for the hosts in the journal of the store that
hostbreaker Transports share, each with its reason and, for the breaker
keys, a replay of what it would have done on the recorded traffic. The
values in force are those the running processes published; without
-enforce nothing is written.

`

// run executes the command line args (without the program name) and
// returns the exit status: 0 with or without advice, 1 for errors, 2 for
// usage errors.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("advise", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := os.Getenv("HOSTBREAKER_STORE")
	if def == "" {
		def = "./hostbreaker.db"
	}
	storeURL := fs.String("store", def, "store URL: bbolt path, bolt:///abs/path.db, redis://... or rediss://...")
	configFile := fs.String("config", "", "the policy file in force (TOML), for what no process published; default: the built-in defaults, assumed")
	window := fs.Duration("window", time.Hour, "how far back to read the journal")
	asJSON := fs.Bool("json", false, "print the advice as a JSON array")
	enforce := fs.Bool("enforce", false, "tune what it advises, in every process that shares the store")
	revert := fs.String("revert", "", "remove the tuned overrides of `HOST` (\"all\": every one)")
	history := fs.Bool("history", false, "print the policy changes in the window")
	hostFlag := fs.String("host", "", "only the advice on `HOST` (a host, on any port unless one is given, or a Hosts key such as *.example.org: the hosts under it)")
	keyFlag := fs.String("key", "", "only the advice on `KEY` (fail_max, rate, reset_timeout, success_threshold, trial_calls)")
	force := fs.Bool("f", false, "with -revert: revert even a host with no tuned override")
	fullUsage := func() string {
		var b strings.Builder
		b.WriteString(usage)
		b.WriteString("Flags:\n")
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return b.String()
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "advise: %s\n", strings.TrimPrefix(fmt.Sprintf(format, a...), "hostbreaker: "))
		if code == 2 {
			fmt.Fprintf(stderr, "\n%s", fullUsage())
		}
		return code
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, fullUsage())
			return 0
		}
		return fail(2, "%v", err)
	}
	if fs.NArg() > 0 {
		return fail(2, "unexpected argument %q", fs.Arg(0))
	}
	modes := 0
	for _, on := range []bool{*enforce, *revert != "", *history} {
		if on {
			modes++
		}
	}
	if modes > 1 {
		return fail(2, "-enforce, -revert and -history exclude one another")
	}
	if *window <= 0 {
		return fail(2, "-window must be positive, got %v", *window)
	}
	if *keyFlag != "" && !slices.Contains(tunableKeys, *keyFlag) {
		return fail(2, "-key %q: want one of %s", *keyFlag, strings.Join(tunableKeys, ", "))
	}
	if *force && *revert == "" {
		return fail(2, "-f goes with -revert")
	}
	host := ""
	if *hostFlag != "" {
		h, err := hostKey(*hostFlag)
		if err != nil {
			return fail(2, "-host: %v", err)
		}
		host = h
	}

	cfg := hostbreaker.DefaultConfig()
	if *configFile != "" {
		c, err := hostbreaker.LoadConfig(*configFile)
		if err != nil {
			return fail(1, "%v", err)
		}
		cfg = c
	}
	s, err := openStore(*storeURL)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()

	if *revert != "" {
		if *revert != "all" && !*force {
			key, err := hostKey(*revert)
			if err != nil {
				return fail(1, "-revert: %v", err)
			}
			ov, err := s.Overrides(ctx)
			if err != nil {
				return fail(1, "%v", err)
			}
			if _, ok := ov[key]; !ok {
				return fail(1, "no tuned override of %s in the store; nothing reverted (-f to revert anyway)%s", key, nearOverride(key, ov))
			}
		}
		if err := hostbreaker.RevertTuning(ctx, s, *revert, "advise -revert"); err != nil {
			return fail(1, "%v", err)
		}
		fmt.Fprintf(stdout, "reverted the tuned overrides of %s\n", *revert)
		return 0
	}
	events, err := hostbreaker.ReadJournal(ctx, s, now().Add(-*window))
	if err != nil {
		return fail(1, "%v", err)
	}
	if *history {
		rows := historyRows(events, host, *keyFlag)
		if *asJSON {
			return encodeJSON(stdout, rows, fail)
		}
		printHistory(stdout, rows)
		return 0
	}
	overrides, err := s.Overrides(ctx)
	if err != nil {
		return fail(1, "%v", err)
	}
	states, err := s.States(ctx)
	if err != nil {
		return fail(1, "%v", err)
	}
	configs, err := s.Configs(ctx)
	if err != nil {
		return fail(1, "%v", err)
	}
	t := now()
	configs = slices.DeleteFunc(configs, func(c hostbreaker.PublishedConfig) bool { return !c.Running(t) })
	advice := hostbreaker.AdviseWith(events, cfg, overrides, hostbreaker.AdviseOptions{Published: states, Configs: configs, ConfigUnknown: *configFile == "", Host: host})
	advice = slices.DeleteFunc(advice, func(a hostbreaker.Advice) bool { return *keyFlag != "" && a.Key != *keyFlag })
	groups := hostbreaker.ConfigGroups(append(slices.Clip(states), configStates(configs)...))
	if *enforce && len(advice) > 0 {
		var unknown []string
		for _, a := range advice {
			if a.From == hostbreaker.FromAssumed || a.From == hostbreaker.FromDiffers {
				unknown = append(unknown, fmt.Sprintf("%s %s %s (%s)", a.Host, roleOf(a.Role), a.Key, a.From))
			}
		}
		if len(unknown) > 0 {
			return fail(1, "-enforce: the value in force of %s is not known (no running process published it, and no -config; or the processes differ); nothing written: pass -config FILE, or select with -host/-key",
				strings.Join(unknown, ", "))
		}
		if advice, err = hostbreaker.Tune(ctx, s, advice, cfg, "advise -enforce"); err != nil {
			return fail(1, "%v", err)
		}
	}
	if *asJSON {
		if advice == nil {
			advice = []hostbreaker.Advice{}
		}
		if len(groups) > 1 {
			fmt.Fprintln(stderr, "advise: "+differentConfigs(groups))
		}
		if !*enforce && len(advice) > 0 {
			fmt.Fprintln(stderr, "advise: "+dryRunNote)
		}
		return encodeJSON(stdout, advice, fail)
	}
	printAdvice(stdout, advice, events, *enforce)
	if len(groups) > 1 {
		fmt.Fprintln(stdout, "\nwarning: "+differentConfigs(groups))
	}
	if !*enforce && len(advice) > 0 {
		fmt.Fprintln(stdout, "\n"+dryRunNote)
	}
	return 0
}

// dryRunNote says that advice was shown and not applied.
const dryRunNote = "dry run: nothing written (-enforce applies the advice to every process)"

// configStates returns a row per configuration, with its source and hash
// alone: what ConfigGroups reads.
func configStates(configs []hostbreaker.PublishedConfig) []hostbreaker.PublishedState {
	out := make([]hostbreaker.PublishedState, len(configs))
	for i, c := range configs {
		out[i] = hostbreaker.PublishedState{Source: c.Source, ConfigHash: c.Hash}
	}
	return out
}

// tunableKeys are the keys advise proposes.
var tunableKeys = []string{"fail_max", "rate", "reset_timeout", "success_threshold", "trial_calls"}

// hostKey returns the Hosts key that s names: a wildcard "*.suffix" with
// its suffix normalized, else the normalized host.
func hostKey(s string) (string, error) {
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		suffix, err := hostbreaker.NormalizeHost(rest)
		if err != nil {
			return "", err
		}
		return "*." + suffix, nil
	}
	return hostbreaker.NormalizeHost(s)
}

// nearOverride names the overridden keys close to key, for a typo.
func nearOverride(key string, ov map[string]hostbreaker.Policy) string {
	var near []string
	for _, k := range slices.Sorted(maps.Keys(ov)) {
		if editDistance(k, key) <= 2 {
			near = append(near, k)
		}
	}
	if len(near) == 0 {
		return ""
	}
	return "; did you mean " + strings.Join(near, " or ") + "?"
}

// editDistance returns the Levenshtein distance between a and b, by bytes,
// counting a swap of two adjacent bytes as 1.
func editDistance(a, b string) int {
	prev2, prev, cur := make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// differentConfigs says which processes run which configuration.
func differentConfigs(groups []hostbreaker.ConfigGroup) string {
	parts := make([]string, len(groups))
	for i, g := range groups {
		parts[i] = g.Hash + " (" + strings.Join(g.Sources, ", ") + ")"
	}
	return fmt.Sprintf("the processes run %d different configurations: %s", len(groups), strings.Join(parts, "; "))
}

// encodeJSON writes v as indented JSON.
func encodeJSON(w io.Writer, v any, fail func(int, string, ...any) int) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fail(1, "%v", err)
	}
	return 0
}

// openStore opens the store that url names. A bbolt file that does not
// exist is an error, not a new empty store.
func openStore(url string) (hostbreaker.Store, error) {
	if url == "" {
		return nil, errors.New("-store is empty and $HOSTBREAKER_STORE is not set")
	}
	path, err := hostbreaker.StorePath(url)
	if err != nil {
		return nil, err
	}
	if path != "" {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no store at %s", path)
		}
	}
	return hostbreaker.OpenStore(url)
}

// printAdvice prints the advice as a table, then the replay figures, or a
// line that says there is none.
func printAdvice(w io.Writer, advice []hostbreaker.Advice, events []hostbreaker.Event, enforced bool) {
	if len(advice) == 0 {
		hosts := map[string]bool{}
		var requests uint64
		for _, ev := range events {
			if ev.Name == hostbreaker.EventSummary && ev.Summary != nil {
				hosts[ev.Host] = true
				requests += ev.Summary.Requests
			}
		}
		fmt.Fprintf(w, "no advice: %d hosts, %d requests in the window\n", len(hosts), requests)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tROLE\tKEY\tCURRENT\tFROM\tPROPOSED\tWHY")
	for _, a := range advice {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Host, roleOf(a.Role), a.Key, a.Current, a.From, a.Proposed, a.Reason)
	}
	tw.Flush()
	var replays []hostbreaker.Advice
	for _, a := range advice {
		if a.Replay != nil {
			replays = append(replays, a)
		}
	}
	if len(replays) > 0 {
		fmt.Fprintln(w, "\nReplay on the recorded traffic (an estimate):")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tROLE\tKEY\tFAILURES SENT NOW\tWITH PROPOSED\tSUCCESSES BLOCKED\tUNKNOWN")
		for _, a := range replays {
			r := a.Replay
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\n", a.Host, roleOf(a.Role), a.Key,
				r.FailuresSentCurrent, r.FailuresSentProposed, r.SuccessesBlockedProposed, r.Unknown)
		}
		tw.Flush()
	}
	if enforced {
		fmt.Fprintf(w, "\ntuned: %d changes written to the store; every process applies them live\n", len(advice))
	}
}

func roleOf(role string) string {
	if role == "" {
		return "-"
	}
	return role
}

// historyRow is one changed key of a policy change: what -history prints,
// and its JSON form.
type historyRow struct {
	Time   time.Time `json:"time"`
	Host   string    `json:"host"`
	Role   string    `json:"role"`
	Key    string    `json:"key"`
	Before string    `json:"before"` // the value in force before, "" when unknown
	After  string    `json:"after"`  // the value in force after; "(config)" after a revert
	Who    string    `json:"who"`
	Why    string    `json:"why"`
}

// historyRows returns a row per changed key of the policy changes among
// events (not the echoes of the processes that applied them), of host and
// key when they are not "". A key of a role is shown as the role and the
// key, whether the event names the role (Tune) or the key does
// (roles.NAME.key: a revert, UpdateHostPolicy).
func historyRows(events []hostbreaker.Event, host, key string) []historyRow {
	rows := []historyRow{}
	for _, ev := range events {
		if ev.Name != hostbreaker.EventPolicyChange || ev.Remote || (host != "" && ev.Host != host) {
			continue
		}
		before, after := tomlLines(ev.PreviousPolicy), tomlLines(ev.Policy)
		for _, k := range slices.Sorted(maps.Keys(union(before, after))) {
			role, name := ev.Role, k
			if rest, ok := strings.CutPrefix(k, "roles."); ok {
				if i := strings.LastIndexByte(rest, '.'); i >= 0 {
					role, name = strings.Trim(rest[:i], `"`), rest[i+1:]
				}
			}
			if key != "" && name != key {
				continue
			}
			a := after[k]
			if a == "" && ev.Policy == "" {
				a = "(config)" // a revert: the configuration's value applies again
			}
			rows = append(rows, historyRow{Time: ev.Time.UTC(), Host: ev.Host, Role: role, Key: name,
				Before: before[k], After: a, Who: ev.Process, Why: ev.Note})
		}
	}
	return rows
}

// printHistory prints the rows: TIME HOST ROLE KEY BEFORE AFTER WHO WHY.
func printHistory(w io.Writer, rows []historyRow) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no policy changes in the window")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tHOST\tROLE\tKEY\tBEFORE\tAFTER\tWHO\tWHY")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), r.Host,
			roleOf(r.Role), r.Key, orDash(r.Before), orDash(r.After), r.Who, orDash(r.Why))
	}
	tw.Flush()
}

// tomlLines parses "key = value" lines.
func tomlLines(s string) map[string]string {
	out := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return out
}

func union(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
