// Command breaker shows, opens and closes hostbreaker breakers from a shell,
// through the store that services share, while they run.
//
//	go run ./cmd/breaker show  [-store URL] [-host HOST] [-json]
//	go run ./cmd/breaker open  [-store URL] [-f] HOST [-for 5m] [-reason TEXT]
//	go run ./cmd/breaker close [-store URL] [-f] HOST
//	go run ./cmd/breaker serve [-store URL] [-addr 127.0.0.1:8080] [-open-for 5m]
//
// Flags may come before or after HOST. -store defaults to
// $HOSTBREAKER_STORE, else ./hostbreaker.db. show refuses a bbolt file that
// does not exist ("no store at PATH"); so do open and close, unless -f,
// with which they create it and say so on stderr. open and close refuse a
// host the store knows nothing of (exit status 1, nothing written): -f
// forces them. Errors are printed as "breaker: <message>"; the exit status is
// 1 for errors and 2 for usage errors (unknown subcommand or flag, missing
// HOST, bad flag value).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hostbreaker/hostbreaker"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

// now is the clock of every subcommand: the At and Until of written records
// and the REMAINING of show. Tests replace it with a fixed clock (far enough
// in the future that the stores, which expire records by the real clock,
// keep what is written) to get stable output.
var now = time.Now

// hostname names this machine in the Source of written records; tests
// replace it.
var hostname = os.Hostname

// storeTimeout bounds each store operation, so that an unreachable Redis
// does not hang the command.
const storeTimeout = 10 * time.Second

func main() {
	// go-redis logs every failed dial to stderr through a process-wide
	// logger; the store's error says the same once, so a dead Redis gives
	// one "breaker: ..." line.
	redis.SetLogger(&logging.VoidLogger{})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "breaker: %s\n", strings.TrimPrefix(err.Error(), "hostbreaker: "))
	var ue *usageError
	if errors.As(err, &ue) {
		if ue.usage != "" {
			fmt.Fprintf(os.Stderr, "\n%s", ue.usage)
		}
		os.Exit(2)
	}
	os.Exit(1)
}

// usageError is a mistake on the command line; main exits with status 2
// and prints usage after the message.
type usageError struct {
	msg   string
	usage string
}

func (e *usageError) Error() string { return e.msg }

func usagef(usage, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), usage: usage}
}

const mainUsage = `Usage: breaker <command> [flags] [HOST]

Commands:
  show   list open breakers and cooldowns
  open   pause HOST for every process sharing the store
  close  reset HOST in every process sharing the store
  serve  serve the fleet's live status page (token from $HOSTBREAKER_TOKEN)

Every command takes -store URL: a bbolt file path, bolt:///abs/path.db,
redis://[user:pass@]host:port/db[?prefix=P] or rediss://... (default
$HOSTBREAKER_STORE, else ./hostbreaker.db). show refuses a bbolt file that
does not exist; so do open and close, which also refuse a host the store
knows nothing of, unless -f. Flags may come before or after HOST. Run "breaker <command> -h" for the command's flags.
`

// run executes the command line args (without the program name), writing
// results to stdout. Help goes to stdout too; errors are returned, a
// *usageError for command-line mistakes.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef(mainUsage, "missing command")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "show":
		return runShow(ctx, rest, stdout, stderr)
	case "open":
		return runOpen(ctx, rest, stdout, stderr)
	case "close":
		return runClose(ctx, rest, stdout, stderr)
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, mainUsage)
		return nil
	default:
		return usagef(mainUsage, "unknown command %q", cmd)
	}
}

// command is a subcommand's flag set with the flags they all share.
type command struct {
	fs    *flag.FlagSet
	usage string
	store *string
}

func newCommand(name, usage string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage printed by main
	def := os.Getenv("HOSTBREAKER_STORE")
	if def == "" {
		def = "./hostbreaker.db"
	}
	c := &command{fs: fs, usage: usage}
	c.store = fs.String("store", def, "store URL: bbolt path, bolt:///abs/path.db, redis://... or rediss://...")
	return c
}

// fullUsage is the command's usage text followed by its flags.
func (c *command) fullUsage() string {
	var b strings.Builder
	b.WriteString(c.usage)
	b.WriteString("\nFlags:\n")
	c.fs.SetOutput(&b)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
	return b.String()
}

// parse parses args, which hold at most one positional argument, before,
// after or between the flags. It returns the positional argument, "" if
// none. errHelp is returned (after printing usage to stdout) for -h.
func (c *command) parse(args []string, stdout io.Writer) (string, error) {
	if err := c.fs.Parse(args); err != nil {
		return "", c.flagError(err, stdout)
	}
	if c.fs.NArg() == 0 {
		return "", nil
	}
	pos := c.fs.Arg(0)
	if err := c.fs.Parse(c.fs.Args()[1:]); err != nil {
		return "", c.flagError(err, stdout)
	}
	if c.fs.NArg() > 0 {
		return "", usagef(c.fullUsage(), "%s: unexpected argument %q after %q", c.fs.Name(), c.fs.Arg(0), pos)
	}
	return pos, nil
}

// errHelp is returned by parse for -h; the subcommand returns nil.
var errHelp = errors.New("help")

func (c *command) flagError(err error, stdout io.Writer) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, c.fullUsage())
		return errHelp
	}
	return usagef(c.fullUsage(), "%s: %v", c.fs.Name(), err)
}

// openStore opens the store named by -store. The store's errors name the
// URL (with any password redacted). A bbolt file that does not exist is
// created when create is true, with a line on stderr that says so, and is
// an error ("no store at PATH") otherwise, so that a mistyped path is not
// shown as an empty store.
func (c *command) openStore(stderr io.Writer, create bool) (hostbreaker.Store, error) {
	if *c.store == "" {
		return nil, usagef(c.fullUsage(), "%s: -store is empty and $HOSTBREAKER_STORE is not set", c.fs.Name())
	}
	path, err := hostbreaker.StorePath(*c.store)
	if err != nil {
		return nil, err
	}
	missing := false
	if path != "" {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			if !create {
				return nil, fmt.Errorf("no store at %s", path)
			}
			missing = true
		} // other errors: OpenStore reports them
	}
	s, err := hostbreaker.OpenStore(*c.store)
	if err == nil && missing {
		fmt.Fprintf(stderr, "breaker: created store %s\n", path)
	}
	return s, err
}

// withStore opens the command's store (see openStore), calls f with it and
// a context that bounds the store's work, and closes the store.
func (c *command) withStore(ctx context.Context, stderr io.Writer, create bool, f func(context.Context, hostbreaker.Store) error) (err error) {
	store, err := c.openStore(stderr, create)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := store.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	return f(cctx, store)
}

// source is the Source of the records the command writes.
func source() string {
	h, err := hostname()
	if err != nil || h == "" {
		h = "unknown"
	}
	return "breaker-cli@" + h
}

// hostArg returns the host that a command's HOST argument (or -host)
// names, normalized by [hostbreaker.NormalizeHost] as the Transports key it.
func hostArg(cmd, s string) (string, error) {
	h, err := hostbreaker.NormalizeHost(s)
	if err != nil {
		return "", fmt.Errorf("%s: invalid host %q: %w", cmd, s, err)
	}
	return h, nil
}
