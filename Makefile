# Tether developer entry points. `make run` starts the control plane on its embedded etcd;
# `make demo` starts the whole local demo; `make test` runs every test.
GO       ?= go
BIN      ?= bin
# The version stamped into both binaries (--version, and the agent's registry value): the git
# tag or commit, 0.1.0 outside a clone. `make dist VERSION=1.2.3` sets it.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0)
LDFLAGS  := -s -w -X github.com/tetherlb/tether/internal/version.Version=$(VERSION)
# Release targets of `make dist`: os/arch.
DIST_TARGETS ?= linux/amd64 linux/arm64 windows/amd64 windows/arm64
PKGS     := ./...
# Fuzzing budgets are execution counts, not durations: Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" when a -fuzztime duration ends while a starved worker is
# mid-call (go.dev/issue/75804, internal/fuzz CoordinateFuzzing's stop; fixed in Go 1.27). A count
# sets no deadline, so a loaded CI machine only fuzzes more slowly. 300000x is about a minute here.
FUZZTIME ?= 300000x
# golangci-lint, pinned, built by `go run` into Go's cache: nothing to install by hand.
# The Windows pass runs the host's binary with GOOS=windows, so that it checks the Windows files.
GOLANGCI := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0

.PHONY: all build run demo test test-short test-windows lint fmt cross dist fuzz bench e2e sim soak mutate clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/... ./examples/sessionapp

run:
	$(GO) run ./cmd/tether-controlplane --data-dir .tether-data --log-format console --allow-loopback-backends

demo: build
	./examples/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags simmutate ./internal/... ./controlplane/...
	$(GO) vet -tags peer ./cmd/tether-bench/
	GOOS=windows $(GO) vet $(PKGS)
	$(GO) run $(GOLANGCI) run $(PKGS)
	$(GO) run -exec 'env GOOS=windows' $(GOLANGCI) run $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

# The simulation (internal/sim) runs apart from the race-detector pass: it drives real agent
# processes and in-process control planes against wall-clock timings that the race detector's
# slowdown would change. Its mutation test needs the simmutate tag (internal/mutation).
RACE_PKGS = $$($(GO) list $(PKGS) | grep -v /internal/sim$$)

test: lint
	$(GO) test -race -count=1 -timeout 20m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 10m ./internal/sim
	$(GO) test -tags simmutate -count=1 -timeout 10m -run Mutation ./internal/sim
	$(MAKE) --no-print-directory fuzz FUZZTIME=40000x

test-short:
	$(GO) test -count=1 -short $(PKGS)

# The end-to-end tests against a real Envoy (skipped by `make test` when ENVOY_BIN is unset).
e2e:
	ENVOY_BIN=$${ENVOY_BIN:?set ENVOY_BIN to an Envoy 1.3x binary} $(GO) test -race -count=1 -timeout 10m -v ./e2e/

# The Windows agent as a service under Wine's service manager: a Debian trixie chroot with Wine
# 10, made once by scripts/wine-chroot.sh (root, debootstrap; about 1.2 GB) in WINE_CHROOT,
# outside the repository, then install, start, drain, stop, exit codes and uninstall against a
# real control plane and app (TestWindowsServiceUnderWine, which builds the Windows agent).
WINE_CHROOT ?= $(HOME)/.cache/tether-wine-trixie
test-windows:
	./scripts/wine-chroot.sh $(WINE_CHROOT)
	TETHER_WINE_CHROOT=$(WINE_CHROOT) $(GO) test -count=1 -timeout 10m -v -run '^TestWindowsServiceUnderWine$$' .

cross:
	GOOS=linux   GOARCH=amd64 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/linux-amd64/   ./cmd/tether-agent
	GOOS=linux   GOARCH=arm64 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/   ./cmd/tether-agent
	GOOS=windows GOARCH=amd64 CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/windows-amd64/ ./cmd/tether-agent

