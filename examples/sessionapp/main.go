// Command sessionapp is a small stateful web application that stands in for a
// Wisej or ASP.NET application behind Tether: in-memory sessions keyed by its
// own cookie, a per-session counter that makes a lost session visible, a
// WebSocket that pushes the serving instance every second, a Wisej-style
// health endpoint (202), a live session count for the agent, Prometheus
// metrics, synthetic load and a refuse mode that answers 503 to new sessions.
//
// Endpoints:
//
//	GET  /                 HTML page: instance, session id prefix, counter (+1 per request)
//	GET  /ws               WebSocket pushing {"instance","counter","session"} every second
//	GET  /healthcheck      202 Accepted (also /healthcheck.wx)
//	GET  /sessions         {"sessions": N}, real plus synthetic sessions
//	GET  /metrics          Prometheus text (sessionapp_sessions, ...)
//	GET  /load             {"sessions","real","synthetic"}
//	POST /load?sessions=N  hold N synthetic sessions (replaces the previous number; 0 clears)
//	GET  /admin/refuse     {"refusing": bool}
//	POST /admin/refuse?on=true|false
//	                       refuse mode: 503 with Retry-After for requests without a live
//	                       session; requests with one keep working
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sessionapp:", err)
		os.Exit(1)
	}
}

type options struct {
	listen string
	cfg    Config
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("sessionapp", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:5000", "address to listen on")
	fs.StringVar(&o.cfg.Name, "name", "", "instance name shown to users (default hostname:port)")
	fs.DurationVar(&o.cfg.SessionTTL, "session-ttl", 20*time.Minute, "a session expires after this much inactivity")
	fs.StringVar(&o.cfg.Cookie, "cookie", "sessionapp_id", "name of the app's own session cookie")
	fs.DurationVar(&o.cfg.RetryAfter, "retry-after", 10*time.Minute, "Retry-After sent with the 503 of refuse mode")
	fs.BoolVar(&o.cfg.Refuse, "refuse", false, "start in refuse mode (503 for requests without a session)")
	if err := fs.Parse(args); err != nil {
		return o, fmt.Errorf("parse flags: %w", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.cfg.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "sessionapp"
		}
		_, port, err := net.SplitHostPort(o.listen)
		if err != nil {
			return o, fmt.Errorf("parse --listen %q: %w", o.listen, err)
		}
		o.cfg.Name = net.JoinHostPort(host, port)
	}
	return o, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	o.cfg.Log = zerolog.New(os.Stderr).With().Timestamp().Str("instance", o.cfg.Name).Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	return serve(ctx, ln, o.cfg)
}

// serve runs the app on ln until ctx is canceled, then shuts down gracefully:
// WebSockets get close code 1001, HTTP requests in flight may finish.
func serve(ctx context.Context, ln net.Listener, cfg Config) error {
	app := New(cfg)
	app.StartJanitor()
	defer app.Close()
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	cfg.Log.Info().Str("listen", ln.Addr().String()).Msg("sessionapp listening")

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	cfg.Log.Info().Msg("shutting down")
	app.Close() // close WebSockets with 1001 so that Shutdown does not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
