//go:build windows

package winsvc

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// IsService reports whether the process was started by the Service Control Manager.
func IsService() (bool, error) { return svc.IsWindowsService() }

// RunService hands the process to the SCM and runs the agent as the service it names.
func RunService(setup Setup) error {
	err := svc.Run("tether-agent", &handler{setup: setup}) // the name is ignored for an own-process service
	if errors.Is(err, windows.ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) {
		return fmt.Errorf("only the service manager starts \"service run\" (tether-agent service start; in a console, run tether-agent without \"service run\"): %w", err)
	}
	return err
}

type handler struct{ setup Setup }

func (h *handler) Execute(args []string, r <-chan svc.ChangeRequest, s chan<- svc.Status) (bool, uint32) {
	name := "tether-agent"
	if len(args) > 0 {
		name = args[0]
	}
	// Start pending before anything can fail: Wine's StartService fails with a request timeout
	// when the first status is Stopped, hiding the exit code that says why.
	s <- svc.Status{State: svc.StartPending, WaitHint: 10000}
	run, opt, err := h.setup(name)
	if err != nil {
		return true, 2 // bad stored flags: the command's exit code for bad input
	}
	reqs := make(chan Request)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			var c svc.ChangeRequest
			select {
			case c = <-r:
			case <-stop:
				return
			}
			req := Interrogate
			switch c.Cmd {
			case svc.Stop:
				req = Stop
			case svc.Shutdown, svc.PreShutdown:
				req = Shutdown
			default:
				// Every other request is answered with the current status.
			}
			select {
			case reqs <- req:
			case <-stop:
				return
			}
		}
	}()
	code := Serve(reqs, func(st Status) {
		if st.State == Stopped {
			return // svc reports Stopped, with the exit code, once Execute returns
		}
		s <- toSvc(st)
	}, run, opt)
	return code != 0, code
}

func toSvc(st Status) svc.Status {
	out := svc.Status{CheckPoint: st.CheckPoint, WaitHint: uint32(st.WaitHint / time.Millisecond)}
	switch st.State {
	case StartPending:
		out.State = svc.StartPending
	case Running:
		out.State = svc.Running
		out.Accepts = svc.AcceptStop | svc.AcceptShutdown | svc.AcceptPreShutdown
	case StopPending:
		out.State = svc.StopPending
		out.Accepts = svc.AcceptShutdown | svc.AcceptPreShutdown // Windows going down ends the drain
	default:
		out.State = svc.Stopped
	}
	return out
}

// InstallService creates an automatic-start service running Exe with Args, with restarts after a
// crash, the preshutdown time, and an event log source of the same name.
func InstallService(o InstallOptions) error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("connect to the service manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(o.Name); err == nil {
		s.Close()
		return fmt.Errorf("service %q already exists: uninstall it first", o.Name)
	}
	s, err := m.CreateService(o.Name, o.Exe, mgr.Config{
		DisplayName: o.DisplayName, Description: o.Description,
		StartType: mgr.StartAutomatic, ErrorControl: mgr.ErrorNormal,
	}, o.Args...)
	if err != nil {
		return fmt.Errorf("create service %q: %w", o.Name, err)
	}
	defer s.Close()
	undo := func(err error) error {
		_ = s.Delete()
		return err
	}
	// A crash restarts the agent (its lease keeps the instance meanwhile); a clean exit or a
	// refusal (exit 1 or 2) does not: those need the operator.
	if err := s.SetRecoveryActions([]mgr.RecoveryAction{
		{Type: mgr.ServiceRestart, Delay: 5 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 30 * time.Second},
		{Type: mgr.ServiceRestart, Delay: time.Minute},
	}, 24*60*60); err != nil {
		return undo(fmt.Errorf("set recovery actions of %q: %w", o.Name, err))
	}
	info := struct{ timeoutMs uint32 }{uint32(o.Preshutdown / time.Millisecond)}
	// The Windows API takes the SERVICE_PRESHUTDOWN_INFO struct through a *byte.
	if err := windows.ChangeServiceConfig2(s.Handle, windows.SERVICE_CONFIG_PRESHUTDOWN_INFO, (*byte)(unsafe.Pointer(&info))); err != nil { //nolint:gosec // G103: see above
		return undo(fmt.Errorf("set the preshutdown time of %q: %w", o.Name, err))
	}
	if err := eventlog.InstallAsEventCreate(o.Name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil &&
		!strings.Contains(err.Error(), "exists") {
		return undo(fmt.Errorf("event log source %q: %w", o.Name, err))
	}
	return nil
}

