package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/hostbreaker/hostbreaker"
)

const showUsage = `Usage: breaker show [-store URL] [-host HOST] [-json]

Lists the cooldowns in the store (state "open", role "*" when they apply to
every role of the host, SOURCE the process or operator that wrote them) and
the breaker states every running process published (SOURCE the process),
sorted by host, role and source. REMAINING is the time left until the
cooldown or open state ends, "-" when there is none. Reset markers written
by "breaker close" are not listed. ROLE "-" is the default role (none set);
NOTE is the operator's note of a manual cooldown. RATE is the host's rate
limit in the process that published the row (configured, or learnt from
429s), "-" when the host is not limited there; a process publishes a row
for each host whose rate it learnt, even with its breakers closed (a host
paced only at its configured rate is listed when it is not closed).
A host in shadow mode (mode = "shadow": it decides but rejects nothing) is
listed with every breaker state, marked "(shadow)" after its STATE.

With -json it prints an array of objects with the keys host, role, state,
until (RFC 3339, UTC; omitted when there is none), reason, source, note
(omitted when empty) and rate (requests per second; omitted when the host
is not limited) and shadow (true for a host in shadow mode; omitted
otherwise); [] when there is nothing to list. Role is "*" for a
cooldown of the whole host and "" for the default role.
`

// row is one line of show: a cooldown or a published state.
type row struct {
	Host   string `json:"host"`
	Role   string `json:"role"`
	State  string `json:"state"`
	Until  string `json:"until,omitempty"`
	Reason string `json:"reason"`
	Source string `json:"source"`
	Note   string `json:"note,omitempty"`
	// Rate is the host's rate limit in the source, requests per second; 0
	// (omitted) when it is not limited.
	Rate float64 `json:"rate,omitempty"`
	// Shadow is true for a host in shadow mode in the source: it decides,
	// but rejects nothing.
	Shadow bool `json:"shadow,omitempty"`

	until time.Time
}

func runShow(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	c := newCommand("show", showUsage)
	hostFlag := c.fs.String("host", "", "list only this host (normalized like the services do)")
	asJSON := c.fs.Bool("json", false, "print JSON instead of a table")
	pos, err := c.parse(args, stdout)
	if errors.Is(err, errHelp) {
		return nil
	} else if err != nil {
		return err
	}
	filter := *hostFlag
	if pos != "" {
		if filter != "" {
			return usagef(c.fullUsage(), "show: give the host once, as -host or as an argument")
		}
		filter = pos
	}
	if filter != "" {
		if filter, err = hostArg("show", filter); err != nil {
			return err
		}
	}

	var recs []hostbreaker.Record
	var states []hostbreaker.PublishedState
	err = c.withStore(ctx, stderr, false, func(ctx context.Context, s hostbreaker.Store) (err error) {
		if recs, err = s.Records(ctx); err != nil {
			return err
		}
		states, err = s.States(ctx)
		return err
	})
	if err != nil {
		return err
	}

	rows := collectRows(recs, states, filter)
	if *asJSON {
		return writeJSON(stdout, rows)
	}
	return writeTable(stdout, rows, now())
}

// collectRows turns the store's records and states into sorted rows, for
// the host filter ("" for all).
func collectRows(recs []hostbreaker.Record, states []hostbreaker.PublishedState, filter string) []row {
	rows := make([]row, 0, len(recs)+len(states))
	for _, r := range recs {
		if r.Reason == hostbreaker.ReasonReset || (filter != "" && r.Host != filter) {
			continue
		}
		role := r.Role
		if role == "" {
			role = "*"
		}
		rows = append(rows, row{
			Host: r.Host, Role: role, State: hostbreaker.StateOpen.String(),
			Reason: string(r.Reason), Source: r.Source, Note: r.Note, until: r.Until,
		})
	}
	for _, s := range states {
		if filter != "" && s.Host != filter {
			continue
		}
		rows = append(rows, row{
			Host: s.Host, Role: s.Role, State: s.State.String(),
			Reason: string(s.Reason), Source: s.Source, until: s.Until, Rate: s.Rate, Shadow: s.Shadow,
		})
	}
	for i := range rows {
		if !rows[i].until.IsZero() {
			rows[i].Until = rows[i].until.UTC().Format(time.RFC3339)
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(
			strings.Compare(a.Host, b.Host),
			strings.Compare(a.Role, b.Role),
			strings.Compare(a.Source, b.Source),
			strings.Compare(a.State, b.State),
			a.until.Compare(b.until),
			strings.Compare(a.Reason, b.Reason),
		)
	})
	return rows
}

func writeJSON(w io.Writer, rows []row) error {
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeTable(w io.Writer, rows []row, at time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tROLE\tSTATE\tREMAINING\tREASON\tRATE\tSOURCE\tNOTE")
	for _, r := range rows {
		remaining := "-"
		if !r.until.IsZero() {
			remaining = max(r.until.Sub(at).Round(time.Second), 0).String()
		}
		rate := "-"
		if r.Rate > 0 {
			rate = strconv.FormatFloat(r.Rate, 'f', 2, 64) + "/s"
		}
		state := cell(r.State)
		if r.Shadow {
			state += " (shadow)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(r.Host), cell(r.Role), state, remaining, cell(r.Reason), rate, cell(r.Source), cell(r.Note))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no open breakers or cooldowns")
		return err
	}
	return nil
}

// cell is s as a table cell: "-" when empty, control characters (which
// would break the table) replaced by spaces.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}