# Release archives in dist/: per target tether-<version>-<os>-<arch>.tar.gz (Linux, with the
# systemd units) or .zip (Windows), each with both binaries, the README, the docs, the
# monitoring files and the example HealthCheck.json; SHA256SUMS over them.
dist:
	rm -rf dist && mkdir -p dist
	set -e; for t in $(DIST_TARGETS); do \
	  os=$${t%/*}; arch=$${t#*/}; name=tether-$(VERSION)-$$os-$$arch; dir=dist/$$name; \
	  mkdir -p $$dir/docs $$dir/examples; \
	  GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$dir/ ./cmd/tether-controlplane ./cmd/tether-agent; \
	  cp README.md $$dir/; cp docs/*.md $$dir/docs/; cp examples/HealthCheck.json examples/etcd-roles.sh $$dir/examples/; \
	  cp -R deploy/prometheus deploy/grafana $$dir/; \
	  if [ $$os = windows ]; then (cd dist && zip -qr $$name.zip $$name); \
	  else cp -R deploy/systemd $$dir/; tar -C dist -czf dist/$$name.tar.gz $$name; fi; \
	  rm -rf $$dir; \
	done
	cd dist && sha256sum tether-* > SHA256SUMS
	@cat dist/SHA256SUMS

fuzz:
	$(GO) test ./registry -run '^$$' -fuzz FuzzDecodeInstance -fuzztime $(FUZZTIME)
	$(GO) test ./registry -run '^$$' -fuzz FuzzDecodeServiceConfig -fuzztime $(FUZZTIME)
	$(GO) test ./registry -run '^$$' -fuzz FuzzDecodeDrain -fuzztime $(FUZZTIME)

# Go benchmarks of the translation and of one xDS push, then the load harness at the three scales of docs/performance.md.
bench:
	$(GO) test ./controlplane/translate -run '^$$' -bench . -benchmem
	$(GO) test ./controlplane/xdscache -run '^$$' -bench EndpointPush -benchmem
	$(GO) test ./controlplane -run '^$$' -bench PublishLoadChange -benchmem
	$(GO) run ./cmd/tether-bench -scales 100x10,1000x100,10000x1000 -duration 30s -json bench.json

# The simulation: seeded faults against the real control planes, etcd and agents, with a table
# of what the users saw. SEEDS picks the seeds; `make soak DURATION=30m` runs random seeds for
# that long and writes sim-summary.txt.
SEEDS    ?= 1-6
DURATION ?= 30m
sim:
	$(GO) run ./cmd/tether-sim -seeds $(SEEDS)

soak:
	$(GO) run ./cmd/tether-sim -soak $(DURATION) -summary sim-summary.txt

# Mutation testing (docs/reliability.md, "How we know the tests bite"): gremlins, pinned and
# built by `go run` like golangci-lint, puts one deliberate bug at a time into a package and
# runs its tests; efficacy is the share of bugs some test catches. Not in `make test`: one
# build and run of a package's tests per mutant. Each MUTATE entry is 'dir@files@tests': the
# package, a regexp of the files mutated (the others are left alone) and of the tests run
# (empty: all); a package's figure is the sum of its entries. `make mutate PKG=registry`
# runs the entries of one package; MUTATE_WORKERS > 1 runs mutants side by side (each is a
# separate copy; the tests must bear the load). GOFLAGS: -count=1, because gremlins times
# each mutant by its coverage run, which Go's test cache would make instant (every mutant
# then times out); -vet=off and -ldflags=-w because every mutant relinks the test binary
# (etcd's server included), and vet and DWARF are a third of that; the coefficient covers
# the rebuild.
GREMLINS := github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
MUTATE   ?= 'internal/ctl@(drain|service|status)\.go@' \
	'internal/ctl@wait\.go@$(CTL_WAIT_TESTS)' \
	'registry@(drain|keys|limit|partial|state|types|validate)\.go@$(REGISTRY_UNIT_TESTS)' \
	'registry@(follow|history|list|replica|watch|write)\.go@$(REGISTRY_ETCD_TESTS)' \
	'agent@(config|writepolicy|admission)\.go@$(AGENT_UNIT_TESTS)' \
	'agent@(healthcheck|probe|identity|address)\.go@$(AGENT_HOST_TESTS)' \
	'agent@drain\.go@$(AGENT_DRAIN_TESTS)' \
	'agent@(metrics|sampler|sample_cgroup|sample_host|sample_process)\.go@$(AGENT_METRICS_TESTS)' \
	'agent@(lease|adopt|adopt_unix)\.go@$(AGENT_LEASE_TESTS)' \
	'agent@agent\.go@$(AGENT_RUN_TESTS)' \
	'controlplane@(guard|drains|kept)\.go@^Test(RemovalGuard|Drain|HeldInstancesKeepTheirServicesClaim)' \
	'controlplane@(coalesce|phase)\.go@$(PHASE_UNIT_TESTS)' \
	'controlplane@publish\.go@$(PUBLISH_TESTS)' \
	'controlplane@replicas\.go@$(REPLICA_TESTS)' \
	'controlplane/xdscache@.*@' \
	'controlplane/admin@.*@' \
	'controlplane@(controlplane|metrics|xds|problems)\.go@$(CP_WIRING_TESTS)' \
	'controlplane@(vanish|stale)\.go@$(VANISH_STALE_TESTS)' \
	'controlplane@memory\.go@$(MEMORY_TESTS)' \
	'controlplane@(peerlimit|envoyversion)\.go@$(PEER_VERSION_TESTS)'
# The drain command's tests of --wait that take seconds, not the 10 s ones of an etcd outage
# and a lapsed lease (they cover no other mutant of wait.go).
CTL_WAIT_TESTS := ^(TestWaitReturnsAtZeroSessions|TestUndoAndWaitEndings|TestCtrlCDuringAReadOfWait|TestWaitNeverCallsUnknownSessionsDone|TestWaitCountsOnlyAnEmptyDeliberateLeaveAsDone|TestDeparturesReadEachLastValue|TestProgressCountsEveryDrainedInstance)$$
# The registry's tests that need no etcd: they decide the pure files' mutants in seconds.
REGISTRY_UNIT_TESTS := ^(TestDecode|TestDrainName|TestDrainLimits|TestApplyDrains|TestDrainEvents|TestDefaultsForEnvoy|Fuzz|TestRejectedKey|TestRejectedConfigErrorFollowsTheValue|TestReplicaReports|TestBuildState|TestApplyEvents|TestRebuildState|TestInstance|TestServiceConfigRules|TestParseKey|TestNormalizePrefix|TestValueLimitsAreExact|TestLimit)
# The registry's etcd tests that cover its etcd-backed files (every block any test covers):
# the others (an etcd restart, a second watch, a wait for etcd) cover nothing more and take a
# third of the time.
REGISTRY_ETCD_TESTS := ^(TestReplicaReportsAreNotRegistryContent|TestCreateUpdateDeleteInstance|TestWatcherRefuses(LoopbackUnlessAllowed|DeniedCIDRs)|TestWatcherServiceGoneAndBackInOneResponse|TestWatcherSharesUnchangedServices|TestRejectedConfig(IsServedAlikeByEveryWatcher|WithoutHistory)|TestWatcherCreatedRevisions|TestWatcherRejectsBadEntriesAlone|TestWatcherFollowsChanges|TestLeastPrivilegeRoles|TestWatcherRelistsAfter(Compaction|RestoreFromBackup)|TestWatcherLeaseExpiry|TestWatcherRevisionCheckRacesNoWrite|TestWatcherConfirmsItsRevision|TestWatcherRelistsWhenClusterChanges|TestWatcher(ReadsDeparturesBeforeItsFirstListing|DeparturesAfterACompaction)|TestDecodeReplicaBoundsAreExact|TestListReadsPagesAtOneRevision|TestWatcherReadsDeparturesAcrossManyRevisions|TestCreateAgainAndAdoptInstance|TestWatcherServesTheLastValidConfigFromHistory|TestWatcherConfirmsAReadingOnceCaughtUp|TestInstanceValueLimitIsExact|TestWatcherReadNoticesAnotherClusterAtTheSameRevision|TestFollow(ListsThenWatches|RelistsAfterCompaction))$$
# The agent's tests of its configuration and pure state machines (no etcd, no process).
AGENT_UNIT_TESTS := ^(TestValidateNamesFlag|TestValidHostName|TestDefaultID|TestMetricsListenAddrs|TestSessionsHysteresis|TestReasonFixedWhileFull|TestCPUNeedsConsecutiveSamples|TestMemoryThresholds|TestThresholdsAreExact|TestUnlimitedNeverFull|TestHealthTracker|TestWriteReasonDeadBand|TestSessionStep|TestBackoffBounds)$$
# The agent's tests of what it reads from its host and backend: HealthCheck.json, its identity
# and address, its probes' answers (no etcd, no process).
AGENT_HOST_TESTS := ^(TestWisejDefaultFile|TestExampleFileDisabled|TestCommentedFile|TestBrokenFiles|TestWisej3MaxMemoryInMB|TestPrimaryAddress|TestPickIP|TestResolveIdentity|TestSystemHostInterfaces|TestSystemRouteSource|TestDefaultID|TestRedactURL|TestSessionsParsing|TestDefiniteDialFailure|TestDialAddressAndItsReason|TestProbeStatusAndCountBounds|TestHealthCheckBoundsAreExact|TestStripCommentsKeepsLineBreaks)$$
# The agent's tests of the operators' drains (etcd, in-process agents: 1.5 s).
AGENT_DRAIN_TESTS := ^Test(AgentReportsOperatorDrain|AgentWithoutDrainsPermission|NewDrainOfADrainingInstanceIsReportedAtOnce)$$
# The agent's metrics and samplers: the samplers' tests and one etcd test serving /metrics (1 s).
AGENT_METRICS_TESTS := ^Test(ProcessAndHostSamplersScale|MetricsSayWhatWasObserved|CgroupSamplerEdges|LoopbackAddressIsFlagged|CgroupSampler|HostAndProcessSamplers|NewDrainOfADrainingInstanceIsReportedAtOnce)$$
# The agent's lease, registration and adoption driven against etcd by hand (3 s).
AGENT_LEASE_TESTS := ^Test(LeaseRenewKeepsOrReplaces|AdoptTakesTheKeyInPlace|AdoptableIsProvablyTheSameServer|RegistrationRidesOutLostLeases)$$
# The agent's run loop: the etcd tests that cover every block of agent.go any test covers with an
# operator (not TestEtcdOutageAndLostLease: it adds only the lost keep-alive's case, 12 s), the
# drain tests, and the tests written for agent.go's survivors (16 s).
AGENT_RUN_TESTS := ^Test(RunnerHelpers|SyncAndDeregister|RegisterFirstNamesAnUnreachableEtcd|DrainWaitsForSessions|DrainDecidesOnFreshSample|StopWhileTheIDIsHeld|OpTimeoutIsHalfTheTTLWithinBounds|ServeMetricsListensOnTheFirstFreeAddress|MetricsAutoPortPerAgent|CheckHeldWaitsForTheHoldersTTL|LoopbackAddressIsFlagged|UnknownSessionsAndLeavingMark|AddressThatDoesNotAnswerIsNotAvailable|NewDrainOfADrainingInstanceIsReportedAtOnce|DuplicateID|ThresholdsCrossedAndBack|IDTakenWhileCutOffStops|WaitsForEtcdWithAuth)$$
# The control plane's tests of its coalescer and two-phase publication driven by hand (no etcd).
PHASE_UNIT_TESTS := ^(TestCoalescer|TestFirstPhaseIsDrainingAndReachableBySession|TestApplyCostsWhatChangedAndForgetsNothing|TestScaleOutFromAllFullSaysAMoment|TestSourceIPFullServerHasAFirstPhase|TestSingleEnvoyIsServedANewEndpointAtOnce|TestFirstPhaseHoldsWithTwoEnvoysAPeerOrARememberedEnvoy|TestEnvoyJoining|TestHeldEnvoyCountsForTheNextEndpoint|TestEnvoyKnowsOnlyTheClustersItSubscribes|TestNACKingEnvoyHoldsNothingBack|TestRefusedStateIsNotWaitedFor|TestRecurringVersionMapsToItsLatestRevision|TestClosedLaggingStreamIsNoLongerReported|TestLargeServiceKeepsItsEndpointsPhases|TestSettleAndCloseInputs|TestRememberedVersionsAreBounded|TestPromotionTellsThePublisher|TestLaggingEnvoyIsReportedUntilItCatchesUp|TestReconnectedEnvoyCountsByItsStream|TestSeventeenClustersInOneEvaluation|TestEnvoyWithoutAnACKKnowsNothing|TestReplicaReportsAndWaits)
# The control plane's tests of its publish loop in a synctest bubble (fake time, no etcd):
# coalescing, the guard's and vanish grace's releases, the limits, a phaser's promotions.
PUBLISH_TESTS := ^(TestLoneChangeIsPushedAtOnce|TestBurstIsCoalesced|TestInvalidSnapshotKeepsTheLastGood|TestPersistentProblemsAreLoggedOnce|TestConsistencyMemo|TestHeldInstancesAreReleasedOnTime|TestLimitsAndCountsArePublished|TestEventToPushCountsFromTheOldestChange|TestPublisherPhasesAndRepublishesPromotions|TestSameStateIsNotPushedAgain)$$
# The control plane's tests of its replica link: its bookkeeping handed the time, and two
# links over one embedded etcd, a watch that relists after a compaction (8 s).
REPLICA_TESTS := ^(TestSilentForAndRemember|TestReplicaName|TestReplicaLinkBookkeeping|TestReplicaLinkWritesWhenDue|TestReplicaLinkOverEtcd|TestReplicaLinkRelistsAfterCompaction)$$
# The control plane's tests of its configuration, start, shutdown and xDS wiring: the
# Config tests without etcd, then one start per path (embedded etcd, TLS, auth, a taken
# port, a state file, an old Envoy, a NACK, hostile values, a failing server, the shutdown
# bound, a promotion, a lost lease): every block any test covers, 8 s a run.
CP_WIRING_TESTS := ^(TestCacheWakesThePhaser|TestConfigDefaults|TestConfigValidateBounds|TestConfigHelpers|TestEmbeddedEtcd|TestHostileValuesRejectedAlone|TestStartReleasesListenersOnFailure|TestRestartAfterStormAndCompactionHoldsWhatItServed|TestOldEnvoyIsReported|TestPersistentProblemsAreLoggedOnce|TestStartWaitsForEtcdWithAuth|TestXDSTLS|TestNACKIsCountedAndLogged|TestXDSConnectionsBounded|TestEtcdMutualTLSAndAuth|TestRunEndsWithItsContext|TestStartFailsOnATakenXDSAddress|TestNoPlaintextWarningOnLoopbackOrTLS|TestNamesBeforeTheFirstPublicationFollowMaxServices|TestServerFailureStopsTheControlPlane|TestShutdownCutsAdminRequestsPastItsBound|TestNewEndpointIsKnownEverywhereFirst|TestLostLeaseKeepsTheServer)$$
# The vanish grace driven by hand, and the etcd tests of a lost lease and of a replica cut off
# from etcd (the only ones that step a replica down: 18 s).
VANISH_STALE_TESTS := ^(TestNegativeStaleAfterChecksNothing|TestVanishGrace|TestVanishGraceKeepsTheFirstStatesDepartures|TestStaleBoundAndItsCheck|TestLostLeaseKeepsTheServer|TestCutOffReplicaStepsDown)$$
# The state file's pure parts by hand, and the three restarts that write and read one (6 s).
MEMORY_TESTS := ^(TestMemoryFileRoundTrip|TestMemoryFileWriteErrors|TestRecalledDepartures|TestMemoryOf|TestMemoryWriterWritesChangesAndLogsFailuresOnce|TestRestartWaitsForAReplicaStillDown|TestRestartPhasesServersThatJoinedWhileDown|TestRestartAfterStormAndCompactionHoldsWhatItServed)$$
# The peer limiter over loopback connections and the Envoy version comparison, by hand.
PEER_VERSION_TESTS := ^(TestPeerOfAConnectionWithoutAnAddress|TestPeerLimiterCountsEachPeer|TestEnvoyVersionsCompareExactly)$$
PKG            ?=
MUTATE_TIMEOUT ?= 10
MUTATE_WORKERS ?= 1
mutate:
	@set -e; tally=$$(mktemp -d); trap 'rm -rf $$tally' EXIT; for spec in $(MUTATE); do \
	  dir=$${spec%%@*}; rest=$${spec#*@}; keep=$${rest%%@*}; run=$${rest#*@}; \
	  if [ -n "$(PKG)" ] && [ "$$dir" != "$(PKG)" ]; then continue; fi; \
	  ex="-E /"; for f in $$(cd $$dir && ls *.go | grep -v '_test\.go$$' | grep -Ev "^($$keep)$$" || true); do ex="$$ex -E ^$$f\$$"; done; \
	  echo "== $$dir: files $$keep, tests $${run:-all}"; \
	  { GOFLAGS="-count=1 -vet=off -ldflags=-w $${run:+-run=$$run}" $(GO) run $(GREMLINS) unleash --workers $(MUTATE_WORKERS) \
	    --timeout-coefficient $(MUTATE_TIMEOUT) -S lt $$ex ./$$dir 2>&1; echo $$? >$$tally/rc; } | tee $$tally/out; \
	  [ "$$(cat $$tally/rc)" = 0 ]; \
	  sed -n "s|^Killed: \([0-9]*\), Lived: \([0-9]*\), Not covered: \([0-9]*\).*|$$dir \1 \2 \3|p" $$tally/out >>$$tally/sum; \
	done; \
	echo "== efficacy per package, its entries together (equivalent mutants count as lived here: docs/reliability.md names them)"; \
	awk '{k[$$1]+=$$2; l[$$1]+=$$3; n[$$1]+=$$4} END {for (p in k) {e = k[p]+l[p] ? sprintf("%.1f%%", 100*k[p]/(k[p]+l[p])) : "none run"; printf "%-24s killed %4d  lived %3d  not covered %3d  efficacy %s\n", p, k[p], l[p], n[p], e}}' $$tally/sum | sort

clean:
	rm -rf $(BIN) .tether-data
