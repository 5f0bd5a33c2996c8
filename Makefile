# prefit: `make run` (the small study, then its analysis) and `make test`. Extra Hydra overrides: ARGS='...'.
# Everything runs in a virtual environment that the first target creates (.venv; VENV=... to move it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so that this machine's CPU build is used; on a CUDA machine the same pin brings the usual
# CUDA-enabled wheel. Override with TORCH='torch==X.Y.Z'.
TORCH ?= torch==2.13.0
ARGS ?=
RUN_DIR ?= outputs/sweeps/run
GRID_DIR ?= outputs/sweeps/grid
REPRO_DIR ?= outputs/sweeps/repro
STUDY_DIR ?= outputs/sweeps/study
TILES_DIR ?= outputs/tiles
RESOLUTION_DIR ?= outputs/sweeps/resolution
RESOLUTIONS ?= 32,64
RESOLUTION_HFS ?= 32,64,128
FAMILIES_DIR ?= outputs/sweeps/families
SWEEP ?= $(RUN_DIR)
PYTEST_ARGS ?=
# pytest-xdist workers for make test (auto: one per core; 0: one process). A file's tests share a worker, so
# a module's fixtures are built once.
TEST_WORKERS ?= auto

.PHONY: install run grid repro study analyze notebook test lint bench clean help report robustness test-fast \
	results findings \
	tiles resolution families ci check

help:
	@echo "make check     first on a new machine: the device, the probed step, jobs per device, engines' agreement, ETA"
	@echo "make run       small study (hls 2,3 x hfs 32,64, 20 triples, 2000 epochs) + analysis -> $(RUN_DIR)"
	@echo "make grid      the full 42-cell grid, independent protocol -> $(GRID_DIR)"
	@echo "make repro     the full grid, chained protocol (reproduces the original figures) -> $(REPRO_DIR)"
	@echo "make study     the full grid under both protocols, both analyses, the protocol report -> $(STUDY_DIR)"
	@echo "               (resumable; ARGS narrow both sweeps, e.g. ARGS='model.hls=2 model.hfs=32,64 +experiment=smoke';"
	@echo "               STUDY_MERGE='DIR ...': more study folders of the same study, run elsewhere, merged in)"
	@echo "make analyze SWEEP=DIR   curves, AUC, figures, summary of a sweep -> DIR/analysis"
	@echo "               (SWEEP='DIR1 DIR2': one study's cells run apart, analysed as one -> DIR1/analysis)"
	@echo "make notebook  execute notebooks/analysis.ipynb on SWEEP's analysis"
	@echo "make report SWEEP_INDEPENDENT=DIR SWEEP_CHAINED=DIR   docs/findings.md: chained vs independent"
	@echo "               (each may be several folders of one study, quoted: SWEEP_INDEPENDENT='DIR1 DIR2')"
	@echo "make robustness SWEEP_A=DIR SWEEP_B=DIR   verdicts of two sweeps that differ only in arithmetic"
	@echo "make tiles     real photographs from scikit-image cut into 64x64 tiles, a class each -> $(TILES_DIR)"
	@echo "make resolution  hls 3 x hfs $(RESOLUTION_HFS) on the tiles at $(RESOLUTIONS) pixels a side + report"
	@echo "make families FAMILIES_DIR=DIR   report of a sweep run with model=siren,ffn,gauss (other neural fields)"
	@echo "               -> families.md beside DIR (REPORT_ARGS='--out FILE' elsewhere)"
	@echo "make bench     time both engines -> bench.json"
	@echo "make test | test-fast (no subprocess sweeps) | lint | install | clean.   Hydra overrides: ARGS='...'"
	@echo "make results   every sweep behind docs/findings.md, into results/ (resumable: complete cells are skipped)"
	@echo "make findings  docs/findings.md from results/ (the study, robustness, resolution and families sections)"
	@echo "make ci        .ci/run in a fresh clone of the committed work, with and without ../shared (clones removed)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,notebook,slurm,tiles]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m prefit.train -m model.hls=2,3 model.hfs=32,64 hydra.sweep.dir=$(RUN_DIR) $(ARGS)
	$(PY) -m prefit.analyze $(RUN_DIR)
	@echo "results: $(RUN_DIR)/ (per cell: psnr.parquet, recon.npz, run.json); analysis: $(RUN_DIR)/analysis/"

grid: install
	$(PY) -m prefit.train -m +experiment=grid hydra.sweep.dir=$(GRID_DIR) $(ARGS)
	$(PY) -m prefit.analyze $(GRID_DIR)
	@echo "results: $(GRID_DIR)/; analysis: $(GRID_DIR)/analysis/"