// UninstallService stops nothing: it deletes the service (Windows removes it once stopped) and its
// event log source.
func UninstallService(name string) error {
	m, s, err := open(name)
	if err != nil {
		return err
	}
	defer m.Disconnect()
	defer s.Close()
	if err := s.Delete(); err != nil {
		return fmt.Errorf("delete service %q: %w", name, err)
	}
	_ = eventlog.Remove(name)
	return nil
}

// StartService starts the service and waits until it runs or stops.
func StartService(name string, timeout time.Duration) error {
	m, s, err := open(name)
	if err != nil {
		return err
	}
	defer m.Disconnect()
	defer s.Close()
	if err := s.Start(); err != nil {
		return fmt.Errorf("start service %q: %w", name, err)
	}
	return wait(s, name, timeout, svc.Running, nil)
}

// StopService asks the service to stop (the agent drains) and waits until it has stopped,
// reporting progress.
func StopService(name string, timeout time.Duration, progress func(Progress)) error {
	m, s, err := open(name)
	if err != nil {
		return err
	}
	defer m.Disconnect()
	defer s.Close()
	if _, err := s.Control(svc.Stop); err != nil {
		return fmt.Errorf("stop service %q: %w", name, err)
	}
	return wait(s, name, timeout, svc.Stopped, progress)
}

func open(name string) (*mgr.Mgr, *mgr.Service, error) {
	m, err := mgr.Connect()
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the service manager (run as Administrator): %w", err)
	}
	s, err := m.OpenService(name)
	if err != nil {
		m.Disconnect()
		return nil, nil, fmt.Errorf("service %q: %w", name, err)
	}
	return m, s, nil
}

func wait(s *mgr.Service, name string, timeout time.Duration, want svc.State, progress func(Progress)) error {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		st, err := query(s)
		if err != nil {
			return fmt.Errorf("query service %q: %w", name, err)
		}
		if svc.State(st.CurrentState) == want {
			return nil
		}
		if st.CurrentState == windows.SERVICE_STOPPED {
			return fmt.Errorf("service %q stopped (exit code %d): see the event log, source %q", name, st.ServiceSpecificExitCode, name)
		}
		if progress != nil {
			progress(Progress{Elapsed: time.Since(start), CheckPoint: st.CheckPoint, WaitHint: time.Duration(st.WaitHint) * time.Millisecond})
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("service %q still %s after %s", name, stateName(st.CurrentState), timeout)
		}
		time.Sleep(time.Second)
	}
}

func stateName(s uint32) string {
	switch s {
	case windows.SERVICE_START_PENDING:
		return "start pending"
	case windows.SERVICE_STOP_PENDING:
		return "stop pending"
	case windows.SERVICE_RUNNING:
		return "running"
	default:
		return fmt.Sprintf("in state %d", s)
	}
}

// query is mgr.Service.Query with the checkpoint and wait hint, which Query leaves out.
func query(s *mgr.Service) (windows.SERVICE_STATUS_PROCESS, error) {
	var st windows.SERVICE_STATUS_PROCESS
	var needed uint32
	// The Windows API takes the struct through a *byte.
	err := windows.QueryServiceStatusEx(s.Handle, windows.SC_STATUS_PROCESS_INFO, (*byte)(unsafe.Pointer(&st)), uint32(unsafe.Sizeof(st)), &needed) //nolint:gosec // G103: see above
	return st, err
}

// EventLog is a zerolog writer to the Windows event log under the service's source: one event
// per log line, of the line's level.
type EventLog struct{ l *eventlog.Log }

// OpenEventLog opens the event log source installed with the service.
func OpenEventLog(source string) (*EventLog, error) {
	l, err := eventlog.Open(source)
	if err != nil {
		return nil, fmt.Errorf("event log source %q: %w", source, err)
	}
	return &EventLog{l: l}, nil
}

func (e *EventLog) Write(p []byte) (int, error) { return e.WriteLevel(zerolog.InfoLevel, p) }

// WriteLevel writes one log line as an event of its level.
func (e *EventLog) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	// The event carries its own time: the line is written as the console format shows it.
	var buf bytes.Buffer
	cw := zerolog.ConsoleWriter{Out: &buf, NoColor: true, PartsExclude: []string{zerolog.TimestampFieldName}}
	if _, err := cw.Write(p); err != nil {
		buf.Reset()
		buf.Write(p)
	}
	msg := strings.TrimRight(buf.String(), "\r\n")
	var err error
	switch {
	case level >= zerolog.ErrorLevel:
		err = e.l.Error(1, msg)
	case level == zerolog.WarnLevel:
		err = e.l.Warning(1, msg)
	default:
		err = e.l.Info(1, msg)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the event log.
func (e *EventLog) Close() error { return e.l.Close() }

var _ zerolog.LevelWriter = (*EventLog)(nil)
