package overview

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/tetherlb/tether/registry"
)

// maxReason is the width the REASON column is cut to.
const maxReason = 48

// WriteTable prints ov as an aligned table, one row per instance, then a summary line and
// the rejected keys. Ages are relative to now. States other than available are upper-cased
// so that they stand out.
func WriteTable(w io.Writer, ov Overview, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tADDRESS\tSTATE\tREASON\tSESSIONS\tCPU\tMEMORY\tZONE\tAGENT\tUPDATED")
	for _, s := range ov.Services {
		if len(s.Instances) == 0 {
			fmt.Fprintf(tw, "%s\t(none)\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", clean(s.Name, 0))
		}
		for _, in := range s.Instances {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				clean(s.Name, 0), clean(in.ID, 0), net.JoinHostPort(in.Address, strconv.Itoa(in.Port)),
				stateText(in.State), cmp.Or(clean(in.Reason, maxReason), "-"),
				sessions(in.Load, in.Thresholds.MaxSessions),
				percent(in.Load.CPU, in.Thresholds.MaxCPU), memory(in.Load, in.Thresholds),
				cmp.Or(clean(in.Zone, 0), "-"), cmp.Or(clean(in.Agent.Version, 0), "-"), age(in.UpdatedAt, now))
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	sm := ov.Summary
	unknown := ""
	if sm.SessionsUnknown > 0 {
		unknown = fmt.Sprintf(" (not counted on %d: their agents measure none)", sm.SessionsUnknown)
	}
	fmt.Fprintf(w, "\nrevision %d: %s, %s (%d available, %d full, %d draining, %d unhealthy), %s%s\n",
		ov.Revision, Plural(sm.Services, "service"), Plural(sm.Instances, "instance"),
		sm.Available, sm.Full, sm.Draining, sm.Unhealthy, Plural(sm.Sessions, "session"), unknown)
	if len(ov.Drains) > 0 {
		fmt.Fprintf(w, "\n%s:\n", Plural(len(ov.Drains), "drain"))
		if err := WriteDrains(w, ov.Drains, now); err != nil {
			return err
		}
	}
	if len(ov.Rejected) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\n%s left out (invalid values):\n", Plural(len(ov.Rejected), "rejected key"))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tERROR")
	for _, r := range ov.Rejected {
		fmt.Fprintf(tw, "%s\t%s\n", clean(r.Key, 0), clean(strings.ReplaceAll(r.Error, "\n", "; "), 160))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

func stateText(s registry.InstanceState) string {
	if s == registry.StateAvailable {
		return string(s)
	}
	return strings.ToUpper(string(s))
}

// sessions shows the session count against maxSessions; "?" when the agent did not measure
// it (the count it last measured, if any, is no count of what the server holds now).
func sessions(l registry.Load, limit int) string {
	n := strconv.Itoa(l.Sessions)
	if !l.SessionsKnown() {
		n = "?"
	}
	if limit <= 0 {
		return n + "/-"
	}
	return n + "/" + strconv.Itoa(limit)
}

// percent shows a load percentage against its threshold, "-" meaning unlimited.
func percent(v, limit float64) string {
	if limit <= 0 {
		return num(v) + "%/-"
	}
	return num(v) + "%/" + num(limit) + "%"
}

// memory shows the memory percentage against maxMemory, and the MiB used (against
// maxMemoryMB when set) when the agent reports them.
func memory(l registry.Load, t registry.Thresholds) string {
	s := percent(l.Memory, t.MaxMemory)
	switch {
	case t.MaxMemoryMB > 0:
		s += " " + num(l.MemoryMB) + "/" + num(t.MaxMemoryMB) + "MiB"
	case l.MemoryMB > 0:
		s += " " + num(l.MemoryMB) + "MiB"
	}
	return s
}

// num formats v with at most one decimal.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// age is the time since t, to the second (minutes and hours for older ones).
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// clean replaces control and space characters that would break the table's alignment with a
// space, and cuts s to limit runes (0: no limit) with an ellipsis.
func clean(s string, limit int) string {
	r := []rune(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || (unicode.IsSpace(r) && r != ' ') {
			return ' '
		}
		return r
	}, s))
	if limit > 0 && len(r) > limit {
		return string(r[:limit-1]) + "…"
	}
	return string(r)
}

// Plural is n and word, with an s unless n is 1: "1 session", "3 sessions".
func Plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// WriteDrains prints drains as an aligned table: what each selects, since when, the
// instances it drains now and their sessions.
func WriteDrains(w io.Writer, drains []Drain, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tDRAIN\tSELECTS\tAGE\tINSTANCES\tSESSIONS\tREASON")
	for _, d := range drains {
		insts := cmp.Or(strings.Join(d.Matched, ","), "(none)")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", clean(d.Service, 0), clean(d.Name, 0),
			clean(d.Selector(), 64), age(d.CreatedAt, now), clean(insts, 64), drainSessions(d), cmp.Or(clean(d.Reason, maxReason), "-"))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// drainSessions shows the sessions left on a drain's instances, naming those whose count is
// unknown: "12", "12, unknown on a3".
func drainSessions(d Drain) string {
	n := strconv.Itoa(d.Sessions)
	if len(d.SessionsUnknown) > 0 {
		n += ", unknown on " + clean(strings.Join(d.SessionsUnknown, ","), 64)
	}
	return n
}
