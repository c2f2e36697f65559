# syncast: `make run` starts the server on its embedded default store; `make test` runs every test.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
DB ?= syncast.db
CHAT_TCP ?= 127.0.0.1:7070

.PHONY: run build release test check lint deps-check fmt unit root-tests redis-tests test-deps deb package e2e eventsource stress bench clean

run: release
	./target/release/syncast --listen $(LISTEN) --db $(DB) --chat-tcp $(CHAT_TCP)

build:
	$(CARGO) build --all-targets

release:
	$(CARGO) build --release --bins

lint: deps-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features redis-tls -- -D warnings

# No async runtime in `cargo tree`, with and without the redis-tls feature (the redis crate has
# async features: they stay off), and tiny_http exactly 0.12.0 (scripts/deps-check.sh).
deps-check:
	CARGO=$(CARGO) ./scripts/deps-check.sh

fmt:
	$(CARGO) fmt --all

# Root-only tests are #[ignore = "needs root: ..."]: `cargo test` lists them as ignored, never as
# passed. `unit` then runs exactly them (-- --ignored) when it is root or under CI=true, where one
# that cannot get what it needs fails; otherwise it says they did not run. docs/testing.md
ROOT_TESTS = --test no_fin --test thread_limit --test store_disk

# $(call root_only,WHAT,COMMAND): COMMAND as root or under CI=true, else a line that WHAT did not run.
root_only = if [ "$$(id -u)" = 0 ] || [ "$${CI:-}" = true ]; then $(2); \
	else echo "make: not root: $(1) did not run (docs/testing.md\#what-needs-root)"; fi

# The tests that start their own redis-server are #[ignore = "needs redis-server: ..."] the same
# way: `unit` runs exactly them where redis-server is installed or under CI=true (test-deps
# installs it there; one that then finds none fails), otherwise it says they did not run.
REDIS_TESTS = --lib --test nodes --test chat_nodes
# The same tests built with the redis-tls feature add the one against a TLS-only redis-server.
REDIS_TLS_TESTS = --features redis-tls --test nodes -- --ignored tls
redis_only = if command -v redis-server >/dev/null || [ -n "$${REDIS_SERVER:-}" ] || [ "$${CI:-}" = true ]; \
	then $(1); else echo "make: no redis-server: the Redis tests (listed as ignored above) did not run (docs/testing.md\#what-needs-redis)"; fi

# Under CI=true a missing iproute2 (for tests/no_fin.rs) or redis-server is installed.
unit: test-deps
	$(CARGO) test --all-targets
	@$(call root_only,the root-only tests (listed as ignored above),$(CARGO) test $(ROOT_TESTS) -- --ignored)
	@$(call redis_only,$(CARGO) test $(REDIS_TESTS) -- --ignored && $(CARGO) test $(REDIS_TLS_TESTS))

# The Redis tests alone; without redis-server they fail.
redis-tests:
	$(CARGO) test $(REDIS_TESTS) -- --ignored
	$(CARGO) test $(REDIS_TLS_TESTS)

# The root-only tests alone; without root they fail.
root-tests:
	$(CARGO) test $(ROOT_TESTS) -- --ignored

test-deps:
	./scripts/test-deps.sh

# Every test: fmt and clippy, unit and integration tests, the package, the streams under a real
# EventSource client, and the page in a real browser.
test: lint unit package eventsource e2e

# The quick loop without the browser.
check: lint unit

# The Debian package (scripts/deb.sh: release build, cargo-deb, which it installs under CI=true);
# prints the .deb's path.
deb:
	@CARGO=$(CARGO) ./scripts/deb.sh

# `deb`, then, as root or under CI=true, tests/package.rs's root-only test: dpkg -i, the installed
# binary run as its unit would, dpkg --purge. (Its other tests run in `unit`.)
package:
	@deb=$$(CARGO=$(CARGO) ./scripts/deb.sh) && echo "package: $$deb" && \
	$(call root_only,the package install test,SYNCAST_DEB="$$deb" $(CARGO) test --test package -- --ignored --nocapture)

# The page at / in Debian's headless Chromium (scripts/e2e.sh); screenshots in target/e2e/.
e2e:
	CARGO=$(CARGO) ./scripts/e2e.sh

# The streams under the npm `eventsource` client (scripts/eventsource.sh): refusals retried by
# the same EventSource, 4xx ending it, resume hints it cannot use. Needs node >= 20, no browser.
eventsource:
	CARGO=$(CARGO) ./scripts/eventsource.sh

# The single-node runs, then one over two nodes on a redis-server of its own (STRESS_NODES=2;
# without redis-server it says it did not run, under CI=true it fails).
stress:
	CARGO="$(CARGO)" ./scripts/stress.sh
	@$(call redis_only,CARGO="$(CARGO)" STRESS_NODES=2 ./scripts/stress.sh)

clean:
	$(CARGO) clean

# Issue 5: measures memory per stream, CPU, fan-out latency and refresher cost against the
# release server (< 10 minutes on the 2-core machine); writes target/bench/results.json.
bench:
	CARGO=$(CARGO) scripts/bench.sh $(BENCH_ARGS)
