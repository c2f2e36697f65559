# syncast: `make run` starts the server on its embedded default store; `make test` runs every test.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
DB ?= syncast.db

.PHONY: run build release test check lint deps-check fmt unit root-tests test-deps deb package e2e stress bench clean

run: release
	./target/release/syncast --listen $(LISTEN) --db $(DB)

build:
	$(CARGO) build --all-targets

release:
	$(CARGO) build --release --bins

lint: deps-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# No async runtime in `cargo tree`, tiny_http exactly 0.12.0 (scripts/deps-check.sh).
deps-check:
	CARGO=$(CARGO) ./scripts/deps-check.sh

fmt:
	$(CARGO) fmt --all

# Root-only tests are #[ignore = "needs root: ..."]: `cargo test` lists them as ignored, never as
# passed. `unit` then runs exactly them (-- --ignored) when it is root or under CI=true, where one
# that cannot get what it needs fails; otherwise it says they did not run. docs/testing.md
ROOT_TESTS = --test no_fin --test thread_limit

# $(call root_only,WHAT,COMMAND): COMMAND as root or under CI=true, else a line that WHAT did not run.
root_only = if [ "$$(id -u)" = 0 ] || [ "$${CI:-}" = true ]; then $(2); \
	else echo "make: not root: $(1) did not run (docs/testing.md\#what-needs-root)"; fi

# Under CI=true a missing iproute2 (for tests/no_fin.rs) is installed.
unit: test-deps
	$(CARGO) test --all-targets
	@$(call root_only,the root-only tests (listed as ignored above),$(CARGO) test $(ROOT_TESTS) -- --ignored)

# The root-only tests alone; without root they fail.
root-tests:
	$(CARGO) test $(ROOT_TESTS) -- --ignored

test-deps:
	./scripts/test-deps.sh

# Every test: fmt and clippy, unit and integration tests, the package, and the page in a real
# browser.
test: lint unit package e2e

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

stress:
	CARGO="$(CARGO)" ./scripts/stress.sh

clean:
	$(CARGO) clean

# Issue 5: measures memory per stream, CPU, fan-out latency and refresher cost against the
# release server (< 10 minutes on the 2-core machine); writes target/bench/results.json.
bench:
	CARGO=$(CARGO) scripts/bench.sh $(BENCH_ARGS)