repro: install
	$(PY) -m prefit.train -m +experiment=repro hydra.sweep.dir=$(REPRO_DIR) $(ARGS)
	$(PY) -m prefit.analyze $(REPRO_DIR)
	@echo "results: $(REPRO_DIR)/; analysis: $(REPRO_DIR)/analysis/"

# The whole study: the grid under the independent protocol (grid preset) and under the chained one (repro preset),
# each in its own folder, then both analyses and the protocol report, all in STUDY_DIR. Rerunning it resumes: cells
# with a complete result are skipped. ARGS go to both sweeps; a preset in ARGS (+experiment=NAME) is composed after
# grid/repro (Hydra takes one +experiment, so it becomes '+experiment=[grid,NAME]'), e.g.
#   make study ARGS='model.hls=2 model.hfs=32 +experiment=smoke dataset=cifar_dir dataset.path=DIR'
# ANALYSIS_ARGS go to both analyses and the report, e.g. ANALYSIS_ARGS='--psnr-cap 59'.
# STUDY_MERGE: other study folders of the same study, each with independent/ and chained/ as this target lays them
# out (the cells run on another machine, copied here); their cells join STUDY_DIR's in both analyses (into
# STUDY_DIR/<protocol>/analysis) and the report, e.g. make study ARGS='model.hfs=32,64' STUDY_MERGE=/mnt/gpu/study
ANALYSIS_ARGS ?=
STUDY_MERGE ?=
empty :=
space := $(empty) $(empty)
comma := ,
STUDY_PRESETS := $(subst [,,$(subst ],,$(patsubst +experiment=%,%,$(filter +experiment=%,$(ARGS)))))
STUDY_ARGS := $(filter-out +experiment=%,$(ARGS))
study_experiment = '+experiment=[$(subst $(space),$(comma),$(strip $(1) $(STUDY_PRESETS)))]'
study_sweeps = $(strip $(STUDY_DIR)/$(1) $(addsuffix /$(1),$(STUDY_MERGE)))

study: install
	$(PY) -m prefit.train -m $(call study_experiment,grid) hydra.sweep.dir=$(STUDY_DIR)/independent $(STUDY_ARGS)
	$(PY) -m prefit.train -m $(call study_experiment,repro) hydra.sweep.dir=$(STUDY_DIR)/chained $(STUDY_ARGS)
	$(PY) -m prefit.analyze $(call study_sweeps,independent) $(ANALYSIS_ARGS)
	$(PY) -m prefit.analyze $(call study_sweeps,chained) $(ANALYSIS_ARGS)
	$(PY) -m prefit.report --independent $(call study_sweeps,independent) --chained $(call study_sweeps,chained) \
		--out $(STUDY_DIR)/findings.md $(ANALYSIS_ARGS)
	@echo "results: $(STUDY_DIR)/independent/ and $(STUDY_DIR)/chained/ (analysis/ in each);" \
		"protocol report: $(STUDY_DIR)/findings.md"

# Beyond 32x32: tiles of real photographs (one class per photograph), the same cells at each resolution, one sweep,
# then its report (RESOLUTION_DIR/../resolution.md). `make report ... REPORT_ARGS='--resolution DIR'` puts the same
# section into docs/findings.md.
tiles: install
	test -d $(TILES_DIR) || $(PY) -m prefit.data build-tiles $(TILES_DIR)

resolution: tiles
	$(PY) -m prefit.train -m dataset=image_dir dataset.path=$(TILES_DIR) dataset.resolution=$(RESOLUTIONS) \
		model.hls=3 model.hfs=$(RESOLUTION_HFS) hydra.sweep.dir=$(RESOLUTION_DIR) $(ARGS)
	$(PY) -m prefit.report resolution $(RESOLUTION_DIR) $(REPORT_ARGS)

# Beyond SIREN: the report of a sweep whose jobs differ in their cell and model family (each family with the settings
# its conf/model/<family>.yaml sets), e.g. after
#   python -m prefit.train -m model=siren,ffn,gauss model.hls=2,3 model.hfs=32,64 hydra.sweep.dir=$(FAMILIES_DIR)
# -> FAMILIES_DIR/../families.md. `make report ... REPORT_ARGS='--families DIR'` puts the same section into
# docs/findings.md.
families: install
	$(PY) -m prefit.report families $(FAMILIES_DIR) $(REPORT_ARGS)

