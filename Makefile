# The two commands of the README:
#   make run    — run the project's main job (the local mesh)
#   make test   — run the whole test suite (as root: tests build network namespaces)
# Both install missing Debian packages first (scripts/deps.sh).

CARGO ?= cargo

.PHONY: run test deps lint
run: deps
	$(CARGO) build --release -p ztunnel -p cni-node -p waypoint
	$(CARGO) run --release -p ambit-examples --example local-mesh

test: deps
	# The end-to-end tests run the three binaries as child processes: build
	# them all first (cargo test alone only builds binaries with tests).
	$(CARGO) build --workspace --all-features --bins
	$(CARGO) test --workspace --all-features

deps:
	@scripts/deps.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

# The mesh benchmark (as root): ztunnel vs direct TCP, same run; table and target/bench-mesh.json.
.PHONY: bench
bench:
	$(CARGO) build --release -p ztunnel -p cni-node -p waypoint
	$(CARGO) run --release -p ambit-examples --example bench-mesh
	$(CARGO) run --release -p ambit-l7proxy --example vs-nginx

# In-pod capture by nftables vs eBPF vs no mesh, same node (as root).
.PHONY: bench-redirect
bench-redirect:
	$(CARGO) build --release -p ztunnel -p cni-node -p waypoint
	$(CARGO) run --release -p ambit-examples --example bench-redirect
