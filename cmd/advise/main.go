// Command advise reads the journal that hostbreaker Transports keep in their
// shared store, suggests policy changes with their reasons and a replay of
// what they would have done, and applies them to every process within the
// tune bounds.
//
//	go run ./cmd/advise [-store URL] [-config FILE] [-window 1h] [-json]
//	go run ./cmd/advise -enforce   ...   tune what it advises
//	go run ./cmd/advise -revert HOST ... remove HOST's tuned overrides (HOST "all": every one)
//	go run ./cmd/advise -history   ...   the policy changes in the window
//
// -store defaults to $HOSTBREAKER_STORE, else ./hostbreaker.db; a bbolt file
// that does not exist is an error ("no store at PATH"). -config is the
// policy file in force (default: the built-in defaults); the tuned
// overrides in the store are laid over it. With -json, standard output
// holds a JSON array of advice and nothing else; diagnostics go to standard
// error. The exit status is 0 with or without advice, 1 for errors (a
// missing store, a bad config, a store it cannot read) and 2 for usage
// errors.
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

const usage = `Usage: advise [-store URL] [-config FILE] [-window 1h] [-json] [-enforce | -revert HOST | -history]

Suggests policy changes for the hosts in the journal of the store that
hostbreaker Transports share, each with its reason and, for the breaker
keys, a replay of what it would have done on the recorded traffic.

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
	configFile := fs.String("config", "", "the policy file in force (TOML); default: the built-in defaults")
	window := fs.Duration("window", time.Hour, "how far back to read the journal")
	asJSON := fs.Bool("json", false, "print the advice as a JSON array")
	enforce := fs.Bool("enforce", false, "tune what it advises, in every process that shares the store")
	revert := fs.String("revert", "", "remove the tuned overrides of `HOST` (\"all\": every one)")
	history := fs.Bool("history", false, "print the policy changes in the window")
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
		printHistory(stdout, events)
		return 0
	}
	overrides, err := s.Overrides(ctx)
	if err != nil {
		return fail(1, "%v", err)
	}
	advice := hostbreaker.Advise(events, cfg, overrides)
	if *enforce && len(advice) > 0 {
		if advice, err = hostbreaker.Tune(ctx, s, advice, cfg, "advise -enforce"); err != nil {
			return fail(1, "%v", err)
		}
	}
	if *asJSON {
		if advice == nil {
			advice = []hostbreaker.Advice{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(advice); err != nil {
			return fail(1, "%v", err)
		}
		return 0
	}
	printAdvice(stdout, advice, events, *enforce)
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
	fmt.Fprintln(tw, "HOST\tROLE\tKEY\tCURRENT\tPROPOSED\tWHY")
	for _, a := range advice {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Host, roleOf(a.Role), a.Key, a.Current, a.Proposed, a.Reason)
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

// printHistory prints the policy changes among events, one line per
// changed key: TIME HOST ROLE KEY BEFORE AFTER WHO WHY.
func printHistory(w io.Writer, events []hostbreaker.Event) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tHOST\tROLE\tKEY\tBEFORE\tAFTER\tWHO\tWHY")
	n := 0
	for _, ev := range events {
		if ev.Name != hostbreaker.EventPolicyChange || ev.Remote {
			continue
		}
		before, after := tomlLines(ev.PreviousPolicy), tomlLines(ev.Policy)
		keys := slices.Sorted(maps.Keys(union(before, after)))
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Time.UTC().Format(time.RFC3339), ev.Host,
				roleOf(ev.Role), k, orDash(before[k]), orDash(after[k]), ev.Process, orDash(ev.Note))
			n++
		}
	}
	tw.Flush()
	if n == 0 {
		fmt.Fprintln(w, "no policy changes in the window")
	}
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