check: install
	$(PY) -m prefit.check $(ARGS)

# SWEEP may be several folders of one study (quoted, SWEEP='DIR1 DIR2'): analysed as one into DIR1/analysis.
analyze: install
	$(PY) -m prefit.analyze $(SWEEP) $(ANALYSIS_ARGS)
	@echo "analysis: $(firstword $(SWEEP))/analysis/"

notebook: install
	$(PY) -m prefit.notebook $(SWEEP)/analysis
	@echo "executed notebook: $(SWEEP)/analysis/analysis.ipynb"

bench: install
	$(PY) -m prefit.bench $(ARGS)

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" -n auto $(PYTEST_ARGS)

# .ci/run as CI runs it on a fresh clone, twice (with ../shared, then without), each clone removed afterwards.
ci:
	bash scripts/ci-clone.sh
	bash scripts/ci-clone.sh --no-shared

lint: install
	$(PY) -m ruff check prefit tests hydra_plugins
	$(PY) -m ruff format --check prefit tests hydra_plugins

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# The protocol-finding report: a sweep run with protocol=chained beside one with protocol=independent (same cells
# and triples) -> docs/findings.md and its figures in docs/findings/. E.g. after `make grid` and `make repro`:
#   make report SWEEP_INDEPENDENT=outputs/sweeps/grid SWEEP_CHAINED=outputs/sweeps/repro
# Extra options in REPORT_ARGS, e.g. REPORT_ARGS='--psnr-cap 59'. Either sweep may be several folders of one study
# (cells run on different machines or days), quoted: SWEEP_INDEPENDENT='outputs/sweeps/grid /mnt/laptop/grid'.
SWEEP_INDEPENDENT ?= $(GRID_DIR)
SWEEP_CHAINED ?= $(REPRO_DIR)
FINDINGS ?= docs/findings.md
REPORT_ARGS ?=

# Do two sweeps that differ only in arithmetic reach the same verdicts? -> robustness_A_vs_B.md beside SWEEP_A
robustness: install
	$(PY) -m prefit.report robustness $(SWEEP_A) $(SWEEP_B) $(REPORT_ARGS)

report: install
	$(PY) -m prefit.report --independent $(SWEEP_INDEPENDENT) --chained $(SWEEP_CHAINED) --out $(FINDINGS) $(REPORT_ARGS)
	@echo "report: $(FINDINGS), figures in $(basename $(FINDINGS))/"

# The sweeps behind docs/findings.md, kept in results/ (results/README.md), and the findings from them. Each sweep is
# resumable; a cut run goes on where it stopped (complete cells skipped, a cell under way from its checkpoint).
SAMPLE ?= dataset=cifar_dir dataset.path=../shared/data/cifar10-jpeg-sample
RESULTS ?= results
RESULT_CELLS ?= model.hls=2,3,4,5,6,7,8 model.hfs=32,64,128

results: install
	$(PY) -m prefit.train -m +experiment=grid $(RESULT_CELLS) $(SAMPLE) hydra.sweep.dir=$(RESULTS)/study/independent $(ARGS)
	$(PY) -m prefit.train -m +experiment=repro $(RESULT_CELLS) $(SAMPLE) hydra.sweep.dir=$(RESULTS)/study/chained $(ARGS)
	$(PY) -m prefit.train -m +experiment=grid model.hls=2,3,4,5,6,7,8 model.hfs=32,64 $(SAMPLE) train.kernels=torch \
		hydra.sweep.dir=$(RESULTS)/robust-torch $(ARGS)
	test -d $(TILES_DIR) || $(PY) -m prefit.data build-tiles $(TILES_DIR)
	$(PY) -m prefit.train -m dataset=image_dir dataset.path=$(TILES_DIR) dataset.resolution=32,64 model.hls=3 \
		model.hfs=32,64,128 hydra.sweep.dir=$(RESULTS)/resolution $(ARGS)
	$(PY) -m prefit.train -m model=siren,ffn,gauss model.hls=2,3,4 model.hfs=32,64 \
		'scheme=[random,same_class,other_class,shared_encoder]' $(SAMPLE) hydra.sweep.dir=$(RESULTS)/families $(ARGS)

findings: install
	$(PY) -m prefit.report --independent $(RESULTS)/study/independent --chained $(RESULTS)/study/chained \
		--robust $(RESULTS)/robust-torch --resolution $(RESULTS)/resolution --families $(RESULTS)/families \
		--out $(FINDINGS) $(REPORT_ARGS)
